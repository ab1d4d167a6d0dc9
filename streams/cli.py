"""The ``steady`` command line.

::

    steady broker start|stop|status|fetch   a local single-node Kafka from Kafka's own jars
    steady dev                              local broker + a demo flowing through it
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.broker import KAFKA_VERSION, BrokerConfig, BrokerError, LocalBroker, ensure_jars

logger = logging.getLogger("steady")


def _broker_config(args: argparse.Namespace) -> BrokerConfig:
    config = BrokerConfig()
    if args.home:
        config.home = Path(args.home)
    if args.port:
        config.port = args.port
    return config


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


async def _demo(bootstrap: str, count: int) -> None:
    topic = "steady.demo"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="latest")
    await producer.start()
    await consumer.start()
    try:
        await consumer.seek_to_end()
        began = time.monotonic()
        for i in range(count):
            await producer.send(topic, key=f"k{i}".encode(), value=f"record {i}".encode())
        await producer.flush()
        seen = 0
        while seen < count:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                seen += len(records)
        print(f"produced and consumed {count} records on {topic} in {time.monotonic() - began:.2f}s")
    finally:
        await consumer.stop()
        await producer.stop()


def _cmd_dev(args: argparse.Namespace) -> int:
    broker = LocalBroker(_broker_config(args))
    broker.start(embedded=True)
    print(f"Kafka {KAFKA_VERSION} ready on {broker.bootstrap} (log: {broker.log_file})")
    try:
        asyncio.run(_demo(broker.bootstrap, args.count))
    finally:
        broker.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``steady`` command."""
    parser = argparse.ArgumentParser(prog="steady", description="Durable workflows on Apache Kafka.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    def broker_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--home", help="broker folder (default .steady/broker or $STEADY_BROKER_HOME)")
        p.add_argument("--port", type=int, default=0, help="client port on 127.0.0.1 (default: free port)")

    broker = sub.add_parser("broker", help="a local single-node Kafka broker")
    broker.add_argument("action", choices=["start", "stop", "status", "fetch"])
    broker_options(broker)
    broker.set_defaults(func=_cmd_broker)

    dev = sub.add_parser("dev", help="start a local broker and run the demo on it")
    broker_options(dev)
    dev.add_argument("--count", type=int, default=1000, help="records to send through the broker")
    dev.set_defaults(func=_cmd_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``steady`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except BrokerError as exc:
        print(f"steady: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
