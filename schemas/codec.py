"""Reading and writing Steady's Avro records.

Every record value is written in Avro's single-object encoding: the marker ``C3 01``, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer's schema (parsing canonical form), then the Avro binary
body. Any Avro library can read it with the ``*.avsc`` files of this folder. Each record also carries a Kafka
header ``steady.schema`` with the schema's full name, so consumers can route without decoding.

A dataclass maps to the Avro record of the same (unqualified) name in the ``steady`` namespace, field by
field; a field typed as a union of dataclasses maps to an Avro union of records. :meth:`Codec.writer` and
:meth:`Codec.reader` generate the Avro binary writer and reader of a dataclass from the schema (no intermediate
dicts); :meth:`Codec.decode` reads any record of the schema with fastavro, into dicts.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import io
import struct
import types
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

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

    def reader(self, cls: type[T]) -> Callable[[bytes], T]:
        """A function reading this schema's single-object encoding into a ``cls`` (raises :class:`CodecError`)."""
        readers = _Readers(self._parsed.get("__named_schemas", {}))
        read = readers.namespace[readers.record(self._parsed, cls)]

        def decode(data: bytes) -> T:
            self._check_header(data)
            try:
                value, _ = read(data, 10)
            except (IndexError, ValueError, KeyError, TypeError, struct.error) as exc:
                raise CodecError(f"bad {self.full_name} body: {type(exc).__name__}: {exc}") from exc
            return value  # type: ignore[no-any-return]

        return decode

    def _check_header(self, data: bytes) -> None:
        if data[:2] != _MARKER:
            raise CodecError("not an Avro single-object encoding (missing C3 01 marker)")
        if data[2:10] != self.fingerprint:
            raise CodecError(f"written with another schema than {self.full_name} (fingerprint {data[2:10].hex()})")

    def decode(self, data: bytes) -> dict[str, Any]:
        """The record in ``data`` as fastavro reads it; raises :class:`CodecError` if it is not this schema's."""
        self._check_header(data)
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


_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")


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


class _Generated(abc.ABC):
    """What the generated writers and readers of one schema file share.

    Its named types, the functions made so far (one per record and dataclass) and the namespace they live in.
    """

    def __init__(self, named: dict[str, Any], helpers: dict[str, Any]) -> None:
        self._named = named
        self._made: dict[tuple[str, type], str] = {}
        self._temps = 0
        self.namespace: dict[str, Any] = dict(helpers)

    def _resolve(self, schema: Any) -> Any:
        """A named type's definition; any other schema as it is."""
        return self._named.get(schema, schema) if isinstance(schema, str) else schema

    def _temp(self) -> str:
        self._temps += 1
        return f"x{self._temps}"

    def _fields(self, schema: dict[str, Any], cls: type) -> list[tuple[str, Any, Any]]:
        """(name, Avro type, Python type) of each field of record ``schema``, which ``cls`` must all have."""
        hints = typing.get_type_hints(cls)
        for field in schema["fields"]:
            if field["name"] not in hints:
                raise TypeError(f"{cls.__name__} has no field {field['name']!r} of Avro record {schema['name']}")
        return [(f["name"], f["type"], hints[f["name"]]) for f in schema["fields"]]

    def _define(self, lines: list[str], label: str) -> None:
        # The source is made by this module from the schema's field names and types.
        exec(compile("\n".join(lines) + "\n", f"<avro {label}>", "exec"), self.namespace)

    KIND: ClassVar[str] = ""
    """``write`` or ``read``: names the generated functions."""
    PRIMITIVES: ClassVar[dict[str, str]] = {}
    """Source templates per Avro primitive type."""

    def record(self, schema: dict[str, Any], cls: type) -> str:
        """The name of the function for ``cls`` as record ``schema`` (made on first use)."""
        made = self._made.get((schema["name"], cls))
        if made is None:
            made = self._made[(schema["name"], cls)] = f"_{self.KIND}_{cls.__name__}_{len(self._made)}"
            # Named before its fields are made: a record may contain itself.
            self._define(self._record_lines(made, schema, cls), f"{self.KIND}r of {schema['name']}")
        return made

    def _value(self, schema: Any, tp: Any, value: str, indent: str) -> list[str]:
        """Lines for a value of ``schema`` (Python type ``tp``) in variable or expression ``value``."""
        schema = self._resolve(schema)
        if isinstance(schema, list):
            return self._union(schema, tp, value, indent)
        if isinstance(schema, dict):
            kind = schema["type"]
            if kind == "record":
                return [indent + self._record_call(self.record(schema, tp), value)]
            if kind == "array":
                return self._array(schema, typing.get_args(tp)[0], value, indent, tuple_=typing.get_origin(tp) is tuple)
            if isinstance(kind, str) and kind in self.PRIMITIVES:
                return self._value(kind, tp, value, indent)  # a primitive with attributes (e.g. a logical type)
            raise TypeError(f"no Avro {self.KIND}r for {kind!r}")
        return self._primitive(schema, tp, value, indent)

    def _branches(self, schema: list[Any], tp: Any) -> tuple[list[Any], list[Any], dict[str, type]]:
        """A union's branches (named types resolved), the Python type's members and its dataclasses by record name."""
        branches = [self._resolve(b) for b in schema]
        members = [m for m in (_union_args(tp) or (tp,)) if m is not type(None)]
        by_name = {f"steady.{m.__name__}": m for m in members if isinstance(m, type) and dataclasses.is_dataclass(m)}
        return branches, members, by_name

    @abc.abstractmethod
    def _record_lines(self, name: str, schema: dict[str, Any], cls: type) -> list[str]: ...

    @abc.abstractmethod
    def _record_call(self, name: str, value: str) -> str: ...

    @abc.abstractmethod
    def _primitive(self, schema: str, tp: Any, value: str, indent: str) -> list[str]: ...

    @abc.abstractmethod
    def _array(self, schema: dict[str, Any], item: Any, value: str, indent: str, *, tuple_: bool) -> list[str]: ...

    @abc.abstractmethod
    def _union(self, schema: list[Any], tp: Any, value: str, indent: str) -> list[str]: ...


