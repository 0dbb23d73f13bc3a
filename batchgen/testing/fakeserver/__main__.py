"""``python -m batchgen.testing.fakeserver --port 0`` prints ``PORT <n>`` and serves."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from batchgen.testing.fakeserver import Config, FakeServer


def main() -> None:
    parser = argparse.ArgumentParser(description="the fake OpenAI-compatible API")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--tick", type=float, default=None)
    parser.add_argument("--len", dest="default_len", type=int, default=None)
    parser.add_argument("--rpm", type=float, default=None)
    parser.add_argument("--tpm", type=float, default=None)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    server = FakeServer(Config(delay=args.tick or args.delay, api_key=args.api_key, rpm=args.rpm,
                               tpm=args.tpm, default_len=args.default_len, tick=args.tick))

    async def serve() -> None:
        port = await server.start(port=args.port)
        print(f"PORT {port}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
