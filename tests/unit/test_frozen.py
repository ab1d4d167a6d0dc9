"""The generated replace gives what ``dataclasses.replace`` gives, and refuses what it refuses."""

from __future__ import annotations

import dataclasses

import pytest

from actors import payload
from actors.commands import Command, StartWorkflow
from actors.frozen import replace
from actors.model import EntryKind, EntryState, JournalEntry, RunState, RunStatus
from actors.policy import RetryPolicy

STATE = RunState(
    tenant="acme",
    workflow_id="order-1",
    workflow_type="orders",
    version="v1",
    status=RunStatus.RUNNING,
    input=payload.encode({"sku": "x"}),
    start_id="start/acme/order-1",
    started_at_ms=5,
    updated_at_ms=5,
    history_len=1,
)


@pytest.mark.parametrize(
    ("value", "changes"),
    [
        (STATE, {}),
        (STATE, {"history_len": 2, "updated_at_ms": 9}),
        (STATE, {"status": RunStatus.COMPLETED, "result": payload.encode(1), "journal": ()}),
        (JournalEntry(seq=0, kind=EntryKind.STEP, name="a", state=EntryState.SCHEDULED), {"attempt": 3}),
        (Command("c", "acme", "order-1", 1, StartWorkflow("orders", payload.encode(None), "")), {"at_ms": 7}),
    ],
)
def test_replace_matches_the_dataclasses_one(value: object, changes: dict[str, object]) -> None:
    mine = replace(value, **changes)
    theirs = dataclasses.replace(value, **changes)  # type: ignore[type-var]
    assert mine == theirs
    assert type(mine) is type(theirs)
    assert mine is not value
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(mine, dataclasses.fields(mine)[0].name, "other")  # type: ignore[arg-type]


def test_an_unknown_field_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        replace(STATE, no_such_field=1)


def test_a_class_that_validates_itself_still_validates() -> None:
    policy = RetryPolicy()
    assert replace(policy, max_attempts=5).max_attempts == 5
    with pytest.raises(ValueError, match="max_attempts"):
        replace(policy, max_attempts=-1)
