"""Fuzzing the pure core: no bytes crash the codec and no command crashes the actor."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import payload
from actors.actor import Actor, fold
from actors.commands import CancelWorkflow, Command, CompleteStep, FailStep, FireTimer, SendEvent, StartWorkflow
from actors.errors import ErrorInfo
from actors.model import RunState
from actors.payload import Payload
from actors.workflow import Registry
from schemas.codec import CodecError
from streams.records import COMMAND, EVENT, STATE, RecordType
from tests.workflows import app

ACTOR = Actor(Registry(list(app)))
TYPES = [w.name for w in app]

payloads = st.builds(
    Payload,
    content_type=st.sampled_from(["application/json", "text/plain", ""]),
    data=st.one_of(st.binary(max_size=64), st.sampled_from([b"1", b'"x"', b"[]", b"{}", b"null", b'{"name": 3}'])),
)
errors = st.builds(ErrorInfo, type=st.text(max_size=20), message=st.text(max_size=40), retryable=st.booleans())
small = st.integers(-3, 12)
bodies = st.one_of(
    st.builds(StartWorkflow, workflow_type=st.sampled_from([*TYPES, "nope"]), input=payloads),
    st.builds(CompleteStep, seq=small, attempt=small, result=payloads, started_at_ms=st.integers(0, 10**13)),
    st.builds(FailStep, seq=small, attempt=small, error=errors, started_at_ms=st.integers(0, 10**13)),
    st.builds(FireTimer, timer_id=st.sampled_from(["sleep/1/1", "retry/0/2", "step_timeout/0/1", "x"]), due_ms=small),
    st.builds(SendEvent, name=st.sampled_from(["go", "approval", "item", "other"]), payload=payloads),
    st.builds(CancelWorkflow, reason=st.text(max_size=10)),
)
commands = st.builds(
    Command,
    id=st.text(max_size=8),
    tenant=st.just("default"),
    workflow_id=st.sampled_from(["a", "b"]),
    at_ms=st.integers(0, 10**13),
    body=bodies,
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=512))
def test_random_bytes_never_crash_the_codec(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        COMMAND.decode(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid=commands, flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4))
def test_corrupted_commands_decode_or_fail_with_a_codec_error(valid: Command, flips: list[tuple[int, int]]) -> None:
    data = bytearray(COMMAND.encode(valid))
    for where, mask in flips:
        data[where % len(data)] ^= mask
    with contextlib.suppress(CodecError):
        COMMAND.decode(bytes(data))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(commands, max_size=25))
def test_no_sequence_of_commands_crashes_the_actor_and_history_folds_to_state(sequence: list[Command]) -> None:
    states: dict[str, RunState | None] = {}
    histories: dict[str, list[object]] = {}
    for command in sequence:
        outcome = ACTOR.handle(states.get(command.key), command)
        if outcome.rejected:
            assert outcome.state is states.get(command.key)
            continue
        states[command.key] = outcome.state
        histories.setdefault(command.key, []).extend(outcome.events)
    for key, state in states.items():
        if state is not None:
            assert state == fold(None, histories[key])  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(commands, max_size=25))
def test_commands_events_and_states_round_trip_through_the_generated_codec(sequence: list[Command]) -> None:
    # Written and read back by the generated Avro writers and readers, and readable by fastavro as well.
    states: dict[str, RunState | None] = {}
    for command in sequence:
        _round_trips(COMMAND, command)
        outcome = ACTOR.handle(states.get(command.key), command)
        for event in outcome.events:
            _round_trips(EVENT, event)
        if outcome.state is not None:
            _round_trips(STATE, outcome.state)
            states[command.key] = outcome.state


def _round_trips(kind: RecordType, value: object) -> None:
    data = kind.encode(value)
    assert kind.decode(data) == value
    assert kind.codec.decode(data)["workflow_id"] == value.workflow_id  # type: ignore[attr-defined]


def test_a_huge_payload_is_just_bytes_to_the_actor() -> None:
    start = Command("s", "default", "a", 1, StartWorkflow("chain", payload.encode({"name": "x" * 2_000_000})))

    outcome = ACTOR.handle(None, start)

    assert outcome.state is not None
