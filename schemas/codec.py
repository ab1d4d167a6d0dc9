"""Reading and writing Steady's Avro records.

Every record value is written in Avro's single-object encoding: the marker ``C3 01``, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer's schema (parsing canonical form), then the Avro binary
body. Any Avro library can read it with the ``*.avsc`` files of this folder. Each record also carries a Kafka
header ``steady.schema`` with the schema's full name, so consumers can route without decoding.

:func:`to_avro` and :func:`from_avro` map frozen dataclasses to and from the dicts fastavro reads and writes.
A dataclass maps to the Avro record of the same (unqualified) name, field by field; a union of dataclasses
maps to an Avro union of records.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import struct
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, TypeVar, Union

import fastavro
from fastavro.schema import load_schema, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent
SCHEMA_HEADER = "steady.schema"
_MARKER = b"\xc3\x01"
_EMPTY64 = 0xC15D213AA4D7A795
T = TypeVar("T")


class CodecError(ValueError):
    """A record could not be decoded: wrong framing, unknown schema, or a body that does not match it."""


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _crc64_table()


def fingerprint64(data: bytes) -> int:
    """The CRC-64-AVRO fingerprint (Avro specification, "Schema Fingerprints")."""
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


class Codec:
    """Encodes and decodes the records of one schema file (``schemas/<name>.avsc``)."""

    def __init__(self, name: str) -> None:
        schema = load_schema(str(SCHEMA_DIR / f"{name}.avsc"), _write_hint=False)
        assert isinstance(schema, dict)
        self.schema: dict[str, Any] = schema
        self.full_name: str = schema["name"]
        canonical = to_parsing_canonical_form(self.schema)
        self.fingerprint = struct.pack("<Q", fingerprint64(canonical.encode()))
        self.prefix = _MARKER + self.fingerprint
        self.header = (SCHEMA_HEADER, self.full_name.encode())

    def encode(self, record: dict[str, Any]) -> bytes:
        """The single-object encoding of ``record``."""
        out = io.BytesIO()
        out.write(self.prefix)
        fastavro.schemaless_writer(out, self.schema, record)
        return out.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        """The record in ``data``; raises :class:`CodecError` if it is not this schema's single-object encoding."""
        if data[:2] != _MARKER:
            raise CodecError("not an Avro single-object encoding (missing C3 01 marker)")
        if data[2:10] != self.fingerprint:
            raise CodecError(f"written with another schema than {self.full_name} (fingerprint {data[2:10].hex()})")
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(data[10:]),
                self.schema,
                None,
                return_record_name=True,
                return_record_name_override=True,
            )
        except Exception as exc:  # fastavro raises many kinds of errors on bad bytes
            raise CodecError(f"bad {self.full_name} body: {type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict):
            raise CodecError(f"bad {self.full_name} body")
        return record


@cache
def codec(name: str) -> Codec:
    """The shared codec of ``schemas/<name>.avsc``."""
    return Codec(name)


def to_avro(value: Any) -> Any:
    """A dataclass (recursively) as the dict fastavro writes; unions of records are tagged with ``-type``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {"-type": f"steady.{type(value).__name__}"}
        for f in dataclasses.fields(value):
            out[f.name] = to_avro(getattr(value, f.name))
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [to_avro(v) for v in value]
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def _convert(tp: Any, data: Any) -> Any:
    if data is None:
        return None
    members = _union_args(tp)
    if members is not None:
        classes = [m for m in members if m is not type(None)]
        if isinstance(data, tuple):  # (record name, fields) for a union of several records
            name, data = data
            short = name.rsplit(".", 1)[-1]
            for cls in classes:
                if getattr(cls, "__name__", None) == short:
                    return from_avro(cls, data)
            raise CodecError(f"unexpected record {name} for {tp}")
        return _convert(classes[0], data) if len(classes) == 1 else data
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_avro(tp, data)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if typing.get_origin(tp) is tuple:
        (item, *_) = typing.get_args(tp)
        return tuple(_convert(item, v) for v in data)
    return data


def from_avro(cls: type[T], data: dict[str, Any]) -> T:
    """The dataclass ``cls`` from the dict fastavro read (with ``return_record_name=True``)."""
    hints = _hints(cls)
    try:
        kwargs = {f.name: _convert(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data}  # type: ignore[arg-type]
        return cls(**kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"record does not fit {cls.__name__}: {exc}") from exc
