"""JSON as the standard library writes and reads it, at orjson's speed where
the two agree.

A request's fingerprint is the SHA-256 of its canonical JSON (``json.dumps``
with sorted keys, no spaces, non-ASCII as is), and every run so far has
stored its fingerprints: those bytes must never change. orjson writes the
very same bytes for plain values — strings, ints of 64 bits, floats that
Python writes without an exponent (0 and 1e-4 ≤ |x| < 1e16) — about ten
times faster; anything else is written by the standard library, as before.

Reading a JSONL line is the same bargain: orjson reads what it accepts as
``json.loads`` does, except integers beyond 64 bits, which it turns into
floats. A line with such a number, or one orjson refuses (``NaN``, a lone
surrogate, a byte-order mark, a syntax error), is read by the json module,
which also words the error.

This is the one module that imports orjson.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["canonical", "fast_loads", "loads"]

# orjson's reader as is, for the stream's chunks (batchgen.wire.chunks), which
# take a careful path of their own for whatever it refuses (a ValueError)
fast_loads = orjson.loads

_INT = 2**63  # orjson writes ints of 64 bits
_WIDE = 2.0**63  # a float this large may be an int orjson widened
_DEPTH = 100  # deeper than any request body; the standard library takes it

_dumps = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode


def canonical(obj: Any) -> str:
    """``json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))``."""
    if _plain(obj, 0):
        try:
            return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONEncodeError:
            pass  # a lone surrogate: the standard library's result (or error) stands
    return _dumps(obj)


def _plain(obj: Any, depth: int) -> bool:
    """Whether orjson writes ``obj`` byte for byte as the standard library does."""
    kind = type(obj)
    if kind is str or kind is bool or obj is None:
        return True
    if kind is int:
        return bool(-_INT <= obj < _INT)
    if kind is float:
        # Python's repr has no exponent here, and orjson's neither; NaN and
        # the infinities fail both tests
        return bool(obj == 0.0 or 1e-4 <= abs(obj) < 1e16)
    if depth > _DEPTH:
        return False
    # strings, the most common value, are taken in the loops without a call
    if kind is dict:
        for key, value in obj.items():
            if type(key) is not str:
                return False
            if type(value) is not str and not _plain(value, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        for value in obj:  # noqa: SIM110 (a loop: a third of a generator's cost here)
            if type(value) is not str and not _plain(value, depth + 1):
                return False
        return True
    return False


def dumps(obj: Any) -> bytes:
    """``obj`` as compact JSON bytes for the wire (a request's body): orjson's,
    or the standard library's where orjson cannot write a value (an integer
    beyond 64 bits)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def loads(raw: bytes) -> Any:
    """``json.loads(raw)``: the same value, or the same exception."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)
    if _widened(obj, 0):
        return json.loads(raw)
    return obj


def _widened(obj: Any, depth: int) -> bool:
    """Whether ``obj`` holds a float that may be an integer orjson widened."""
    kind = type(obj)
    if kind is float:
        return bool(abs(obj) >= _WIDE)
    if depth > _DEPTH:
        return True
    if kind is dict:
        obj = obj.values()
    elif kind is not list:
        return False
    for value in obj:  # noqa: SIM110 (as in _plain)
        if _widened(value, depth + 1):
            return True
    return False
