"""P7: client CPU per request (not per chunk): batchgen vs the bare client.

2,000 one-chunk requests against a fast fake server, 64 at once. Each client
runs twice, with 2,000 and with 200 requests, as its own process; the CPU per
request is the difference over 1,800 requests, so start-up (imports, opening
the store) is not in it — P6 and P2 show start-up. In full mode each figure is
the median of three interleaved rounds: one round's difference of two runs
was off by 2× here. Baseline: the bare aiohttp client of bench/clients.py,
which sends the request and reads and discards the body; beside it batchgen's
own transport alone (``ownpath``, the body discarded), so the figure splits
into the transport's share and batchgen's own, and the SDK path alone
(``sdkpath``: the openai SDK's ``client.post``, how batchgen sent requests
before it owned its transport). Target: batchgen ≤ 1.5× the bare client.

batchgen also runs with its run directory on a tmpfs (``/dev/shm``) where
there is one: a finished answer is a file in ``texts/``, and what creating a
file costs depends on the file system. On these VMs the root is ext4 without
a journal, which skips every inode freed in the last minute (five if its
block is still dirty) when it allocates one — after the suite's earlier
benchmarks deleted their folders, ``perf`` shows that scan
(``recently_deleted``, ``find_inode_bit`` and their lookups) at ~44% of the
run's CPU. The tmpfs
row is batchgen's own work; the disk row is what a user's disk adds.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from bench.common import Measured, batchgen, client, fake_server, row, tmpfs, write_jsonl

CONCURRENCY = 64


def run(quick: bool) -> list[str]:
    big, small = (400, 100) if quick else (2_000, 200)
    rounds = 1 if quick else 3
    clients = ("bare", "ownpath", "sdkpath") + (() if quick else ("sdk",))
    runs: dict[str, list[dict[int, Measured]]] = {name: [] for name in
                                                  ("batchgen", "tmpfs", *clients)}
    with fake_server() as server, tempfile.TemporaryDirectory() as tmp:
        jobs = {n: write_jsonl(Path(tmp) / f"p7_{n}.jsonl", n, 1) for n in (big, small)}

        def ours(n: int, out: str) -> Measured:
            done = batchgen(jobs[n], server.base_url, out, CONCURRENCY)
            assert done.code == 0, f"batchgen exited {done.code}"
            return done

        # interleaved rounds, a median each: one noisy moment moves one round
        for r in range(rounds):
            runs["bare"].append({n: client("bare", jobs[n], server.base_url, CONCURRENCY)
                                 for n in jobs})
            runs["batchgen"].append({n: ours(n, f"{tmp}/out{r}_{n}") for n in jobs})
            if tmpfs():
                with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
                    runs["tmpfs"].append({n: ours(n, f"{shm}/out{n}") for n in jobs})
            for name in clients[1:]:
                runs[name].append({n: client(name, jobs[n], server.base_url, CONCURRENCY)
                                   for n in jobs})

    def per_request(name: str) -> float:
        return statistics.median((m[big].cpu - m[small].cpu) / (big - small) * 1e6
                                 for m in runs[name])

    def start_up(name: str) -> float:  # CPU of the short run, start-up included
        return statistics.median(m[small].cpu for m in runs[name])

    bare_us, ours_us, floor_us = (per_request(k) for k in ("bare", "batchgen", "ownpath"))
    sdk_us = per_request("sdkpath")
    ratio = ours_us / bare_us if bare_us > 0 else float("inf")
    if min(bare_us, ours_us, floor_us, ours_us - floor_us) > 0:
        split = (f"batchgen {ours_us:,.0f} µs vs bare aiohttp client {bare_us:,.0f} µs = "
                 f"**{ratio:.2f}×**; own transport alone {floor_us:,.0f} µs "
                 f"({floor_us / bare_us:.2f}×; batchgen's own {ours_us - floor_us:,.0f} µs); "
                 f"SDK path alone {sdk_us:,.0f} µs ({sdk_us / bare_us:.2f}×)")
    else:  # differences of differences: a short (quick) run's noise can exceed them
        split = (f"within this run's noise (µs a request: batchgen {ours_us:,.0f}, own "
                 f"transport alone {floor_us:,.0f}, SDK path {sdk_us:,.0f}, bare client "
                 f"{bare_us:,.0f}); a full run measures it")
    rows = [row(f"P7 client CPU per one-chunk request ({big:,} − {small:,} requests)",
                split + (f"; SDK loop {per_request('sdk'):,.0f} µs" if runs.get("sdk") else "")
                + (f" (medians of {rounds} interleaved rounds)" if rounds > 1 else ""),
                "≤ 1.5× the bare client", ratio <= 1.5 if not quick else None),
            row(f"P7 the same, run directory on tmpfs ({big:,} − {small:,} requests)",
                (f"batchgen {per_request('tmpfs'):,.0f} µs = "
                 f"**{per_request('tmpfs') / bare_us:.2f}×** the bare client; the disk "
                 f"added {ours_us - per_request('tmpfs'):,.0f} µs a request")
                if runs["tmpfs"] and bare_us > 0 else "no tmpfs at /dev/shm",
                "report", None),
            row(f"P7 start-up + {small:,} requests, CPU",
                f"batchgen {start_up('batchgen'):.2f} s, own transport alone "
                f"{start_up('ownpath'):.2f} s, SDK path alone {start_up('sdkpath'):.2f} s, "
                f"bare client {start_up('bare'):.2f} s",
                "report", None)]
    return rows

