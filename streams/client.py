"""The client: start runs, await their results, read their status and history.

Example:
    ```python
    async with Client("127.0.0.1:9092") as client:
        handle = await client.start(orders, OrderRequest(...), id="order-42")
        receipt = await handle.result(timeout=30)
        for event in await client.history("order-42"):
            print(event)
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from actors import payload
from actors.commands import CancelWorkflow, Command, CommandBody, SendEvent, StartWorkflow
from actors.errors import RunCancelled, RunFailed, SteadyError
from actors.events import Event
from actors.model import DEFAULT_TENANT, RunState, run_key
from actors.workflow import Workflow
from streams.clock import WallClock
from streams.records import COMMAND, COMPLETION, DEAD_LETTER, EVENT, STATE, Completion, DeadLetter
from streams.settings import Settings
from streams.topics import RunPartitioner, Topics, ensure_topics, read_topic


def _encode(value: Any) -> payload.Payload:
    return payload.encode(value)


class RunHandle:
    """A handle on one run: its result, status and history."""

    def __init__(self, client: Client, tenant: str, workflow_id: str, workflow: Workflow | None) -> None:
        self._client = client
        self.tenant = tenant
        self.workflow_id = workflow_id
        self._workflow = workflow

    @property
    def key(self) -> str:
        """``tenant/workflow_id``."""
        return run_key(self.tenant, self.workflow_id)

    async def completion(self, timeout: float | None = None) -> Completion:
        """The run's terminal record, once there is one."""
        return await self._client.completion(self.tenant, self.workflow_id, timeout=timeout)

    async def result(self, timeout: float | None = None) -> Any:
        """The run's result (decoded with the workflow's return annotation when the handle knows it).

        Raises:
            RunFailed: the run failed.
            TimeoutError: no terminal record within ``timeout`` seconds.
        """
        done = await self.completion(timeout)
        if done.status != "completed" or done.result is None:
            assert done.error is not None
            raise (RunCancelled if done.status == "cancelled" else RunFailed)(self.key, done.error)
        annotation = self._workflow.output_type if self._workflow is not None else Any
        return payload.decode(done.result, annotation)

    async def status(self) -> RunState | None:
        """The run's latest state snapshot, or ``None`` if it has none yet."""
        return await self._client.status(self.workflow_id, tenant=self.tenant)

    async def history(self) -> list[Event]:
        """The run's events, in order."""
        return await self._client.history(self.workflow_id, tenant=self.tenant)

    async def signal(self, name: str, payload: Any = None, *, event_id: str | None = None) -> None:
        """Send the run the event ``name`` (see :meth:`Client.signal`)."""
        await self._client.signal(self.workflow_id, name, payload, tenant=self.tenant, event_id=event_id)

    async def cancel(self, reason: str = "") -> None:
        """Ask the run to cancel (see :meth:`Client.cancel`)."""
        await self._client.cancel(self.workflow_id, reason, tenant=self.tenant)


