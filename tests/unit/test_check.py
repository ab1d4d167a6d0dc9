"""The consistency checker's comparison, on histories made by the real actor."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from actors.events import Event
from actors.model import RunState, RunStatus
from streams.check import compare
from tests.unit.core import run_of
from tests.unit.test_replay import chain


def _finished_run() -> tuple[str, list[Event], RunState]:
    run = run_of(chain)
    run.start(chain, 1)
    run.complete(0, 2)
    run.complete(1, 4)
    run.complete(2, 5)
    assert run.state is not None
    return run.state.key, run.history, run.state


def test_a_consistent_run_has_no_findings() -> None:
    key, history, state = _finished_run()

    assert [] == compare({key: history}, {key: state}, Counter({key: 1}))


def test_a_state_that_differs_from_its_history_is_reported_with_the_fields() -> None:
    key, history, state = _finished_run()
    tampered = replace(state, status=RunStatus.RUNNING, history_len=3)

    [finding] = compare({key: history}, {key: tampered}, Counter({key: 1}))

    assert key == finding.run_key
    assert "changelog state differs from the history in: status, history_len" == finding.problem


def test_a_missing_or_doubled_terminal_record_is_reported() -> None:
    key, history, state = _finished_run()

    assert ["0 terminal records on completions, expected 1"] == [
        f.problem for f in compare({key: history}, {key: state}, Counter())
    ]
    assert ["2 terminal records on completions, expected 1"] == [
        f.problem for f in compare({key: history}, {key: state}, Counter({key: 2}))
    ]


def test_a_gap_in_the_history_is_reported() -> None:
    key, history, state = _finished_run()

    problems = [f.problem for f in compare({key: history[:3] + history[4:]}, {key: state}, Counter({key: 1}))]

    assert problems[0].startswith("event numbers are [0, 1, 2, 4")


def test_a_state_without_history_is_reported() -> None:
    key, _, state = _finished_run()

    assert ["history does not begin with WorkflowStarted", "state in the changelog but no history"] == [
        f.problem for f in compare({}, {key: state}, Counter({key: 1}))
    ][:2]
