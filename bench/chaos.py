"""Fault campaign (issue 18): rounds of one operation, one fault at a random moment, recovery
as an operator would, and a verdict (see ``pgcleave.testing.chaos``). Seeds are printed, so a
failing round is replayed exactly with ``--ops OP --faults FAULT --seed SEED --rounds 1``.

    .venv/bin/python bench/chaos.py --rounds 200
    .venv/bin/python bench/chaos.py --ops carve --faults sigkill --seed 1234 --rounds 1
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time

from pgcleave.sandbox import temporary
from pgcleave.testing.chaos import FAULTS, OPERATIONS, Campaign


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    ap.add_argument("--ops", default=",".join(OPERATIONS))
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--pg", type=int, default=None, help="server major version")
    a = ap.parse_args()
    ops, faults = a.ops.split(","), a.faults.split(",")
    first = a.seed if a.seed is not None else random.randrange(1, 10**6)
    print(f"chaos: {a.rounds} rounds from seed {first}; ops {ops}; faults {faults}", flush=True)
    tally: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    failures = []
    t0 = time.monotonic()
    with temporary(2, version=a.pg) as sb:
        campaign = Campaign(sb)
        for i in range(a.rounds):
            seed = first + i
            rng = random.Random(seed)
            op, fault = rng.choice(ops), rng.choice(faults)
            outcome = campaign.round(op, fault, seed)
            print(outcome.line(), flush=True)
            tally[(op, fault)][0 if outcome.ok else 1] += 1
            if not outcome.ok:
                failures.append(outcome)
    print(f"\n{'operation':18} {'fault':8} {'ok':>4} {'fail':>4}")
    for (op, fault), (good, bad) in sorted(tally.items()):
        print(f"{op:18} {fault:8} {good:4} {bad:4}")
    print(f"{a.rounds} rounds in {time.monotonic() - t0:.0f} s; {len(failures)} failed"
          + "".join(f"\n  replay: --ops {f.op} --faults {f.fault} --seed {f.seed} --rounds 1"
                    for f in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