class Client:
    """Talks to Steady through its topics. Use as an async context manager, or call :meth:`close`."""

    def __init__(
        self, bootstrap: str | None = None, *, prefix: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> None:
        self.settings = Settings.from_env(bootstrap=bootstrap, prefix=prefix)
        self.topics = Topics.named(self.settings.prefix)
        self.tenant = tenant
        self._producer: AIOKafkaProducer | None = None
        self._partition = RunPartitioner(self.settings.partitions)
        self._created_ms = WallClock().now_ms()
        self._watch: asyncio.Task[None] | None = None
        self._done: dict[str, Completion] = {}
        self._recent: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[Completion]]] = {}

    async def __aenter__(self) -> Client:
        await self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connect(self) -> AIOKafkaProducer:
        if self._producer is None:
            await ensure_topics(self.settings)
            producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap, enable_idempotence=True, acks="all")
            await producer.start()
            self._partition = await RunPartitioner.of(producer, self.topics)
            self._producer = producer
        return self._producer

    async def close(self) -> None:
        """Stop watching completions and close the connections."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    # -- starting and following runs ------------------------------------------------------------------------

    async def start(
        self,
        workflow: Workflow | str,
        input: Any = None,
        *,
        id: str | None = None,
        tenant: str | None = None,
        version: str = "",
    ) -> RunHandle:
        """Start a run of ``workflow`` with ``input``; if run ``id`` exists, return a handle on it instead.

        Args:
            workflow: the workflow (or its type name).
            input: a pydantic model or JSON value.
            id: the run id (default: a new UUID). Starting an existing id starts no second run.
            tenant: the run's tenant (default: the client's).
            version: the code version to start (default: the newest the workers have).
        """
        await self._connect()
        self._ensure_watching()
        tenant = tenant or self.tenant
        workflow_id = id or str(uuid.uuid4())
        name = workflow.name if isinstance(workflow, Workflow) else workflow
        command = Command(
            id=f"start/{tenant}/{workflow_id}",
            tenant=tenant,
            workflow_id=workflow_id,
            at_ms=WallClock().now_ms(),
            body=StartWorkflow(name, payload.encode(input), version),
        )
        await self.send(command)
        # Its terminal record comes after this client started watching: no need to scan for an older one.
        self._recent.add(command.key)
        return RunHandle(self, tenant, workflow_id, workflow if isinstance(workflow, Workflow) else None)

    async def send(self, command: Command) -> None:
        """Produce ``command`` to the inbox and wait until the broker has it.

        Raises:
            ValueError: the encoded command is larger than ``max_payload_bytes`` (workers would dead-letter it).
        """
        producer = await self._connect()
        value = COMMAND.encode(command)
        if len(value) > self.settings.max_payload_bytes:
            raise ValueError(
                f"command of {len(value)} bytes exceeds the limit of {self.settings.max_payload_bytes} bytes"
            )
        await producer.send_and_wait(
            self.topics.inbox,
            value,
            key=command.key.encode(),
            partition=self._partition(command.key.encode()),
            headers=COMMAND.headers,
        )

    async def signal(
        self,
        id: str,
        name: str,
        payload: Any = None,
        *,
        tenant: str | None = None,
        event_id: str | None = None,
    ) -> None:
        """Send run ``id`` the event ``name`` with ``payload``.

        The event is kept until the workflow waits for it. Resending with the same ``event_id`` delivers it
        once (default: a new id per call).
        """
        body = SendEvent(name, _encode(payload))
        await self._command(tenant or self.tenant, id, body, event_id or str(uuid.uuid4()))

    async def cancel(self, id: str, reason: str = "", *, tenant: str | None = None) -> None:
        """Ask run ``id`` to cancel: ``Cancelled`` is raised at its current await; it may compensate."""
        tenant = tenant or self.tenant
        await self._command(tenant, id, CancelWorkflow(reason), f"cancel/{tenant}/{id}")

    async def _command(self, tenant: str, workflow_id: str, body: CommandBody, command_id: str) -> None:
        await self.send(Command(command_id, tenant, workflow_id, WallClock().now_ms(), body))

    def handle(self, id: str, *, tenant: str | None = None, workflow: Workflow | None = None) -> RunHandle:
        """A handle on an existing run."""
        return RunHandle(self, tenant or self.tenant, id, workflow)

    async def completion(self, tenant: str, workflow_id: str, *, timeout: float | None = None) -> Completion:
        """Wait for the terminal record of run ``tenant/workflow_id``."""
        await self._connect()
        key = run_key(tenant, workflow_id)
        if key not in self._done and key not in self._recent:
            found = await self._scan(self.topics.completions, key, since_ms=None)
            if found:
                self._done[key] = COMPLETION.decode(found[0])
        if key in self._done:
            return self._done[key]
        self._ensure_watching()
        waiter: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter, timeout)
        finally:
            waiters = self._waiters.get(key, [])
            if waiter in waiters:
                waiters.remove(waiter)

    def _ensure_watching(self) -> None:
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_completions(), name="steady completions")

    async def _watch_completions(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self.topics.completions, p) for p in range(self._partition.partitions)]
            consumer.assign(tps)
            # Terminal records of runs this client starts come after it was created; earlier ones are scanned.
            # The ends are read first: a record committed between the two lookups is then read, not skipped.
            ends = await consumer.end_offsets(tps)
            since = await consumer.offsets_for_times(dict.fromkeys(tps, self._created_ms - 5000))
            for tp in tps:
                found = since.get(tp)
                consumer.seek(tp, found.offset if found is not None else ends[tp])
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        self._deliver(record.value)
        finally:
            await consumer.stop()

    def _deliver(self, value: bytes) -> None:
        try:
            done = COMPLETION.decode(value)
        except ValueError:
            return
        self._done.setdefault(done.key, done)
        for waiter in self._waiters.pop(done.key, []):
            if not waiter.done():
                waiter.set_result(done)

    async def completions(
        self,
        *,
        tenant: str | None = None,
        workflow_type: str | None = None,
        status: str | None = None,
        group_id: str | None = None,
        from_beginning: bool = False,
    ) -> AsyncIterator[Completion]:
        """Terminal records as they come, filtered by tenant, workflow type and status.

        With ``group_id`` the iterator is a member of that consumer group: several backends share the load,
        and a restarted one resumes after the last record it received (offsets are committed automatically,
        so a record may come again after a crash: handle completions idempotently, by run key). Without it,
        it reads from now on (or from the beginning).
        """
        await self._connect()
        consumer = AIOKafkaConsumer(
            self.topics.completions,
            bootstrap_servers=self.settings.bootstrap,
            group_id=group_id,
            isolation_level="read_committed",
            auto_offset_reset="earliest" if from_beginning or group_id else "latest",
            enable_auto_commit=group_id is not None,
        )
        await consumer.start()
        try:
            async for record in consumer:
                try:
                    done = COMPLETION.decode(record.value)
                except ValueError:
                    continue
                if (
                    (tenant is None or done.tenant == tenant)
                    and (workflow_type is None or done.workflow_type == workflow_type)
                    and (status is None or done.status == status)
                ):
                    yield done
        finally:
            await consumer.stop()

    # -- dead letters ----------------------------------------------------------------------------------------

    async def dead_letters(self) -> list[tuple[int, int, DeadLetter]]:
        """Every dead letter as (partition, offset, letter), oldest first."""
        await self._connect()
        records = await read_topic(self.settings.bootstrap, self.topics.dead_letter)
        letters = [(r.partition, r.offset, DEAD_LETTER.decode(r.value)) for r in records]
        return sorted(letters, key=lambda item: (item[2].at_ms, item[0], item[1]))

    async def resubmit(self, partition: int, offset: int) -> DeadLetter:
        """Produce dead letter ``partition:offset``'s original record again to its topic (after a fix)."""
        found = [letter for p, o, letter in await self.dead_letters() if (p, o) == (partition, offset)]
        if not found:
            raise LookupError(f"no dead letter at {partition}:{offset}")
        letter = found[0]
        if letter.value is None:
            raise ValueError(f"dead letter {partition}:{offset} kept no value to resubmit")
        producer = await self._connect()
        target = self._partition(letter.key) if letter.key and letter.topic == self.topics.inbox else None
        await producer.send_and_wait(
            letter.topic,
            letter.value,
            key=letter.key,
            partition=target if target is not None else letter.partition,
            headers=[("steady.resubmitted-from", f"{partition}:{offset}".encode())],
        )
        return letter

    # -- reading state and history ---------------------------------------------------------------------------

    async def status(self, id: str, *, tenant: str | None = None) -> RunState | None:
        """The latest state snapshot of run ``id`` (read from the compacted state changelog)."""
        await self._connect()
        values = await self._scan(self.topics.state, run_key(tenant or self.tenant, id), since_ms=None)
        return STATE.decode(values[-1]) if values else None

    async def history(self, id: str, *, tenant: str | None = None) -> list[Event]:
        """Every history event of run ``id``, in order."""
        await self._connect()
        key = run_key(tenant or self.tenant, id)
        state = await self.status(id, tenant=tenant)
        since = state.started_at_ms - 60_000 if state is not None else None
        return [EVENT.decode(v) for v in await self._scan(self.topics.history, key, since_ms=since)]

    async def _scan(self, topic: str, key: str, *, since_ms: int | None) -> list[bytes]:
        """Values of ``key`` on its partition of ``topic``, up to the current end (read_committed)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap, isolation_level="read_committed", enable_auto_commit=False
        )
        await consumer.start()
        try:
            tp = TopicPartition(topic, self._partition(key.encode()))
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            start = 0
            if since_ms is not None:
                found = (await consumer.offsets_for_times({tp: since_ms}))[tp]
                start = found.offset if found is not None else end
            else:
                start = (await consumer.beginning_offsets([tp]))[tp]
            if start >= end:
                return []
            consumer.seek(tp, start)
            wanted = key.encode()
            values: list[bytes] = []
            deadline = time.monotonic() + 60
            while await consumer.position(tp) < end and time.monotonic() < deadline:
                batch = await consumer.getmany(tp, timeout_ms=500)
                values.extend(r.value for r in batch.get(tp, []) if r.key == wanted and r.offset < end)
            return values
        finally:
            await consumer.stop()


__all__ = ["Client", "RunHandle", "SteadyError"]
