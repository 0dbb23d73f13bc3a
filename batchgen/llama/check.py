"""``batchgen local check``: start the embedded llama-server for real, stream one
tiny request through batchgen's own streaming path, stop it, and report every
step (which start served, after which crash) — never raising."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from batchgen.llama.server import INSTALL_HINT, Found, LocalServer, check, model_name

CHECK_TIMEOUT = 60.0  # s for the one tiny streamed request


@dataclass
class SelfTest:
    """What ``batchgen local check`` found, step by step."""

    found: Found
    started_in: float | None = None
    start_flags: tuple[str, ...] = ()
    crashes: tuple[int, ...] = ()
    reply: str = ""
    chunks: int = 0
    streamed_in: float | None = None
    error: str | None = None
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and self.streamed_in is not None


async def self_test(model_path: str | None = None, server_args: Sequence[str] = ()) -> SelfTest:
    """Start the server for real, stream one tiny request through batchgen's own
    streaming path, stop it. Every failure lands in ``error``, never raised."""
    from batchgen.wire.stream import StreamResult, make_client, stream_attempt

    report = SelfTest(found=check(model_path))
    if report.found.server is None or report.found.model is None:
        missing = "llama-server" if report.found.server is None else "the model"
        report.error = f"{missing} not found; {INSTALL_HINT}"
        return report
    with tempfile.TemporaryDirectory(prefix="batchgen-local-check-") as tmp:
        server = LocalServer(Path(tmp), model_path=model_path, concurrency=1,
                             server_args=server_args)
        t0 = time.monotonic()
        try:
            async with server as base_url:
                report.started_in = time.monotonic() - t0
                report.start_flags = server.start_flags
                report.crashes = tuple(server.crashes)
                client = make_client(base_url, "no-key", connect_timeout=10, max_connections=1)
                pieces: list[str] = []
                result = StreamResult()
                t1 = time.monotonic()
                try:
                    await asyncio.wait_for(stream_attempt(
                        client, {"model": model_name(model_path), "max_tokens": 8,
                                 "temperature": 0,
                                 "messages": [{"role": "user", "content": "Say hello."}]},
                        lambda content, _reasoning: pieces.append(content), result,
                        redact=lambda text: text), CHECK_TIMEOUT)
                finally:
                    await client.close()
                report.streamed_in = time.monotonic() - t1
                report.reply, report.chunks = "".join(pieces), result.chunks
        except Exception as exc:  # a check reports every failure; it never crashes
            report.error = str(exc) or type(exc).__name__
            log_path = server.log_path
            with contextlib.suppress(OSError):
                report.log_tail = "\n".join(
                    log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
    return report