class _Writers(_Generated):
    """Avro binary writers generated from one schema file and the dataclasses that its records map to.

    Each record gets a function that appends the fields of a dataclass instance to a ``bytearray`` in the
    schema's order: no intermediate dict, no per-field type dispatch. The schema decides the encoding; the
    dataclass field types decide which union branch a value takes and that an enum is written by its value.
    """

    def __init__(self, named: dict[str, Any]) -> None:
        helpers = {"_write_long": _write_long, "_pack_double": _DOUBLE.pack, "_pack_float": _FLOAT.pack}
        super().__init__(named, helpers)

    KIND = "write"
    PRIMITIVES = _PRIMITIVE_WRITES

    def _record_lines(self, name: str, schema: dict[str, Any], cls: type) -> list[str]:
        lines = [f"def {name}(v, out):"]
        for field, avro, tp in self._fields(schema, cls):
            lines += self._value(avro, tp, f"v.{field}", "    ")
        return lines if len(lines) > 1 else [*lines, "    pass"]

    def _record_call(self, name: str, value: str) -> str:
        return f"{name}({value}, out)"

    def _primitive(self, schema: str, tp: Any, value: str, indent: str) -> list[str]:
        if schema == "null":
            return []
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            value = f"{value}.value"
        code = _PRIMITIVE_WRITES[schema].format(v=value, t=self._temp())
        return [indent + line for line in code.split("\n")]

    def _array(self, schema: dict[str, Any], item: Any, value: str, indent: str, *, tuple_: bool) -> list[str]:
        items, each = self._temp(), self._temp()
        return [
            f"{indent}{items} = {value}",
            f"{indent}if {items}:",
            f"{indent}    _write_long(out, len({items}))",
            f"{indent}    for {each} in {items}:",
            *self._value(schema["items"], item, each, indent + "        "),
            f"{indent}out.append(0)",
        ]

    def _union(self, schema: list[Any], tp: Any, value: str, indent: str) -> list[str]:
        if len(schema) >= 64:
            raise TypeError("unions of 64 branches or more are not supported")
        branches, members, by_name = self._branches(schema, tp)
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


def _read_long(data: bytes, at: int) -> tuple[int, int]:
    """An Avro ``long`` at ``at``: its value and the position after it."""
    shift = n = 0
    while True:
        byte = data[at]
        at += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (n >> 1) ^ -(n & 1), at
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _read_block_size(data: bytes, at: int) -> tuple[int, int]:
    """An array block's item count (a negative count is followed by the block's size in bytes, skipped)."""
    count, at = _read_long(data, at)
    if count < 0:
        _, at = _read_long(data, at)
        count = -count
    return count, at


