"""The ledger of inputs applied before they were written: which runs' new steps wait for them."""

from __future__ import annotations

from actors import payload
from actors.commands import Command, CompleteStep
from streams.pending import EarlyInput, EarlyInputs, Pending


def _early(run: str, seq: int) -> EarlyInput:
    body = CompleteStep(seq, 1, payload.encode(seq), 0)
    return EarlyInput(None, Command(f"{run}#{seq}", "default", run, 0, body), Pending())


def test_a_run_waits_until_every_early_input_of_it_is_settled() -> None:
    ledger = EarlyInputs()
    first, second, other = _early("a", 1), _early("a", 2), _early("b", 1)
    for early in (first, second, other):
        ledger.expect(early)
    assert ledger.get("a#1") is first
    assert ledger.arrived("a#1")
    assert not ledger.arrived("a#1")  # heard of a second time
    ledger.settle(first)
    assert first.settled
    assert ledger.waits(first.command.key)  # the second is still on its way
    assert ledger.arrived("a#2")
    ledger.settle(second)
    assert not ledger.waits(first.command.key)
    assert ledger.waits(other.command.key)
    assert ledger.get("a#2") is None


def test_another_input_of_a_run_overtakes_only_that_runs_early_inputs() -> None:
    ledger = EarlyInputs()
    mine, theirs = _early("a", 1), _early("b", 1)
    ledger.expect(mine)
    ledger.expect(theirs)
    ledger.overtake(mine.command.key)
    assert mine.overtaken
    assert not theirs.overtaken
