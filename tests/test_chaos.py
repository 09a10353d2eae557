"""The CI slice of the fault campaign (``bench/chaos.py`` runs the whole of it): fixed
operations, faults and seeds, each fault striking while the job runs. A round passes when
nothing committed is lost or doubled, the table is readable and writable, `check` says what a
clean run says, and nothing is left behind (``pgcleave.testing.chaos``)."""

from __future__ import annotations

from typing import Any

import pytest

from pgcleave.testing.chaos import Campaign

ROUNDS = [
    ("partition-copy", "sigkill", 11, 0.5),
    ("partition-inplace", "cancel", 12, 0.5),
    ("carve", "restart", 13, 0.4),
    ("maintain-drain", "sigkill", 14, 0.6),
    ("set-primary-key", "lock", 15, 0.3),
    ("move-out", "netcut", 16, 0.5),
    ("alter", "sigkill", 17, 0.5),
]


@pytest.fixture(scope="module")
def campaign(sandbox: Any) -> Campaign:
    return Campaign(sandbox)


@pytest.mark.slow
@pytest.mark.parametrize(("op", "fault", "seed", "at"), ROUNDS,
                         ids=[f"{r[0]}-{r[1]}" for r in ROUNDS])
def test_round(campaign: Campaign, op: str, fault: str, seed: int, at: float) -> None:
    outcome = campaign.round(op, fault, seed, at=at)
    assert outcome.ok, outcome.line()
    assert outcome.struck, f"the fault came after the job ended: {outcome.line()}"
    assert outcome.writer_ops > 50, outcome.line()
