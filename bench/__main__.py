"""Run the benchmark suite and print a Markdown table of ratios.

    python -m bench            full mode (for the notes; minutes)
    python -m bench --quick    CI mode (seconds): checks the suite runs
    python -m bench --only P1,P6
"""

from __future__ import annotations

import argparse
import compileall
import importlib
import sys
import time

from bench.common import ROOT

SUITE = {
    "P1": "bench.p01_cpu",
    "P2": "bench.p02_concurrency",
    "P3": "bench.p03_ratelimit",
    "P4": "bench.p04_memory",
    "P5": "bench.p05_rerun",
    "P6": "bench.p06_startup",
    "P7": "bench.p07_per_request",
    "P8": "bench.p08_paced",
    "P9": "bench.p09_resume",
    "P10": "bench.p10_estimates",
    "P11": "bench.p11_shards",
    "P12": "bench.p12_outage",
    "P13": "bench.p13_guard",
    "P14": "bench.p14_length",
    "P15": "bench.p15_data",
    "P16": "bench.p16_structured",
    "P17": "bench.p17_media",
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--only", help="comma-separated: " + ",".join(SUITE))
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(SUITE)
    bytecode()
    print(f"batchgen benchmarks ({'quick' if args.quick else 'full'} mode)\n")
    print("| benchmark | measured | target | |")
    print("|---|---|---|---|")
    failed = False
    for name in chosen:
        module = importlib.import_module(SUITE[name])
        start = time.perf_counter()
        try:
            for line in module.run(args.quick):
                print(line, flush=True)
        except Exception as exc:  # a benchmark that crashes is a real failure
            print(f"| {name} | crashed: {exc!r} | | |", flush=True)
            failed = True
        print(f"<!-- {name} took {time.perf_counter() - start:.1f} s -->", file=sys.stderr)
    return 1 if failed else 0


def bytecode() -> None:
    """Measure batchgen as installed: with its modules' bytecode on disk.

    An installed package has it (pip compiles at install), as do the
    baselines' libraries; an editable checkout gets it on its first import,
    unless PYTHONDONTWRITEBYTECODE is set (as on CI images), and then every
    process would compile batchgen's ~45 modules from source, 0.1–0.2 s of
    start-up no user of an installed batchgen pays.
    """
    if not compileall.compile_dir(ROOT / "batchgen", quiet=1):
        raise SystemExit("could not compile batchgen's modules")


if __name__ == "__main__":
    sys.exit(main())
