"""What a change of a table's primary key means to the application, in one place: every strategy
that changes it (the copy widens it to include the partition key, the in-place strategies leave
the partitioned table with none, ``set-primary-key`` puts one on the parent) warns with this text.

ORMs differ in where they read the key: ActiveRecord reads it from the database (and ignores a
composite one), Django and SQLAlchemy's declarative models from the model, SQLAlchemy's
reflection and automap from the database. Upserts name their conflict target explicitly.
"""

from __future__ import annotations


def key_change(table: str, old: list[str], new: list[str] | None) -> str:
    """The consequences of ``PRIMARY KEY (old)`` becoming ``PRIMARY KEY (new)`` (``None``: no
    primary key on the partitioned table), and the fix in each ORM."""
    o = ", ".join(old)
    first = old[0]
    if new is None:
        what = (f"{table} has no primary key any more (each partition keeps its own): "
                "ActiveRecord finds none")
        target = f"`ON CONFLICT ({o})` on {table} fails (no unique index on it to infer)"
        reflect = "reflected/automap tables get no primary key"
    else:
        n = ", ".join(new)
        extra = [c for c in new if c not in old]
        what = (f"its primary key becomes ({n}): ActiveRecord ignores a composite primary key")
        target = (f"`ON CONFLICT ({o})` fails: conflict targets must include "
                  f"{', '.join(extra)} (`ON CONFLICT ({n})`)")
        reflect = "reflected/automap tables get the composite key"
    return (f"{what} (`create!` returns id nil, `find` raises): set `self.primary_key = "
            f":{first}` in the model; Django reads no key from the database: keep `{first}` "
            f"as `primary_key=True` in the model, and `bulk_create(update_conflicts=True, "
            f"unique_fields=[...])` must name the whole key; SQLAlchemy maps the model's key, "
            f"but {reflect}: set `__mapper_args__ = {{\"primary_key\": [{table}.c.{first}]}}`; "
            f"{target}")
