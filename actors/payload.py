"""User payloads (workflow inputs and results, step arguments and results) as bytes with a content type.

Values are pydantic models or JSON values; they travel as JSON produced by pydantic, so a payload written by
one version of a model can be read by another, and by any language.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import to_json

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Payload:
    """Serialized user data.

    Attributes:
        content_type: how ``data`` is encoded; ``application/json`` by default.
        data: the encoded bytes.
    """

    content_type: str
    data: bytes

    def __len__(self) -> int:
        return len(self.data)


def encode(value: object) -> Payload:
    """Encode a pydantic model or JSON value as a JSON payload."""
    return Payload(JSON, to_json(value))


@lru_cache(maxsize=512)
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def decode(payload: Payload, annotation: Any = Any) -> Any:
    """Decode a payload into ``annotation`` (a pydantic model, a typed container, or ``Any`` for plain JSON)."""
    if payload.content_type != JSON:
        raise ValueError(f"cannot decode payload of content type {payload.content_type!r}")
    if annotation is Any or annotation is object:
        return json.loads(payload.data) if payload.data else None
    return _adapter(annotation).validate_json(payload.data)


def to_text(payload: Payload) -> str:
    """A payload as text for people (JSON as it is)."""
    if payload.content_type != JSON:
        raise ValueError(f"payload of content type {payload.content_type!r} is not text")
    return payload.data.decode()
