"""Stands in for ``llama-server`` where a test needs one that misbehaves.

``FAKE_LLAMA_CRASH`` says how it starts: ``never`` (serve the fake API on
``--port``), ``unsafe`` (die from SIGILL unless started with ``--no-repack``,
as llama.cpp's AMX kernels do on a VM that hides AMX), ``always``. Every start
appends its arguments to ``FAKE_LLAMA_ARGV`` (a file), one JSON line each.

Like the real binary, it prints its flags for ``--help`` (one a line, in
llama.cpp's layout) and refuses a flag it does not know with exit 1.
``FAKE_LLAMA_FLAGS`` (``;`` between flags, ``,`` between a flag's names)
replaces the flags it knows, to stand in for another llama.cpp release;
``FAKE_LLAMA_HELP=crash`` makes ``--help`` die from SIGILL too.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from batchgen.testing.fakeserver import FakeServer

KNOWN = ("-h,--help", "-m,--model", "--host", "--port", "-np,--parallel", "-c,--ctx-size",
         "--no-repack", "--no-mmap")


def known_flags() -> list[list[str]]:
    given = os.environ.get("FAKE_LLAMA_FLAGS")
    entries = given.split(";") if given else KNOWN
    return [entry.split(",") for entry in entries]


def main() -> None:
    argv = sys.argv[1:]
    flags = known_flags()
    if "--help" in argv:
        if os.environ.get("FAKE_LLAMA_HELP") == "crash":
            os.kill(os.getpid(), signal.SIGILL)
        for names in flags:
            print(f"{', '.join(names):<40} what it does (default: none)")
        return
    accepted = {name for names in flags for name in names}
    for arg in argv:
        if arg.startswith("-") and arg.split("=")[0] not in accepted:
            print(f"error: invalid argument: {arg}", file=sys.stderr)
            sys.exit(1)
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
