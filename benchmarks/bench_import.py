"""What ``import simclr_fast`` adds to ``import torch``: wall time of fresh interpreters, medians.

    python benchmarks/bench_import.py [--runs 10]

Each round starts one interpreter that imports only torch and one that imports simclr_fast (which
imports torch), back to back, so a change in the machine's load hits both; the difference of the
medians is what the package costs on top of torch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {"torch": "import torch", "simclr_fast": "import simclr_fast"}


def once(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="rounds (default 10)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    once(CASES["simclr_fast"])  # warm the file-system cache for both
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.runs):
        for name, code in CASES.items():
            times[name].append(once(code))
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"import {name:<12} median {med[name]:.2f} s  (min {min(t):.2f}, max {max(t):.2f})")
    print(f"simclr_fast adds {med['simclr_fast'] - med['torch']:+.2f} s to import torch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
