"""The process's memory: freed file buffers returned to the system, and what
start-up built kept out of the garbage collector's way."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
from collections.abc import Iterator
from typing import Any

TRIM_EVERY = 8  # requests sent with files between returns of freed memory to the system


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim_heap() -> None:
    """Give the system back the memory freed since the last time (glibc's
    ``malloc_trim``). A request's files come and go as base64 strings of
    hundreds of KB, which glibc keeps in its heap once freed: without this a
    job of 1,000 images of 200 KB peaked 1.30x a job of text prompts, with
    it 1.10x (bench P17, concurrency 8)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Everything imported and built so far lives for the whole run: freeze it,
    so the collector stops re-scanning it. Without this, a full collection of
    the imported libraries' objects stalled the event loop ~0.1 s every few seconds, which at
    512 streams delayed every stream (bench P2). The little garbage start-up
    left (~700 objects) is frozen with it rather than collected first: that
    full collection took ~40 ms before the first request."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
