"""Avro records: every record type round-trips, and bad bytes give a clear error."""

from __future__ import annotations

import pytest

from actors import payload
from actors.commands import Command, CompleteStep, FailStep, StartWorkflow
from actors.errors import ErrorInfo
from actors.events import Event, StepScheduled, WorkflowStuck
from actors.model import EntryKind, EntryState, JournalEntry, RunState, RunStatus
from actors.policy import RetryPolicy
from schemas.codec import CodecError, codec, fingerprint64
from streams.records import COMMAND, COMPLETION, DEAD_LETTER, EVENT, STATE, TASK, Completion, DeadLetter, StepTask

OPTIONS = RetryPolicy(non_retryable=(ValueError, "KeyError")).options()
P = payload.encode({"a": [1, 2]})


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (COMMAND, Command("c", "t", "w", 1, StartWorkflow("order", P, "2"))),
        (COMMAND, Command("c", "t", "w", 1, CompleteStep(3, 2, P, 5))),
        (COMMAND, Command("c", "t", "w", 1, FailStep(3, 2, ErrorInfo("E", "m", False, "tb"), 5, 100))),
        (EVENT, Event("t", "w", 4, 9, StepScheduled(1, "s", 2, 1, "m:f", P, OPTIONS))),
        (EVENT, Event("t", "w", 4, 9, WorkflowStuck("why"))),
        (
            STATE,
            RunState(
                "t",
                "w",
                "order",
                "1",
                RunStatus.STUCK,
                P,
                "c",
                1,
                2,
                (
                    JournalEntry(
                        0,
                        EntryKind.STEP,
                        "s",
                        EntryState.FAILED,
                        1,
                        3,
                        "m:f",
                        P,
                        None,
                        ErrorInfo("E", "m"),
                        OPTIONS,
                        5,
                        6,
                        1,
                    ),
                ),
                None,
                ErrorInfo("E", "m"),
                "reason",
                7,
                1,
            ),
        ),
        (TASK, StepTask("t", "w", "order", "1", 0, "s", 1, "m:f", P, "t/w/s/1", 0, 5)),
        (COMPLETION, Completion("t", "w", "order", "1", "failed", None, ErrorInfo("E", "m"), 1, 2)),
        (DEAD_LETTER, DeadLetter("topic", 1, 2, b"k", None, "reason", 3)),
    ],
)
def test_every_record_type_round_trips(kind: object, value: object) -> None:
    encoded = kind.encode(value)  # type: ignore[attr-defined]

    assert value == kind.decode(encoded)  # type: ignore[attr-defined]
    assert b"\xc3\x01" == encoded[:2]


def test_fingerprint_follows_the_avro_specification() -> None:
    # The specification's CRC-64-AVRO of the canonical form of "int".
    assert 0x7275D51A3F395C8F == fingerprint64(b'"int"')


def test_garbage_is_rejected_with_a_reason() -> None:
    with pytest.raises(CodecError, match="single-object"):
        COMMAND.decode(b"not avro")


def test_a_record_of_another_schema_is_rejected() -> None:
    with pytest.raises(CodecError, match="another schema"):
        COMMAND.decode(COMPLETION.encode(Completion("t", "w", "x", "1", "completed", P, None, 1, 2)))


def test_a_truncated_body_is_rejected() -> None:
    data = COMMAND.encode(Command("c", "t", "w", 1, CompleteStep(3, 2, P, 5)))

    with pytest.raises(CodecError, match=r"bad steady\.Command body"):
        COMMAND.decode(data[:-4])


def test_schema_header_names_the_record() -> None:
    assert ("steady.schema", b"steady.Command") == codec("inbox").header
