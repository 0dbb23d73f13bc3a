"""P2: wall time of many short streams at 64 and 512 at once, against the limit.

The shape of issue 17: 1,024 requests of 75 chunks, 40 ms apart, from a fake
server (its own process) that sends one chunk per stream per tick of a shared
timer. Every client runs as its own process, start-up included; in full mode
batchgen and the bare client run three interleaved rounds and the row gives
the medians (a single round moved by ±2%, the size of the margin):

- the ideal: waves × chunks × 40 ms, what no client beats;
- the bare client (bench/clients.py ``bare``): aiohttp reading and discarding
  the bytes, the limit of this set-up (the fake server needs CPU too);
- ``batchgen run``: parsing, journaling, results, report;
- batchgen's own transport alone (bench/clients.py ``ownpath``): the same
  requests, the bytes discarded — what batchgen would take if its own work
  were free, so the row splits batchgen's distance to the bare client into
  the transport's share and its own;
- the SDK path alone (``sdkpath``): the request path batchgen had before it
  owned its transport (the openai SDK's ``client.post``), the baseline that
  shows what owning the transport bought;
- the seed's plain SDK loop (a pydantic object per chunk).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import Measured, batchgen, client, fake_server, row, tmpfs, write_jsonl

TICK = 0.04
CHUNKS = 75


def run(quick: bool) -> list[str]:
    shapes = ((64, 128, 20), (256, 256, 20)) if quick else ((64, 256, CHUNKS),
                                                          (512, 1024, CHUNKS))
    rows = []
    with fake_server("--tick", str(TICK)) as server, tempfile.TemporaryDirectory() as tmp:
        for concurrency, n, chunks in shapes:
            jobfile = write_jsonl(Path(tmp) / f"p2_{concurrency}.jsonl", n, chunks)
            ideal = -(-n // concurrency) * chunks * TICK
            # batchgen and the bare client in interleaved rounds (three in full
            # mode), each figure their median: one round moved by ±2% here
            bares: list[Measured] = []
            mine: list[Measured] = []
            in_memory: list[Measured] = []
            for r in range(1 if quick else 3):
                bares.append(client("bare", jobfile, server.base_url, concurrency))
                mine.append(batchgen(jobfile, server.base_url, f"{tmp}/r{r}", concurrency))
                assert mine[-1].code == 0, f"batchgen exited {mine[-1].code}"
                if concurrency == 512 and tmpfs():
                    # the same with the answers' files on a tmpfs: what the disk adds
                    # (see bench/p07_per_request.py)
                    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
                        in_memory.append(batchgen(jobfile, server.base_url, shm, concurrency))
                    assert in_memory[-1].code == 0, f"batchgen exited {in_memory[-1].code}"
            bare, ours = _median(bares), _median(mine)
            floor = client("ownpath", jobfile, server.base_url, concurrency)
            sdkpath = client("sdkpath", jobfile, server.base_url, concurrency)
            sdk = client("sdk", jobfile, server.base_url, concurrency) if not quick else None
            ratio = ours.wall / bare.wall
            limit = 1.03 if concurrency == 64 else 1.05
            checked = concurrency in (64, 512)
            rows.append(row(
                f"P2 {n:,} requests × {chunks} chunks, {TICK * 1000:.0f} ms apart, "
                f"{concurrency} streams (start-up included)",
                f"batchgen {ours.wall:.2f} s vs bare aiohttp client {bare.wall:.2f} s = "
                f"**{ratio:.3f}×**; ideal {ideal:.2f} s"
                + f"; own transport alone {floor.wall:.2f} s ({floor.wall / bare.wall:.3f}×; "
                f"batchgen {ours.wall / floor.wall:.3f}× it); SDK path alone "
                f"{sdkpath.wall:.2f} s ({sdkpath.wall / bare.wall:.3f}×)"
                + (f"; SDK loop {sdk.wall:.2f} s ({sdk.wall / bare.wall:.2f}×)" if sdk else "")
                + f"; client CPU batchgen {ours.cpu:.1f} s, own transport {floor.cpu:.1f} s, "
                f"SDK path {sdkpath.cpu:.1f} s, bare {bare.cpu:.1f} s"
                + (f" (batchgen and bare: medians of {len(mine)} interleaved rounds)"
                   if len(mine) > 1 else ""),
                f"≤ {limit:.2f}× the bare client" if checked else "report",
                ratio <= limit if checked and not quick else None))
            if in_memory:
                mem = _median(in_memory)
                rows.append(row(
                    f"P2 the same, {concurrency} streams, run directory on tmpfs",
                    f"batchgen {mem.wall:.2f} s = **{mem.wall / bare.wall:.3f}×** the bare "
                    f"client; client CPU {mem.cpu:.1f} s", "report", None))
    return rows


def _median(runs: list[Measured]) -> Measured:
    """The run of median wall time (its CPU with it)."""
    return sorted(runs, key=lambda m: m.wall)[len(runs) // 2]
