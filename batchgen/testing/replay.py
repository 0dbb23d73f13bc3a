"""Recorded provider streams (``../shared/replay``), served byte for byte.

Each case is ``streams/<case>.sse`` (the body a provider sent) and
``streams/<case>.json`` (where it comes from, and what the openai SDK reads
from those bytes). The fake server plays a case for a prompt holding
``[[replay=<case>]]``, split into writes as the sidecar's ``fragments`` say:
``bytes`` (one byte a write), ``fixed`` (``size`` bytes), ``whole`` (one
write), ``random`` (1-97 bytes, seeded by the case); the default is one write
per line, as servers flush.

The recordings are third-party data: they are read from ``../shared`` at test
time (beside the checkout, or beside the local repository it was cloned
from) and never copied into this project.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository: batchgen/testing/replay.py


def _local_origin() -> Path | None:
    """The repository this checkout was cloned from, when that is a local path."""
    try:
        url = subprocess.run(["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
                             capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    url = url.strip().removeprefix("file://")
    if not url.startswith("/"):
        return None  # a remote (https://, git@host:...) or nothing
    return Path(url)


def _replay_dir() -> Path:
    """``BATCHGEN_REPLAY_DIR``, else ``../shared/replay``; a clean clone of a
    local checkout (CI's ``git clone . $d/p``) finds it beside its origin."""
    given = os.environ.get("BATCHGEN_REPLAY_DIR")
    if given:
        return Path(given)
    beside = ROOT.parent / "shared" / "replay"
    origin = None if beside.is_dir() else _local_origin()
    if origin is not None and (origin.parent / "shared" / "replay").is_dir():
        return origin.parent / "shared" / "replay"
    return beside


REPLAY_DIR = _replay_dir()


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
