"""Seed 000, 'Humble beginnings': one plain table with a tenant column."""

from __future__ import annotations

from . import Demo

TITLE = "1. Humble beginnings: one plain table with a tenant column"

ROWS = [
    ("ac8e6a36-722e-4e53-b9e6-e916aded0b00", "Acme", "jumping"),
    ("284d1166-0bdc-4c66-93c1-43ddbd0491a0", "Acme", "running"),
    ("aa46f49b-5fca-4fc8-bd63-fdf587710c00", "Bobmart", "hopping"),
    ("b9257460-173b-45e8-b4c3-7ec269c8f74d", "Crazytown", "skipping"),
    ("4f32eadf-0abe-480a-93bc-8780fdf85b5d", "Dory", "swimming"),
    ("216b0fd6-5baf-4432-80c6-069243e8cba4", "Eggbert", "sitting"),
]


def run(d: Demo) -> None:
    d.say("A new service starts small: a single table, a tenant column for multi-tenancy.")
    d.sql("CREATE TABLE exercises (\n  id UUID PRIMARY KEY,\n  tenant VARCHAR NOT NULL,\n"
          "  name VARCHAR NOT NULL\n)")
    for r in ROWS:
        d.sql(f"INSERT INTO exercises (id, tenant, name) VALUES ('{r[0]}', '{r[1]}', '{r[2]}')")
    d.sql("SELECT * FROM exercises")
    d.say("pgcleave shows where the rows live:")
    d.pgcleave("status", "exercises")
