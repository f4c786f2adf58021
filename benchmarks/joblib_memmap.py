"""The same large X passed to many joblib batches: poolx's joblib backend beside loky's.

    python benchmarks/joblib_memmap.py [--mb 200] [--batches 20] [--repeats 3] [--backends poolx,loky]
                                       [--max-nbytes 1M] [--json PATH]

A scikit-learn-like loop: ``Parallel(n_jobs=2)(delayed(score)(X, i) for i in
range(batches))`` with ``batch_size=1``, so each of the ``--batches`` batches
carries the same float64 ``X`` of ``--mb`` MB (a cross-validation passes the
same X to every fold this way), and ``score`` reads a slice of it.  Each
backend runs ``--repeats`` calls after one untimed warm-up call (workers
started); the timer covers one ``Parallel`` call, from the call to its last
result.  Besides the time, each call's task records what it received (an
``np.memmap`` or a copy) and the driver's peak RSS growth is read from
/proc (``VmHWM``, reset before each call where the kernel allows it).

To compare poolx before and after a change, run this file with the other
checkout first on ``PYTHONPATH``; loky is the same in both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from joblib import Parallel, delayed

import poolx
import poolx.joblib


def score(x: np.ndarray, i: int) -> tuple[str, float]:
    """What a fold does with X, in small: read a slice."""
    return type(x).__name__, float(x[i::97].sum())


def _peak_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
    except OSError:
        pass


def run_once(backend: str, x: np.ndarray, batches: int,
             max_nbytes: str | None) -> tuple[float, float, set[str]]:
    _reset_peak()
    before = _peak_kb()
    start = time.perf_counter()
    out = Parallel(n_jobs=2, backend=backend, batch_size=1, max_nbytes=max_nbytes)(
        delayed(score)(x, i) for i in range(batches))
    elapsed = time.perf_counter() - start
    expected = [float(x[i::97].sum()) for i in range(batches)]
    if [total for _, total in out] != expected:
        raise AssertionError(f"{backend}: wrong results")
    return elapsed, (_peak_kb() - before) / 1024, {kind for kind, _ in out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="poolx,loky")
    parser.add_argument("--max-nbytes", default="1M", help="Parallel's max_nbytes ('none' to disable)")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    max_nbytes = None if args.max_nbytes.lower() == "none" else args.max_nbytes
    x = np.random.default_rng(0).random(int(args.mb * 1e6 / 8))
    rows = []
    print(f"X: {x.nbytes / 1e6:.0f} MB float64, {args.batches} batches, n_jobs=2, max_nbytes={max_nbytes}, "
          f"poolx from {os.path.dirname(poolx.__file__)}")
    for backend in args.backends.split(","):
        run_once(backend, x, 2, max_nbytes)  # warm-up: workers started
        runs = [run_once(backend, x, args.batches, max_nbytes) for _ in range(args.repeats)]
        times = [t for t, _, _ in runs]
        row = {"backend": backend, "median_s": statistics.median(times), "min_s": min(times),
               "max_s": max(times), "peak_rss_growth_mb": max(m for _, m, _ in runs),
               "task_received": sorted(set().union(*(k for _, _, k in runs)))}
        rows.append(row)
        print(f"{backend:>6}: median {row['median_s']:.3f} s "
              f"(min {row['min_s']:.3f}, max {row['max_s']:.3f}), "
              f"driver peak RSS growth {row['peak_rss_growth_mb']:.0f} MB, task received "
              f"{'/'.join(row['task_received'])}")
    poolx.joblib.shutdown_workers()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "mb": args.mb, "batches": args.batches, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
