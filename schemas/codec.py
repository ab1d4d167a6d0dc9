"""Reading and writing Steady's Avro records.

Every record value is written in Avro's single-object encoding: the marker ``C3 01``, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer's schema (parsing canonical form), then the Avro binary
body. Any Avro library can read it with the ``*.avsc`` files of this folder. Each record also carries a Kafka
header ``steady.schema`` with the schema's full name, so consumers can route without decoding.

A dataclass maps to the Avro record of the same (unqualified) name in the ``steady`` namespace, field by
field; a field typed as a union of dataclasses maps to an Avro union of records. :meth:`Codec.writer` generates
the Avro binary writer of a dataclass from the schema; :func:`from_avro` turns what fastavro reads back into
dataclasses.
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
        self._parsed: dict[str, Any] = fastavro.parse_schema(schema)  # type: ignore[assignment]
        self.fingerprint = struct.pack("<Q", fingerprint64(canonical.encode()))
        self.prefix = _MARKER + self.fingerprint
        self.header = (SCHEMA_HEADER, self.full_name.encode())

    def writer(self, cls: type) -> Callable[[Any], bytes]:
        """A function giving the single-object encoding of a ``cls`` instance (a dataclass of this record)."""
        writers = _Writers(self._parsed.get("__named_schemas", {}))
        write = writers.namespace[writers.record(self._parsed, cls)]
        prefix = self.prefix

        def encode(value: Any) -> bytes:
            out = bytearray(prefix)
            write(value, out)
            return bytes(out)

        return encode

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


_READERS: dict[type, Callable[[dict[str, Any]], Any]] = {}


def _write_long(out: bytearray, n: int) -> None:
    """Avro ``int``/``long``: zig-zag, then 7 bits per byte, low bits first."""
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


_LENGTH_AND_BYTES = (
    "if len({t}) < 64:\n    out.append(len({t}) << 1)\nelse:\n    _write_long(out, len({t}))\nout += {t}"
)
_PRIMITIVE_WRITES = {
    # One-byte varints (lengths and numbers from 0 to 63, the common case) are written inline, without a call.
    "string": "{t} = {v}.encode()\n" + _LENGTH_AND_BYTES,
    "bytes": "{t} = {v}\n" + _LENGTH_AND_BYTES,
    "long": "{t} = {v}\nif 0 <= {t} < 64:\n    out.append({t} << 1)\nelse:\n    _write_long(out, {t})",
    "boolean": "out.append(1 if {v} else 0)",
    "double": "out += _pack_double({v})",
    "float": "out += _pack_float({v})",
}
_PRIMITIVE_WRITES["int"] = _PRIMITIVE_WRITES["long"]


class _Writers:
    """Avro binary writers generated from one schema file and the dataclasses that its records map to.

    Each record gets a function that appends the fields of a dataclass instance to a ``bytearray`` in the
    schema's order: no intermediate dict, no per-field type dispatch. The schema decides the encoding; the
    dataclass field types decide which union branch a value takes and that an enum is written by its value.
    """

    def __init__(self, named: dict[str, Any]) -> None:
        self._named = named
        self._made: dict[tuple[str, type], str] = {}
        self._temps = 0
        self.namespace: dict[str, Any] = {
            "_write_long": _write_long,
            "_pack_double": struct.Struct("<d").pack,
            "_pack_float": struct.Struct("<f").pack,
        }

    def record(self, schema: dict[str, Any], cls: type) -> str:
        """The name of the function writing ``cls`` as record ``schema`` (made on first use)."""
        made = self._made.get((schema["name"], cls))
        if made is not None:
            return made
        name = f"_write_{cls.__name__}_{len(self._made)}"
        self._made[(schema["name"], cls)] = name  # before the fields: a record may contain itself
        hints = typing.get_type_hints(cls)
        lines = [f"def {name}(v, out):"]
        for field in schema["fields"]:
            if field["name"] not in hints:
                raise TypeError(f"{cls.__name__} has no field {field['name']!r} of Avro record {schema['name']}")
            lines += self._value(field["type"], hints[field["name"]], f"v.{field['name']}", "    ")
        if len(lines) == 1:
            lines.append("    pass")
        source = "\n".join(lines) + "\n"
        # The source is made here from the schema's field names and types.
        exec(compile(source, f"<avro writer of {schema['name']}>", "exec"), self.namespace)
        return name

    def _value(self, schema: Any, tp: Any, value: str, indent: str) -> list[str]:
        if isinstance(schema, str) and schema in self._named:
            schema = self._named[schema]
        if isinstance(schema, list):
            return self._union(schema, tp, value, indent)
        if isinstance(schema, dict):
            kind = schema["type"]
            if kind == "record":
                return [f"{indent}{self.record(schema, tp)}({value}, out)"]
            if kind == "array":
                return self._array(schema, tp, value, indent)
            if isinstance(kind, str) and kind in _PRIMITIVE_WRITES:
                return self._value(kind, tp, value, indent)  # a primitive with attributes (e.g. a logical type)
            raise TypeError(f"no Avro writer for {kind!r}")
        if schema == "null":
            return []
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            value = f"{value}.value"
        code = _PRIMITIVE_WRITES[schema].format(v=value, t=self._temp())
        return [indent + line for line in code.split("\n")]

    def _temp(self) -> str:
        self._temps += 1
        return f"x{self._temps}"

    def _array(self, schema: dict[str, Any], tp: Any, value: str, indent: str) -> list[str]:
        items, item = self._temp(), self._temp()
        return [
            f"{indent}{items} = {value}",
            f"{indent}if {items}:",
            f"{indent}    _write_long(out, len({items}))",
            f"{indent}    for {item} in {items}:",
            *self._value(schema["items"], typing.get_args(tp)[0], item, indent + "        "),
            f"{indent}out.append(0)",
        ]

    def _union(self, schema: list[Any], tp: Any, value: str, indent: str) -> list[str]:
        if len(schema) >= 64:
            raise TypeError("unions of 64 branches or more are not supported")
        branches = [self._named.get(b, b) if isinstance(b, str) else b for b in schema]
        members = [m for m in (_union_args(tp) or (tp,)) if m is not type(None)]
        temp = self._temp()
        lines = [f"{indent}{temp} = {value}"]
        inner = indent
        if "null" in branches:
            lines += [
                f"{indent}if {temp} is None:",
                f"{indent}    out.append({2 * branches.index('null')})",
                f"{indent}else:",
            ]
            inner = indent + "    "
        others = [(i, b) for i, b in enumerate(branches) if b != "null"]
        if len(others) == 1 and len(members) == 1:
            index, branch = others[0]
            return [*lines, f"{inner}out.append({2 * index})", *self._value(branch, members[0], temp, inner)]
        # Several records: the value's class names its branch.
        by_name = {f"steady.{m.__name__}": m for m in members if isinstance(m, type) and dataclasses.is_dataclass(m)}
        table: dict[type, tuple[int, Callable[..., None]]] = {}
        for index, branch in others:
            if not isinstance(branch, dict) or branch.get("type") != "record" or branch["name"] not in by_name:
                raise TypeError(f"no dataclass for union branch {branch!r} of {tp}")
            cls = by_name[branch["name"]]
            table[cls] = (2 * index, self.namespace[self.record(branch, cls)])
        table_name = f"_union_{self._temp()}"
        self.namespace[table_name] = table
        return [
            *lines,
            f"{inner}index, write = {table_name}[type({temp})]",
            f"{inner}out.append(index)",
            f"{inner}write({temp}, out)",
        ]


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
