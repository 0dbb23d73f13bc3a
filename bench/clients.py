"""Baseline clients for P2, P7 and P8, each run as its own process.

    python -m bench.clients MODE JOBFILE BASE_URL CONCURRENCY

JOBFILE is the JSONL job the batchgen side runs (``{"id", "prompt"}`` lines);
every client sends the same requests, ``model: qwen-plus``, one user message.

MODE
  bare    aiohttp, streamed, reads the body's bytes and discards them: the
          limit of a streaming client in Python (no parsing, nothing saved)
  whole   aiohttp, not streamed: one JSON body per answer, parsed, content kept
  sdk     the seed's loop: ``async for chunk in await create(stream=True)``,
          which builds a pydantic object per chunk
  sdkpath the request path batchgen had before it owned its transport: the
          openai SDK's client on its aiohttp transport, ``client.post`` with the
          raw-response switch, the body's bytes read (``aiter_raw``) and
          discarded — the baseline that shows what owning the transport bought
  ownpath batchgen's request path and nothing else: its own transport
          (``batchgen.wire.transport.Transport``), the body's bytes read and
          discarded. No job file, store, journal, parsing or retries: what
          batchgen would cost if its own work were free, so batchgen / ownpath
          is batchgen's own share and ownpath / bare the transport's
  sdkwhole  the SDK not streamed: ``await create()`` (what most scripts do)

Each client uses uvloop when installed, as batchgen does, so the comparison
is of the clients and not of their event loops. It prints one JSON line,
``{"requests": n, "bytes": b}``; its parent measures wall and CPU (wait4),
start-up included.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any


def prompts(jobfile: Path) -> list[str]:
    with jobfile.open(encoding="utf-8") as fh:
        return [json.loads(line)["prompt"] for line in fh if line.strip()]


def body(prompt: str, stream: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"model": "qwen-plus",
                           "messages": [{"role": "user", "content": prompt}]}
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


async def aiohttp_client(todo: list[str], base_url: str, concurrency: int, stream: bool
                         ) -> tuple[int, int]:
    import aiohttp

    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": "Bearer bench-key"}
    got = 0
    done = 0
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(prompt: str) -> None:
            nonlocal got, done
            async with sem, session.post(url, json=body(prompt, stream),
                                         headers=headers) as resp:
                resp.raise_for_status()
                if stream:
                    async for data in resp.content.iter_any():
                        got += len(data)
                else:
                    answer = json.loads(await resp.read())
                    got += len(answer["choices"][0]["message"]["content"])
                done += 1

        await asyncio.gather(*(one(p) for p in todo))
    return done, got


async def sdk_client(todo: list[str], base_url: str, concurrency: int, stream: bool
                     ) -> tuple[int, int]:
    import openai

    # connect may wait on a loaded machine (512 connections at once): not a failure here
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench-key", max_retries=0,
                                timeout=openai.Timeout(600.0, connect=120.0))
    sem = asyncio.Semaphore(concurrency)
    got = 0
    done = 0

    async def one(prompt: str) -> None:
        nonlocal got, done
        async with sem:
            if stream:
                chunks = await client.chat.completions.create(**body(prompt, True))
                parts = []
                async for chunk in chunks:
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
                got += len("".join(parts))
            else:
                answer = await client.chat.completions.create(**body(prompt, False))
                got += len(answer.choices[0].message.content or "")
            done += 1

    await asyncio.gather(*(one(p) for p in todo))
    await client.close()
    return done, got


async def sdkpath_client(todo: list[str], base_url: str, concurrency: int, stream: bool
                         ) -> tuple[int, int]:
    import openai

    timeout = openai.Timeout(connect=120.0, read=600.0, write=60.0, pool=None)
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="bench-key", max_retries=0, timeout=timeout,
        http_client=openai.DefaultAioHttpClient(timeout=timeout, follow_redirects=False))
    headers = {"X-Stainless-Raw-Response": "stream", "Accept-Encoding": "identity"}
    sem = asyncio.Semaphore(concurrency)
    got = 0
    done = 0

    async def one(prompt: str) -> None:
        nonlocal got, done
        async with sem:
            response: Any = await client.post(
                "/chat/completions", cast_to=object, body=body(prompt, True),
                options={"headers": headers})
            http = response.http_response
            try:
                async for data in http.aiter_raw():
                    got += len(data)
            finally:
                await http.aclose()
            done += 1

    await asyncio.gather(*(one(p) for p in todo))
    await client.close()
    return done, got


async def ownpath_client(todo: list[str], base_url: str, concurrency: int, stream: bool
                         ) -> tuple[int, int]:
    from batchgen.wire.stream import make_client, wire_body

    client = make_client(base_url, "bench-key", connect_timeout=120.0,
                         max_connections=concurrency)
    sem = asyncio.Semaphore(concurrency)
    got = 0
    done = 0

    async def one(prompt: str) -> None:
        nonlocal got, done
        async with sem:
            response = await client.stream(wire_body(body(prompt, False)))
            try:
                while data := await response.read():
                    got += len(data)
            finally:
                response.close()
            done += 1

    await asyncio.gather(*(one(p) for p in todo))
    await client.close()
    return done, got


def main() -> None:
    mode, jobfile, base_url, concurrency = sys.argv[1:5]
    todo = prompts(Path(jobfile))
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    floor = mode == "ownpath"
    if floor:  # as batchgen's entry point: fewer GC passes, no interpreter teardown
        import gc

        from batchgen.cli import GC_THRESHOLDS

        gc.set_threshold(*GC_THRESHOLDS)
    client = {"bare": (aiohttp_client, True), "whole": (aiohttp_client, False),
              "sdk": (sdk_client, True), "sdkwhole": (sdk_client, False),
              "sdkpath": (sdkpath_client, True), "ownpath": (ownpath_client, True)}[mode]
    done, got = runner(client[0](todo, base_url, int(concurrency), client[1]))
    print(json.dumps({"requests": done, "bytes": got}), flush=True)
    if floor:
        os._exit(0)


if __name__ == "__main__":
    main()
