"""Bad input never stops a partition: each kind goes to the dead-letter topic with its reason and its bytes."""

from __future__ import annotations

import time

import pytest
from aiokafka import AIOKafkaProducer

from actors import payload
from actors.commands import Command, SendEvent, StartWorkflow
from streams.client import Client
from streams.records import COMMAND
from streams.settings import Settings
from tests.support import eventually, running_worker
from tests.workflows import app

pytestmark = pytest.mark.integration


async def test_each_kind_of_bad_input_is_dead_lettered_and_the_partition_moves_on(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_payload_bytes": 4096})
    key = b"default/good-1"
    now = int(time.time() * 1000)
    unknown_type = Command("c-unknown", "default", "good-1", now, StartWorkflow("no-such-workflow", payload.encode(1)))
    early_event = Command(
        "c-early", "default", "good-1", now, SendEvent("approval", payload.encode({"approver": "al", "ok": True}))
    )
    huge = Command("c-huge", "default", "good-1", now, StartWorkflow("approval", payload.encode("x" * 10_000)))
    good = Command("c-good", "default", "good-1", now, StartWorkflow("approval", payload.encode(60)))

    async with running_worker(app, limited) as worker, Client(settings.bootstrap, prefix=settings.prefix) as client:
        partition = worker.partition_of(key)
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
        await producer.start()
        try:
            for value in (
                b"\x00not avro at all",
                COMMAND.encode(unknown_type),
                COMMAND.encode(early_event),
                COMMAND.encode(huge),
                COMMAND.encode(good),
            ):
                await producer.send_and_wait(f"{settings.prefix}inbox", value, key=key, partition=partition)
        finally:
            await producer.stop()

        state = await eventually(lambda: client.status("good-1"), timeout=60)
        letters = await eventually(lambda: _four(client), timeout=60)

        reasons = [letter.reason for _, _, letter in letters]
        assert "undecodable command: not an Avro single-object encoding (missing C3 01 marker)" == reasons[0]
        assert "unknown workflow type 'no-such-workflow'" == reasons[1]
        assert "no run default/good-1 exists for SendEvent" == reasons[2]
        assert reasons[3].startswith("record of ")
        assert reasons[3].endswith("exceeds the limit of 4096 bytes")
        assert [b"\x00not avro at all", COMMAND.encode(unknown_type)] == [letters[0][2].value, letters[1][2].value]
        assert all(letter.key == key for _, _, letter in letters)
        assert "running" == state.status.value

        # The early event's run exists now: sending the letter again delivers it.
        p, o, _ = letters[2]
        await client.resubmit(p, o)
        assert "al:True" == await client.handle("good-1").result(timeout=60)


async def _four(client: Client) -> list[tuple[int, int, object]] | None:
    letters = await client.dead_letters()
    return sorted(letters, key=lambda item: item[2].offset) if len(letters) >= 4 else None  # type: ignore[attr-defined]
