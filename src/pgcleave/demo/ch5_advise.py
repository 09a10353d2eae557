"""Seeds 001 and 002: "So, should I partition or not?" asked of the statements the application
really runs (pg_stat_statements), then the audit of the partitioned table on the same traffic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from . import Demo

TITLE = "5. Should I partition? advise before, audit after, on the application's traffic"

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def traffic(d: Demo, rounds: int = 100) -> None:
    """What seed 001's application runs: orders of a country for a period, one order by id,
    a change of its cost. Parameters are bound by the server, as a driver does."""
    with psycopg.connect(d.dsn(), autocommit=True) as c:
        for i in range(rounds):
            since = NOW - timedelta(days=1 + i % 30)
            c.execute("SELECT * FROM orders WHERE country = %s AND scheduled_at >= %s"
                      " AND scheduled_at < %s ORDER BY scheduled_at",
                      ["RU" if i % 2 else "GB", since, since + timedelta(days=1)])
            c.execute("SELECT country, count(*), sum(cost) FROM orders"
                      " WHERE scheduled_at >= %s GROUP BY country", [since])
            c.execute("SELECT * FROM orders WHERE id = %s", [i + 1])
            c.execute("UPDATE orders SET cost = cost + %s WHERE id = %s", [1, i + 1])


def run(d: Demo) -> None:
    d.say("Seed 001 ends with a question: should I partition or not? The answer is in the size "
          "of the table and in the statements the application runs. The servers preload "
          "pg_stat_statements; the database needs the extension once:")
    d.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    d.sql("CREATE TABLE orders (\n  id bigserial PRIMARY KEY,\n  country varchar(2) NOT NULL,\n"
          "  scheduled_at timestamptz NOT NULL,\n  cost numeric(10,2) NOT NULL DEFAULT 0\n)")
    d.sql("INSERT INTO orders (country, scheduled_at, cost)\nSELECT "
          "('{RU,RU,US,GB}'::text[])[1 + n % 4], "
          f"'{NOW.isoformat()}'::timestamptz - n * interval '3 minutes', "
          "round((100 + random() * 200)::numeric, 2)\nFROM generate_series(1, 20000) n")
    d.sql("ANALYZE orders")
    d.say("The application runs (400 statements, parameters bound by the server):")
    traffic(d)
    d.say("advise plans each statement the way the server would and reads the columns it "
          "filters, groups and orders by:")
    d.pgcleave("advise", "orders")
    d.say("The table is small, so the verdict is 'not yet'; the key and the command are the "
              "ones to use when it is time. We run it now to see the result:")
    d.pgcleave("partition", "orders", "--by", "range(scheduled_at)", "--interval", "1 month",
               "--yes")
    traffic(d)
    d.say("audit explains each statement twice with values sampled from the table: a custom "
          "plan (pruned at plan time) and the generic plan a prepared statement gets (pruned at "
          "run time). The lookups by id scan every partition: the key is not in them. Exit "
          "code 7 tells a CI job there are warnings:")
    d.pgcleave("audit", "orders", check=False)
