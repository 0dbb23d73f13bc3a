"""Recorded provider streams (``../shared/replay``), served byte for byte.

Each case is ``streams/<case>.sse`` (the body a provider sent) and
``streams/<case>.json`` (where it comes from, and what the openai SDK reads
from those bytes). The fake server plays a case for a prompt holding
``[[replay=<case>]]``, split into writes as the sidecar's ``fragments`` say:
``bytes`` (one byte a write), ``fixed`` (``size`` bytes), ``whole`` (one
write), ``random`` (1-97 bytes, seeded by the case); the default is one write
per line, as servers flush.

The recordings are third-party data: they are read from ``../shared`` at test
time and never copied into this project.
"""

from __future__ import annotations

import json
import os
import random
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPLAY_DIR = Path(os.environ.get("BATCHGEN_REPLAY_DIR", ROOT.parent / "shared" / "replay"))


def cases() -> list[str]:
    return sorted(p.stem for p in (REPLAY_DIR / "streams").glob("*.json"))


@cache
def sidecar(case: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REPLAY_DIR / "streams" / f"{case}.json").read_text())
    return data


@cache
def body(case: str) -> bytes:
    return (REPLAY_DIR / "streams" / f"{case}.sse").read_bytes()


def fragments(case: str) -> list[bytes]:
    """The body of ``case`` cut into the writes its sidecar asks for."""
    data = body(case)
    spec = sidecar(case).get("fragments") or {}
    mode = spec.get("mode")
    if mode == "whole":
        return [data]
    if mode == "bytes":
        return [data[i:i + 1] for i in range(len(data))]
    if mode == "fixed":
        size = int(spec["size"])
        return [data[i:i + size] for i in range(0, len(data), size)]
    if mode == "random":
        rng = random.Random(case)
        out, i = [], 0
        while i < len(data):
            n = rng.randint(1, 97)
            out.append(data[i:i + n])
            i += n
        return out
    return data.splitlines(keepends=True)
