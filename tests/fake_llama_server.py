"""Stands in for ``llama-server`` where a test needs one that misbehaves.

``FAKE_LLAMA_CRASH`` says how it starts: ``never`` (serve the fake API on
``--port``), ``unsafe`` (die from SIGILL unless started with ``--no-repack``,
as llama.cpp's AMX kernels do on a VM that hides AMX), ``always``. Every start
appends its arguments to ``FAKE_LLAMA_ARGV`` (a file), one JSON line each.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakeserver import FakeServer


def main() -> None:
    argv = sys.argv[1:]
    record = os.environ.get("FAKE_LLAMA_ARGV")
    if record:
        with open(record, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(argv) + "\n")
    mode = os.environ.get("FAKE_LLAMA_CRASH", "never")
    if mode == "always" or (mode == "unsafe" and "--no-repack" not in argv):
        os.kill(os.getpid(), signal.SIGILL)
    port = int(argv[argv.index("--port") + 1])

    async def serve() -> None:
        await FakeServer().start(port=port)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