_LONG_READ = "c = b[p]\nif c < 0x80:\n    {t} = (c >> 1) ^ -(c & 1)\n    p += 1\nelse:\n    {t}, p = _read_long(b, p)"
_SIZED_READ = (
    _LONG_READ.replace("{t}", "n") + "\nif n < 0 or p + n > len(b):\n    raise ValueError('length beyond the end')\n"
)
_PRIMITIVE_READS = {
    "long": _LONG_READ,
    "int": _LONG_READ,
    "string": _SIZED_READ + "{t} = b[p : p + n].decode()\np += n",
    "bytes": _SIZED_READ + "{t} = b[p : p + n]\np += n",
    "boolean": "{t} = b[p] != 0\np += 1",
    "double": "({t},) = _unpack_double(b, p)\np += 8",
    "float": "({t},) = _unpack_float(b, p)\np += 4",
    "null": "{t} = None",
}


class _Readers(_Generated):
    """Avro binary readers generated from one schema file and the dataclasses that its records map to.

    Each record gets a function ``(bytes, position) -> (instance, position)`` that reads the fields in the
    schema's order and builds the dataclass: no intermediate dict. The bytes were written with this very schema
    (the single-object header names it), so no schema resolution is needed. Bad bytes raise ``IndexError``,
    ``ValueError``, ``KeyError`` or ``struct.error``, which :meth:`Codec.reader` turns into :class:`CodecError`.
    """

    def __init__(self, named: dict[str, Any]) -> None:
        helpers = {
            "_read_long": _read_long,
            "_read_block_size": _read_block_size,
            "_unpack_double": _DOUBLE.unpack_from,
            "_unpack_float": _FLOAT.unpack_from,
        }
        super().__init__(named, helpers)

    KIND = "read"
    PRIMITIVES = _PRIMITIVE_READS

    def _record_lines(self, name: str, schema: dict[str, Any], cls: type) -> list[str]:
        self.namespace[f"{name}_cls"] = cls
        lines = [f"def {name}(b, p):"]
        arguments = []
        for field, avro, tp in self._fields(schema, cls):
            temp = self._temp()
            lines += self._value(avro, tp, temp, "    ")
            arguments.append(f"{field}={temp}")
        return [*lines, f"    return {name}_cls({', '.join(arguments)}), p"]

    def _record_call(self, name: str, value: str) -> str:
        return f"{value}, p = {name}(b, p)"

    def _primitive(self, schema: str, tp: Any, value: str, indent: str) -> list[str]:
        lines = [indent + line for line in _PRIMITIVE_READS[schema].format(t=value).split("\n")]
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            self.namespace[f"_enum_{tp.__name__}"] = tp
            lines.append(f"{indent}{value} = _enum_{tp.__name__}({value})")
        return lines

    def _array(self, schema: dict[str, Any], item: Any, value: str, indent: str, *, tuple_: bool) -> list[str]:
        count, each = self._temp(), self._temp()
        return [
            f"{indent}{value} = []",
            f"{indent}while True:",
            f"{indent}    {count}, p = _read_block_size(b, p)",
            f"{indent}    if not {count}:",
            f"{indent}        break",
            f"{indent}    for _ in range({count}):",
            *self._value(schema["items"], item, each, indent + "        "),
            f"{indent}        {value}.append({each})",
            f"{indent}{value} = {'tuple' if tuple_ else 'list'}({value})",
        ]

    def _union(self, schema: list[Any], tp: Any, value: str, indent: str) -> list[str]:
        branches, members, by_name = self._branches(schema, tp)
        index = self._temp()
        lines = [*self._value("long", int, index, indent)]
        keyword = "if"
        for i, branch in enumerate(branches):
            if branch == "null":
                body = [f"{indent}    {value} = None"]
            elif isinstance(branch, dict) and branch.get("type") == "record":
                if branch["name"] not in by_name:
                    raise TypeError(f"no dataclass for union branch {branch['name']} of {tp}")
                body = self._value(branch, by_name[branch["name"]], value, indent + "    ")
            elif len(members) == 1:
                body = self._value(branch, members[0], value, indent + "    ")
            else:
                raise TypeError(f"no reader for union branch {branch!r} of {tp}")
            lines += [f"{indent}{keyword} {index} == {i}:", *body]
            keyword = "elif"
        lines += [f"{indent}else:", f"{indent}    raise ValueError(f'union branch {{{index}}} out of range')"]
        return lines
