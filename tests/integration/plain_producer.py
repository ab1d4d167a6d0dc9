"""Start a Steady run with a plain Kafka producer and the Avro schema files: no Steady code at all.

    python plain_producer.py BOOTSTRAP PREFIX WORKFLOW_TYPE RUN_ID INPUT_JSON

This is the ingress contract other languages follow (see the README): an Avro ``steady.Command`` in single-object
encoding (C3 01, the schema's CRC-64-AVRO fingerprint little-endian, the Avro body), keyed ``tenant/workflow_id``
and partitioned with Kafka's default murmur2 partitioner, on ``<prefix>inbox``.
"""

import asyncio
import io
import sys
import time
from pathlib import Path
from typing import Any

import fastavro
from aiokafka import AIOKafkaProducer
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form
from fastavro.types import Schema

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def single_object(schema: Schema, record: dict[str, Any]) -> bytes:
    """Avro single-object encoding of ``record``."""
    header = b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, record)
    return header + body.getvalue()


async def main(bootstrap: str, prefix: str, workflow_type: str, run_id: str, input_json: str) -> None:
    schema = load_schema(str(SCHEMAS / "inbox.avsc"), _write_hint=False)  # resolves steady.Payload.avsc etc.
    command = {
        "id": f"start/default/{run_id}",  # resending the same id is a no-op
        "tenant": "default",
        "workflow_id": run_id,
        "at_ms": int(time.time() * 1000),
        "body": (
            "steady.StartWorkflow",
            {
                "workflow_type": workflow_type,
                "input": {"content_type": "application/json", "data": input_json.encode()},
                "version": "",
            },
        ),
    }
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            f"{prefix}inbox",
            single_object(schema, command),
            key=f"default/{run_id}".encode(),
            headers=[("steady.schema", b"steady.Command")],
        )
    finally:
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
