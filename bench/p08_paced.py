"""P8: client CPU on paced streams, as real models send them.

Long answers whose tokens arrive 10–20 ms apart (each stream its own pace, so
arrivals spread over time as they do from a real server), a few hundred
streams at once. Every client runs as its own process over the same answers
and is measured from outside (CPU = user + system, start-up included):

- bare: aiohttp, streamed, reads and discards the bytes (the limit);
- batchgen run: parsed, journaled, written, reported;
- whole: aiohttp without streaming, one JSON body per answer;
- sdkwhole: the openai SDK without streaming (what most scripts do);
- sdk: the seed's SDK loop (full mode only).

The non-streamed clients wait for whole answers; a server that cuts a long
answer at its timeout gives them nothing (issue 17), which is why batchgen
streams. µs per chunk is the CPU over the answers' chunks.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench.common import Measured, batchgen, client, fake_server, row


def write_job(path: Path, n: int, tokens: int) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            delay = 0.010 + (i * 7 % 11) / 1000  # 10–20 ms
            fh.write(json.dumps({"id": f"r{i}",
                                 "prompt": f"[[len={tokens}]][[delay={delay:.3f}]] answer {i}"})
                     + "\n")
    return path


def run(quick: bool) -> list[str]:
    n, tokens, streams = (60, 100, 60) if quick else (200, 1000, 200)
    chunks = n * (tokens + 3)  # role, tokens, finish, usage
    results: dict[str, Measured] = {}
    with fake_server() as server, tempfile.TemporaryDirectory() as tmp:
        job = write_job(Path(tmp) / "p8.jsonl", n, tokens)
        s0 = server.cpu()
        results["bare"] = client("bare", job, server.base_url, streams)
        s1 = server.cpu()
        done = batchgen(job, server.base_url, f"{tmp}/out", streams)
        assert done.code == 0, f"batchgen exited {done.code}"
        results["batchgen"] = done
        results["whole"] = client("whole", job, server.base_url, streams)
        results["sdkwhole"] = client("sdkwhole", job, server.base_url, streams)
        if not quick:
            results["sdk"] = client("sdk", job, server.base_url, streams)
    bare, ours = results["bare"].cpu, results["batchgen"].cpu
    best_whole = min(results["whole"].cpu, results["sdkwhole"].cpu)
    names = {"bare": "bare streaming aiohttp", "batchgen": "batchgen",
             "whole": "aiohttp not streamed", "sdkwhole": "SDK not streamed",
             "sdk": "SDK loop streamed"}
    figures = "; ".join(f"{names[k]} {m.cpu:.2f} s ({m.cpu / chunks * 1e6:.0f} µs/chunk)"
                        for k, m in results.items())
    shape = f"{n} answers × {tokens} tokens, 10–20 ms apart, {streams} streams"
    return [
        row(f"P8 client CPU, {shape}", f"batchgen **{ours / bare:.2f}×** the bare streaming "
            f"client; {figures}", "≤ 1.3× bare", ours <= 1.3 * bare if not quick else None),
        row("P8 batchgen vs the non-streamed SDK client",
            f"**{ours / results['sdkwhole'].cpu:.2f}×** (aiohttp not streamed: "
            f"{ours / results['whole'].cpu:.2f}×; best non-streamed {best_whole:.2f} s)",
            "≤ 1× the SDK not streamed",
            ours <= results["sdkwhole"].cpu if not quick else None),
        row("P8 fake server CPU during the bare client",
            f"{(s1 - s0) / results['bare'].wall:.0%} of a core", "not the bottleneck", None),
    ]
