"""The ``steady`` command line.

::

    steady dev                              local broker + worker + example workflows, runs a demo
    steady worker --app module:attr         serve the workflows of a Registry (or Workflow, or list)
    steady start TYPE --input JSON [--id ID] start a run (and wait for its result with --wait)
    steady status ID                        a run's status
    steady history ID                       a run's timeline
    steady signal ID NAME [--payload JSON]  send a run an event
    steady cancel ID [--reason TEXT]        cancel a run
    steady completions [--group G]          follow terminal records (filter by --type, --status, --tenant)
    steady dead-letters [resubmit P:O]      list dead letters, or send one again after a fix
    steady check                            rebuild every run from its history and compare with the changelog
    steady broker start|stop|status|fetch   a local single-node Kafka from Kafka's own jars

Where Kafka is: ``--bootstrap``, else ``STEADY_KAFKA_BOOTSTRAP``, else the local broker started by
``steady broker start`` or ``steady dev`` in this folder, else ``127.0.0.1:9092``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors import Registry, RunFailed
from streams import loop as event_loop
from streams.broker import KAFKA_VERSION, BrokerConfig, BrokerError, LocalBroker, ensure_jars
from streams.check import check
from streams.client import Client
from streams.settings import Settings
from streams.timeline import format_status, format_table, format_time, format_timeline, payload_text
from streams.worker import Worker

logger = logging.getLogger("steady")


def _broker_config(args: argparse.Namespace) -> BrokerConfig:
    config = BrokerConfig()
    if getattr(args, "home", None):
        config.home = Path(args.home)
    if getattr(args, "port", 0):
        config.port = args.port
    return config


def _bootstrap(args: argparse.Namespace) -> str:
    if getattr(args, "bootstrap", None):
        return str(args.bootstrap)
    if os.environ.get("STEADY_KAFKA_BOOTSTRAP"):
        return os.environ["STEADY_KAFKA_BOOTSTRAP"]
    running = LocalBroker(BrokerConfig()).status()
    if running is not None:
        return f"127.0.0.1:{running['port']}"
    return "127.0.0.1:9092"


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return Settings.from_env(bootstrap=_bootstrap(args), prefix=getattr(args, "prefix", None), **extra)


def load_app(ref: str) -> Registry:
    """The Registry named by ``module:attr`` (a Registry, a Workflow, or a list of Workflows)."""
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    return Registry.of(getattr(module, attr or "app"))


# -- commands --------------------------------------------------------------------------------------------


def _cmd_broker(args: argparse.Namespace) -> int:
    broker = LocalBroker(_broker_config(args))
    match args.action:
        case "fetch":
            print(ensure_jars(broker.config.jars))
        case "start":
            broker.start(embedded=False)
            print(f"Kafka {KAFKA_VERSION} ready on {broker.bootstrap} (log: {broker.log_file})")
        case "stop":
            if broker.status() is None:
                print("no broker running")
            broker.stop()
        case "status":
            running = broker.status()
            if running is None:
                print("stopped")
                return 1
            print(f"running pid {running['pid']} on 127.0.0.1:{running['port']} (log: {broker.log_file})")
    return 0


async def _serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    # The worker's own stop is bounded; a step still running in a thread (threads cannot be stopped) would hold
    # the process at exit, so the process ends regardless this long after the signal.
    deadline = worker.longest_stop_s + 2
    watchdog = threading.Timer(deadline, _exit_now, (deadline,))
    watchdog.daemon = True

    def stop() -> None:
        worker.stop()
        if watchdog.ident is None:  # not started yet (a second signal changes nothing)
            watchdog.start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    await worker.run()


def _exit_now(deadline: float) -> None:
    logging.getLogger("streams.worker").error("still running %.0fs after the stop signal: exiting now", deadline)
    logging.shutdown()
    os._exit(1)


def _cmd_worker(args: argparse.Namespace) -> int:
    logging.getLogger("streams").setLevel(logging.INFO)
    registry = load_app(args.app)
    settings = _settings(args, worker_id=args.worker_id, state_dir=args.state_dir)
    names = ", ".join(f"{w.name} v{w.version}" for w in registry)
    print(f"worker {settings.worker_id} serving {names} on {settings.bootstrap}", flush=True)
    event_loop.run(_serve(Worker(registry, settings)))
    return 0


def _parse_input(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"steady: --input is not JSON: {exc}") from exc


async def _start(args: argparse.Namespace) -> int:
    async with Client(_bootstrap(args), prefix=args.prefix, tenant=args.tenant) as client:
        handle = await client.start(
            args.workflow_type, _parse_input(args.input), id=args.id or str(uuid.uuid4()), version=args.version
        )
        print(f"started {handle.key}")
        if args.wait:
            try:
                print(json.dumps(await handle.result(timeout=args.wait), default=str))
            except RunFailed as exc:
                print(f"failed: {exc.error}", file=sys.stderr)
                return 1
    return 0


async def _status(args: argparse.Namespace) -> int:
    async with Client(_bootstrap(args), prefix=args.prefix, tenant=args.tenant) as client:
        state = await client.status(args.id)
        if state is None:
            print(f"no run {args.tenant}/{args.id}", file=sys.stderr)
            return 1
        print(format_status(state))
    return 0


async def _history(args: argparse.Namespace) -> int:
    async with Client(_bootstrap(args), prefix=args.prefix, tenant=args.tenant) as client:
        events = await client.history(args.id)
        if not events:
            print(f"no history for {args.tenant}/{args.id}", file=sys.stderr)
            return 1
        print(format_timeline(events))
    return 0


async def _signal(args: argparse.Namespace) -> int:
    async with Client(_bootstrap(args), prefix=args.prefix, tenant=args.tenant) as client:
        await client.signal(args.id, args.name, _parse_input(args.payload), event_id=args.event_id)
        print(f"sent {args.name!r} to {args.tenant}/{args.id}")
    return 0


async def _cancel(args: argparse.Namespace) -> int:
    async with Client(_bootstrap(args), prefix=args.prefix, tenant=args.tenant) as client:
        await client.cancel(args.id, args.reason)
        print(f"asked {args.tenant}/{args.id} to cancel")
    return 0


async def _completions(args: argparse.Namespace) -> int:
    async with Client(_bootstrap(args), prefix=args.prefix) as client:
        async for done in client.completions(
            tenant=args.tenant,
            workflow_type=args.type,
            status=args.status,
            group_id=args.group,
            from_beginning=args.from_beginning,
        ):
            detail = payload_text(done.result) if done.result is not None else str(done.error)
            print(f"{done.key}  {done.workflow_type} v{done.version}  {done.status}  {detail}", flush=True)
    return 0


async def _dead_letters(args: argparse.Namespace) -> int:
    async with Client(_bootstrap(args), prefix=args.prefix) as client:
        if args.action == "resubmit":
            partition, _, offset = (args.where or "").partition(":")
            if not partition.isdigit() or not offset.isdigit():
                raise SystemExit("steady: resubmit needs PARTITION:OFFSET, as `steady dead-letters` lists them")
            letter = await client.resubmit(int(partition), int(offset))
            print(f"resubmitted {args.where} to {letter.topic}")
            return 0
        rows = [
            (
                f"{p}:{o}",
                format_time(letter.at_ms),
                f"{letter.topic}[{letter.partition}]@{letter.offset}",
                (letter.key or b"").decode(errors="replace"),
                letter.reason,
            )
            for p, o, letter in await client.dead_letters()
        ]
        print(format_table(rows, ("letter", "time", "from", "key", "reason")) if rows else "no dead letters")
    return 0


async def _check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    report = await check(settings)
    print(
        f"checked {report.runs} runs ({report.events} history events) on {settings.bootstrap}, prefix {settings.prefix}"
    )
    for finding in report.findings:
        print(f"  {finding.run_key}: {finding.problem}")
    print("no differences" if report.ok else f"{len(report.findings)} difference(s)")
    return 0 if report.ok else 1


async def _demo(bootstrap: str, settings: Settings, runs: int, serve: bool) -> None:
    from streams.examples import OrderRequest, app, orders  # noqa: PLC0415 - only the demo needs them

    worker = Worker(app, settings)
    serving = asyncio.create_task(_serve(worker))
    await asyncio.wait_for(worker.ready.wait(), 120)
    async with Client(bootstrap, prefix=settings.prefix) as client:
        batch = uuid.uuid4().hex[:6]
        handles = [
            await client.start(
                orders,
                OrderRequest(order_id=f"{batch}-{i}", sku="book", quantity=1 + i % 3, amount_cents=1299 + i),
                id=f"order-{batch}-{i}",
            )
            for i in range(runs)
        ]
        for handle in handles:
            receipt = await handle.result(timeout=60)
            print(f"{handle.key}: {receipt.model_dump_json()}")
        print(f"\ntimeline of {handles[0].key}:")
        print(format_timeline(await handles[0].history()))
    if serve:
        print(
            "\nworker running; start more runs with:\n"
            '  steady start order --input \'{"order_id": "x1", "sku": "pen", "amount_cents": 250}\''
            " --wait 30\nCtrl-C stops the worker and the broker.",
            flush=True,
        )
        await serving
    else:
        worker.stop()
        await serving


def _cmd_dev(args: argparse.Namespace) -> int:
    external = args.bootstrap or os.environ.get("STEADY_KAFKA_BOOTSTRAP")
    broker = None if external else LocalBroker(_broker_config(args))
    if broker is not None:
        broker.start(embedded=True)
        print(f"Kafka {KAFKA_VERSION} ready on {broker.bootstrap} (log: {broker.log_file})", flush=True)
    bootstrap = external or (broker.bootstrap if broker else "")
    settings = Settings.from_env(bootstrap=bootstrap, prefix=args.prefix, worker_id="dev")
    try:
        event_loop.run(_demo(bootstrap, settings, args.runs, serve=not args.once))
    finally:
        if broker is not None:
            broker.stop()
    return 0


def _add_run_commands(
    sub: Any,
    kafka_options: Callable[[argparse.ArgumentParser], None],
    run_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    start = sub.add_parser("start", help="start a run")
    run_options(start)
    start.add_argument("workflow_type")
    start.add_argument("--input", help="the input as JSON")
    start.add_argument("--id", help="run id (default: a new UUID); an existing id starts no second run")
    start.add_argument("--version", default="", help="code version (default: the newest)")
    start.add_argument("--wait", type=float, metavar="SECONDS", help="wait for the result and print it")
    start.set_defaults(func=lambda a: asyncio.run(_start(a)))

    status = sub.add_parser("status", help="a run's status")
    run_options(status)
    status.add_argument("id")
    status.set_defaults(func=lambda a: asyncio.run(_status(a)))

    history = sub.add_parser("history", help="a run's timeline")
    run_options(history)
    history.add_argument("id")
    history.set_defaults(func=lambda a: asyncio.run(_history(a)))

    signal_ = sub.add_parser("signal", help="send a run an event")
    run_options(signal_)
    signal_.add_argument("id")
    signal_.add_argument("name")
    signal_.add_argument("--payload", help="the event's payload as JSON")
    signal_.add_argument("--event-id", help="id that de-duplicates resends (default: new)")
    signal_.set_defaults(func=lambda a: asyncio.run(_signal(a)))

    cancel = sub.add_parser("cancel", help="cancel a run")
    run_options(cancel)
    cancel.add_argument("id")
    cancel.add_argument("--reason", default="cancelled from the command line")
    cancel.set_defaults(func=lambda a: asyncio.run(_cancel(a)))

    completions = sub.add_parser("completions", help="follow terminal records")
    kafka_options(completions)
    completions.add_argument("--tenant")
    completions.add_argument("--type", help="only this workflow type")
    completions.add_argument("--status", choices=["completed", "failed", "cancelled"])
    completions.add_argument("--group", help="consumer group: resume where this group left off")
    completions.add_argument("--from-beginning", action="store_true")
    completions.set_defaults(func=lambda a: asyncio.run(_completions(a)))

    dead = sub.add_parser("dead-letters", help="list dead letters, or resubmit one")
    kafka_options(dead)
    dead.add_argument("action", nargs="?", choices=["list", "resubmit"], default="list")
    dead.add_argument("where", nargs="?", help="PARTITION:OFFSET of the letter to resubmit")
    dead.set_defaults(func=lambda a: asyncio.run(_dead_letters(a)))

    checker = sub.add_parser("check", help="compare every run's history with its changelog state")
    kafka_options(checker)
    checker.set_defaults(func=lambda a: asyncio.run(_check(a)))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``steady`` command."""
    parser = argparse.ArgumentParser(prog="steady", description="Durable workflows on Apache Kafka.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    def broker_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--home", help="broker folder (default .steady/broker or $STEADY_BROKER_HOME)")
        p.add_argument("--port", type=int, default=0, help="client port on 127.0.0.1 (default: free port)")

    def kafka_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: see `steady --help`)")
        p.add_argument("--prefix", help="topic prefix (default steady. or $STEADY_TOPIC_PREFIX)")

    def run_options(p: argparse.ArgumentParser) -> None:
        kafka_options(p)
        p.add_argument("--tenant", default="default", help="the run's tenant")

    broker = sub.add_parser("broker", help="a local single-node Kafka broker")
    broker.add_argument("action", choices=["start", "stop", "status", "fetch"])
    broker_options(broker)
    broker.set_defaults(func=_cmd_broker)

    dev = sub.add_parser("dev", help="local broker + worker + example workflows")
    broker_options(dev)
    kafka_options(dev)
    dev.add_argument("--runs", type=int, default=5, help="example orders to run first")
    dev.add_argument("--once", action="store_true", help="exit after the demo instead of serving")
    dev.set_defaults(func=_cmd_dev)

    worker = sub.add_parser("worker", help="serve workflows")
    kafka_options(worker)
    worker.add_argument("--app", required=True, help="module:attr of a Registry, Workflow or list of Workflows")
    worker.add_argument("--worker-id", help="stable id of this worker (default: host name)")
    worker.add_argument("--state-dir", help="local state folder (default .steady/state)")
    worker.set_defaults(func=_cmd_worker)

    _add_run_commands(sub, kafka_options, run_options)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``steady`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args))
    except BrokerError as exc:
        print(f"steady: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
