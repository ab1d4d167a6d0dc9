"""Step functions for unit tests (module-level so they have an import path)."""

from __future__ import annotations


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return x * 2


def name_of(x: int) -> str:
    return f"n{x}"
