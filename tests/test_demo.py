"""``pgcleave demo``: the chapters are found in order, and chapter 6 (re-slicing) runs on the
test servers (the whole demo starts servers of its own and takes minutes: `make demo`), prints
what it says it shows and leaves the table re-cut with every row."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from pgcleave.demo import Demo, chapters


def test_chapter_6_splits_merges_and_reslices_beside_a_default(sandbox: Any, db: Any,
                                                               conn: Any) -> None:
    mods = chapters()
    assert [m.__name__.rsplit(".", 1)[1][:3] for m in mods] == [
        "ch1", "ch2", "ch3", "ch4", "ch5", "ch6"]
    ch6 = mods[-1]
    assert ch6.TITLE.startswith("6. Re-slicing")
    buf = io.StringIO()
    ch6.run(Demo(sandbox, Console(file=buf, width=160, highlight=False, soft_wrap=True),
                 dbname=db.name))
    out = buf.getvalue()
    # the dry run first: each step with the lock it takes, the DEFAULT's CHECK before the copy
    dry = out.index("$ pgcleave split activity_legacy --interval '1 month' --dry-run")
    run = out.index("$ pgcleave split activity_legacy --interval '1 month' --jobs 2 --yes")
    plan = out[dry:run]
    assert "[carve-exclude-default]" in plan and "NOT VALID;" in plan
    assert "--   locks: ACCESS EXCLUSIVE on activity_default (brief, no scan)" in plan
    assert "--   locks: SHARE UPDATE EXCLUSIVE on activity_default" in plan
    assert "on 2 connection(s)" in out[run:]
    for done in ("split public.activity: done", "merge public.activity: done",
                 "reslice public.activity: done"):
        assert done in out, done
    # the count and checksum it shows before and after each operation are the same
    sums = [line.split() for line in out.splitlines() if line.startswith("7288  ")]
    assert len(sums) == 4 and len({s[1] for s in sums}) == 1, sums
    assert "lock_held_ms" in out and "merge-swap:1" in out
    # and the table is re-cut, every row in its month, the DEFAULT with its own rows only
    parts = dict(conn.execute(
        "SELECT c.relname, count(a.*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " LEFT JOIN activity a ON a.tableoid = c.oid WHERE i.inhparent = 'activity'::regclass"
        " GROUP BY 1").fetchall())
    assert parts == {"activity_before_p2025_10": 0, "activity_p2025_10": 1488,
                     "activity_p2025_11": 1440, "activity_p2025_12": 1488,
                     "activity_2026_01": 1488, "activity_p2026_02": 1344,
                     "activity_default": 40}, parts
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE "
                        "'pgcleave_span%'").fetchone() == (0,)
    assert conn.execute("SELECT array_agg(operation || ':' || state ORDER BY id) FROM "
                        "pgcleave.jobs").fetchone() == (["split:done", "merge:done",
                                                         "reslice:done"],)
