"""Reading and writing Steady's Avro records.

Every record value is written in Avro's single-object encoding: the marker ``C3 01``, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer's schema (parsing canonical form), then the Avro binary
body. Any Avro library can read it with the ``*.avsc`` files of this folder. Each record also carries a Kafka
header ``steady.schema`` with the schema's full name, so consumers can route without decoding.

:func:`to_avro` and :func:`from_avro` map frozen dataclasses to and from the dicts fastavro reads and writes.
A dataclass maps to the Avro record of the same (unqualified) name in the ``steady`` namespace, field by
field; a field typed as a union of dataclasses maps to an Avro union of records (written in fastavro's tuple
notation, which names the branch).
"""

from __future__ import annotations

import dataclasses
import enum
import io
import struct
import types
import typing
from collections.abc import Callable
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
        # Parsed once: fastavro would otherwise parse a plain dict schema on every read and write.
        self._parsed = fastavro.parse_schema(schema)
        self.fingerprint = struct.pack("<Q", fingerprint64(canonical.encode()))
        self.prefix = _MARKER + self.fingerprint
        self.header = (SCHEMA_HEADER, self.full_name.encode())

    def encode(self, record: dict[str, Any]) -> bytes:
        """The single-object encoding of ``record``."""
        out = io.BytesIO()
        out.write(self.prefix)
        fastavro.schemaless_writer(out, self._parsed, record)
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
                self._parsed,
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
    """A dataclass (recursively) as the dict fastavro writes."""
    cls = type(value)
    if cls in _PLAIN:
        return value
    writer = _WRITERS.get(cls)
    if writer is not None:
        return writer(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _writer(cls)(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [to_avro(v) for v in value]
    return value


_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})
_WRITERS: dict[type, Callable[[Any], Any]] = {}
_READERS: dict[type, Callable[[dict[str, Any]], Any]] = {}


def _tagged(value: Any) -> Any:
    # fastavro's tuple notation names the union branch; far quicker than letting it search the branches.
    return None if value is None else (f"steady.{type(value).__name__}", to_avro(value))


def _writer(cls: type) -> Callable[[Any], Any]:
    """The function turning a ``cls`` into its dict, generated once from its fields' types.

    Fields of plain types are copied as they are, an enum gives its value, a nested dataclass its own writer's
    dict: the per-record cost is one dict display, not a generic conversion per field.
    """
    hints = typing.get_type_hints(cls)
    names: dict[str, Any] = {}
    items = []
    for f in dataclasses.fields(cls):
        expression = _field_expression(hints[f.name], f"v.{f.name}", names)
        items.append(f"{f.name!r}: {expression}")
    source = f"def write(v):\n    return {{{', '.join(items)}}}\n"
    namespace: dict[str, Any] = dict(names)
    exec(compile(source, f"<avro writer of {cls.__name__}>", "exec"), namespace)  # source made above from the types
    write: Callable[[Any], Any] = namespace["write"]
    _WRITERS[cls] = write
    return write


def _field_expression(tp: Any, value: str, names: dict[str, Any]) -> str:
    """Python source that converts ``value`` (an expression) of type ``tp`` for fastavro."""
    members = _union_args(tp)
    if members is not None:
        present = [m for m in members if m is not type(None)]
        if all(dataclasses.is_dataclass(m) for m in present):
            # fastavro matches a plain dict against each branch of a union; the tuple notation names the branch.
            return _call(names, "_tagged", _tagged, value)
        if present == [bytes]:
            return f"(None if {value} is None else ('bytes', {value}))"
        if all(m in _PLAIN for m in present):
            return value
        if len(present) == 1:
            return f"(None if {value} is None else {_field_expression(present[0], value, names)})"
        return _call(names, "_to_avro", to_avro, value)
    if tp in _PLAIN:
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return f"{value}.value"
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _call(names, f"_write_{tp.__name__}", _LazyWriter(tp), value)
    if typing.get_origin(tp) in (tuple, list):
        item = _field_expression(typing.get_args(tp)[0], "x", names)
        return f"list({value})" if item == "x" else f"[{item} for x in {value}]"
    return _call(names, "_to_avro", to_avro, value)


def _call(names: dict[str, Any], name: str, function: Callable[[Any], Any], value: str) -> str:
    names.setdefault(name, function)
    return f"{name}({value})"


class _LazyWriter:
    """The writer of a nested dataclass, built on first use (types may refer to each other)."""

    __slots__ = ("_cls", "_write")

    def __init__(self, cls: type) -> None:
        self._cls = cls
        self._write: Callable[[Any], Any] | None = None

    def __call__(self, value: Any) -> Any:
        write = self._write
        if write is None:
            write = self._write = _WRITERS.get(self._cls) or _writer(self._cls)
        return write(value)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def _converter(tp: Any) -> Callable[[Any], Any]:
    """A function turning what fastavro read for a field of type ``tp`` into the Python value."""
    members = _union_args(tp)
    if members is not None:
        classes = [m for m in members if m is not type(None)]
        by_name = {getattr(c, "__name__", ""): c for c in classes}
        single = _converter(classes[0]) if len(classes) == 1 else None

        def union(data: Any) -> Any:
            if data is None:
                return None
            if isinstance(data, tuple):  # (record name, fields) for a union of several records
                name, fields = data
                cls = by_name.get(name.rsplit(".", 1)[-1])
                if cls is None:
                    raise CodecError(f"unexpected record {name} for {tp}")
                return from_avro(cls, fields)
            return single(data) if single is not None else data

        return union
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        cls = tp
        return lambda data: None if data is None else from_avro(cls, data)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp
    if typing.get_origin(tp) is tuple:
        item = _converter(typing.get_args(tp)[0])
        return lambda data: tuple(item(v) for v in data)
    return _identity


def _identity(data: Any) -> Any:
    return data


def _reader(cls: type[T]) -> Callable[[dict[str, Any]], T]:
    hints = typing.get_type_hints(cls)
    fields = [(f.name, _converter(hints[f.name])) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    def read(data: dict[str, Any]) -> T:
        return cls(**{name: convert(data[name]) for name, convert in fields if name in data})

    _READERS[cls] = read
    return read


def from_avro(cls: type[T], data: dict[str, Any]) -> T:
    """The dataclass ``cls`` from the dict fastavro read (with ``return_record_name=True``)."""
    read = _READERS.get(cls) or _reader(cls)
    try:
        return read(data)  # type: ignore[no-any-return]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"record does not fit {cls.__name__}: {exc}") from exc
