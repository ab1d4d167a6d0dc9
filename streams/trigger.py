"""Kafka triggers: start a workflow run for every record of a user topic.

The run id comes from the record (``topic-partition-offset``, or its key), so reading a record again after a
crash starts no second run: the actor keeps the run that exists. Offsets are committed only after the starts
of a batch are acknowledged by the broker (acks=all), so a record is never skipped. Records that cannot start a
run (no key when the id comes from the key, a value that is not JSON) go to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from actors import payload
from actors.commands import Command, StartWorkflow
from actors.model import run_key
from actors.workflow import Trigger, Workflow
from streams.clock import Clock
from streams.loop import CLOSE_TIMEOUT_S, bounded
from streams.records import COMMAND, DEAD_LETTER, DeadLetter
from streams.settings import Settings
from streams.topics import RunPartitioner, Topics

logger = logging.getLogger(__name__)


class TriggerRunner:
    """Reads one trigger's topic and starts a run of ``workflow`` per record."""

    def __init__(self, workflow: Workflow, trigger: Trigger, settings: Settings, clock: Clock) -> None:
        self.workflow = workflow
        self.trigger = trigger
        self.settings = settings
        self.clock = clock
        self.topics = Topics.named(settings.prefix)
        self.group = trigger.group or f"{settings.prefix}trigger.{workflow.name}.{trigger.topic}"
        self.started = 0
        self._partition = RunPartitioner(settings.partitions)

    async def run(self) -> None:
        """Start runs for the topic's records until cancelled."""
        s = self.settings
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, enable_idempotence=True, acks="all", linger_ms=2)
        consumer = AIOKafkaConsumer(
            self.trigger.topic,
            bootstrap_servers=s.bootstrap,
            group_id=self.group,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
        )
        await producer.start()
        await consumer.start()
        try:
            self._partition = await RunPartitioner.of(producer, self.topics)
            logger.info("trigger %s -> %s in group %s", self.trigger.topic, self.workflow.name, self.group)
            backoff = 0.1
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                if not batch:
                    continue
                try:
                    sent = [await self._start(producer, record) for records in batch.values() for record in records]
                    await asyncio.gather(*sent)  # durable in the inbox (acks=all) before the offsets move
                    await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
                    backoff = 0.1
                except (KafkaError, TimeoutError, OSError) as exc:
                    # Read the batch again: starts are idempotent, so resending those that went through is harmless.
                    for tp, records in batch.items():
                        consumer.seek(tp, records[0].offset)
                    logger.warning(
                        "trigger batch on %s failed (%s); retrying in %.1fs", self.trigger.topic, exc, backoff
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(5.0, backoff * 2)
        finally:
            await bounded(CLOSE_TIMEOUT_S, consumer.stop(), producer.stop())

    def _run_id(self, record: ConsumerRecord) -> str | None:
        if self.trigger.id_from == "key":
            return None if record.key is None else bytes(record.key).decode("utf-8", errors="replace")
        return f"{record.topic}-{record.partition}-{record.offset}"

    async def _start(self, producer: AIOKafkaProducer, record: ConsumerRecord) -> asyncio.Future[object]:
        workflow_id = self._run_id(record)
        try:
            value = None if record.value is None else json.loads(record.value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return await self._dead_letter(producer, record, f"trigger record value is not JSON: {exc}")
        if not workflow_id:
            return await self._dead_letter(producer, record, "trigger record has no key to take the run id from")
        tenant = self.trigger.tenant
        command = Command(
            id=f"start/{tenant}/{workflow_id}",
            tenant=tenant,
            workflow_id=workflow_id,
            at_ms=self.clock.now_ms(),
            body=StartWorkflow(self.workflow.name, payload.encode(value), self.workflow.version),
        )
        key = run_key(tenant, workflow_id).encode()
        self.started += 1
        return await producer.send(  # type: ignore[no-any-return]
            self.topics.inbox,
            COMMAND.encode(command),
            key=key,
            partition=self._partition(key),
            headers=COMMAND.headers,
        )

    async def _dead_letter(
        self, producer: AIOKafkaProducer, record: ConsumerRecord, reason: str
    ) -> asyncio.Future[object]:
        logger.warning("dead letter from %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
        letter = DeadLetter(
            record.topic, record.partition, record.offset, record.key, record.value, reason, self.clock.now_ms()
        )
        return await producer.send(  # type: ignore[no-any-return]
            self.topics.dead_letter,
            DEAD_LETTER.encode(letter),
            key=record.key,
            partition=record.partition % self._partition.partitions,
            headers=DEAD_LETTER.headers,
        )
