"""P1: client CPU per streamed chunk, journaled, against the plain SDK loop.

Baseline (same run, same server): the usual way to consume a stream,
``async for chunk in await client.chat.completions.create(..., stream=True)``,
which builds a pydantic object per chunk and writes nothing to disk.
batchgen: a full ``run_job`` of the same requests — raw SSE parsing, SQLite
journaling, fsynced texts/, results.jsonl — measured as process CPU time.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from bench.common import CPU, KEY_ENV, fake_server, row, write_jsonl


async def _plain_loop(base_url: str, n: int, concurrency: int) -> int:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    sem = asyncio.Semaphore(concurrency)
    chunks = 0

    async def one(i: int, tokens: int) -> None:
        nonlocal chunks
        async with sem:
            stream = await client.chat.completions.create(
                model="qwen-plus", stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": f"[[len={tokens}]] request {i}"}])
            text = []
            async for chunk in stream:
                chunks += 1
                if chunk.choices and chunk.choices[0].delta.content:
                    text.append(chunk.choices[0].delta.content)

    await asyncio.gather(*(one(i, TOKENS) for i in range(n)))
    await client.close()
    return chunks


TOKENS = 200


def run(quick: bool) -> list[str]:
    import openai  # noqa: F401 - imported before timing, as both sides need it

    from batchgen import load_job, run_job
    from batchgen.engine.runner import RunOptions
    from batchgen.jobs.load import Overrides

    n = 100 if quick else 200  # the run's fixed costs (store, reports) over enough chunks
    concurrency = 16
    with fake_server() as server, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_plain_loop(server.base_url, 4, 4))  # warm up the server and the SDK
        s0 = server.cpu()
        with CPU() as base:
            chunks = asyncio.run(_plain_loop(server.base_url, n, concurrency))
        s1 = server.cpu()
        jobfile = write_jsonl(Path(tmp) / "p1.jsonl", n, TOKENS)
        job = load_job(jobfile, Overrides(model="qwen-plus", base_url=server.base_url,
                                          api_key_env=KEY_ENV, out=tmp,
                                          concurrency=concurrency))
        with CPU() as ours:
            summary = run_job(job, RunOptions())
        s2 = server.cpu()
        assert summary.done == n, summary
    base_us = base.cpu / chunks * 1e6
    ours_us = ours.cpu / chunks * 1e6
    ratio = ours_us / base_us
    return [
        row("P1 client CPU per chunk (journaled) vs plain SDK loop",
            f"{ours_us:.1f} µs vs {base_us:.1f} µs = **{ratio:.2f}×** "
            f"({n} requests × {TOKENS + 3} chunks)", "≤ 0.3×", ratio <= 0.3),
        row("P1 chunks/s one core sustains (batchgen, journaled)",
            f"{chunks / ours.cpu:,.0f}", "report", None),
        row("P1 fake server CPU share",
            f"{(s1 - s0) / base.wall:.0%} of a core during baseline, "
            f"{(s2 - s1) / ours.wall:.0%} during batchgen", "not the bottleneck", None),
    ]
