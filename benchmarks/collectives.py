"""Allreduce among actors: poolx.collective against gathering to the driver and broadcasting back.

    python benchmarks/collectives.py [--quick] [--mb 100] [--ranks 2,4] [--repeats 5]
                                     [--json PATH] [--markdown PATH]

Each rank is a poolx actor (``poolx.Executor(backend="processes")``) holding
a float64 array of ``--mb`` MB, and the case is one sum-allreduce of it: every
rank ends with the element-wise sum of all the ranks' arrays.  Two ways, in
the same run, on the same actors' processes:

* ``poolx.collective``: each actor calls ``col.allreduce(self.array)`` (shared
  memory: each rank copies its array in, reduces its 1/n of the elements
  across all ranks, copies the result out);
* ``driver``: the naive way a Ray-style program does it without a collective
  library: each actor returns its array (``get``), the driver sums them, puts
  the sum in the object store (``poolx.put``) and each actor copies it into
  its array (``set``).

Timed from the driver, from the first call to the last result, after one
untimed warm-up of each; ``--repeats`` runs of each way, alternating which
goes first; medians.  The bandwidth is the *algorithm bandwidth* (as
nccl-tests reports it): the array's bytes over the time, so a faster allreduce
of the same array reads higher whatever the algorithm moves inside.  On a
machine with fewer cores than ranks, the ranks share the cores (the figures
say how many there were).  Each rank checks its result (the sum of 1..n per
element), so a wrong answer fails the run instead of reading fast.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from run import git_revision, usable_cpus, version_of  # the suite's own, beside this script

import poolx
import poolx.collective as col

GROUP = "bench"


class Rank:
    """One rank: an array of ``n`` float64 equal to ``rank + 1``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.array = np.empty(n)

    def fill(self, value: float) -> None:
        self.array.fill(value)

    def allreduce(self) -> float:
        t = time.perf_counter()
        col.allreduce(self.array, group_name=GROUP)
        return time.perf_counter() - t

    def get(self) -> np.ndarray:
        return self.array

    def set(self, total: np.ndarray) -> None:
        np.copyto(self.array, total)

    def check(self, expected: float) -> bool:
        return bool(self.array[0] == expected and self.array[-1] == expected
                    and self.array[self.n // 2] == expected)


def _allreduce(ranks: list) -> None:
    for f in [r.allreduce.remote() for r in ranks]:
        f.result(300)


def _driver(ranks: list) -> None:
    arrays = [f.result(300) for f in [r.get.remote() for r in ranks]]
    total = arrays[0].copy()
    for a in arrays[1:]:
        total += a
    ref = poolx.put(total)
    for f in [r.set.remote(ref) for r in ranks]:
        f.result(300)


WAYS = {"poolx.collective": _allreduce, "driver": _driver}


def measure(nranks: int, nbytes: int, repeats: int) -> dict:
    n = nbytes // 8
    expected = float(nranks * (nranks + 1) // 2)
    times: dict[str, list[float]] = {w: [] for w in WAYS}
    with poolx.Executor(nranks) as ex:
        ranks = [ex.actor(Rank, n) for _ in range(nranks)]
        col.create_collective_group(ranks, group_name=GROUP, timeout=120)
        try:
            for i in range(repeats + 1):
                order = list(WAYS) if i % 2 == 0 else list(reversed(WAYS))
                for way in order:
                    for f in [h.fill.remote(rank + 1) for rank, h in enumerate(ranks)]:
                        f.result(60)
                    t = time.perf_counter()
                    WAYS[way](ranks)
                    elapsed = time.perf_counter() - t
                    ok = [f.result(60) for f in [h.check.remote(expected) for h in ranks]]
                    if not all(ok):
                        raise SystemExit(f"{way}: wrong result with {nranks} ranks")
                    if i:  # the first round is the warm-up
                        times[way].append(elapsed)
        finally:
            col.destroy_collective_group(GROUP)
    out = {}
    for way, ts in times.items():
        med = statistics.median(ts)
        out[way] = {"median_s": med, "min_s": min(ts), "max_s": max(ts), "gbps": nbytes / med / 1e9,
                    "runs": ts}
    return out


def _markdown(results: dict, meta: dict) -> str:
    lines = [
        f"Allreduce (sum) of a {meta['mb']} MB float64 array among actors, {meta['repeats']} timed runs "
        f"of each way after a warm-up, medians; {meta['cpus']} usable CPUs; poolx {meta['poolx']} "
        f"(git {meta['git']}), numpy {meta['numpy']}, Python {meta['python']}, {meta['date']}.",
        "",
        "| ranks | way | median | min..max | algorithm bandwidth | vs driver |",
        "|---|---|---|---|---|---|",
    ]
    for nranks, ways in results.items():
        base = ways["driver"]["median_s"]
        for way, r in ways.items():
            name = f"**{way}**" if way != "driver" else way
            lines.append(f"| {nranks} | {name} | {r['median_s'] * 1e3:.0f} ms | "
                         f"{r['min_s'] * 1e3:.0f}..{r['max_s'] * 1e3:.0f} ms | "
                         f"{r['gbps']:.2f} GB/s | {base / r['median_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 MB, 1 repeat: a smoke test")
    parser.add_argument("--mb", type=float, default=100.0, help="the array's size in MB (default 100)")
    parser.add_argument("--ranks", default="2,4", help="comma-separated group sizes (default 2,4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    if args.quick:
        args.mb, args.repeats = 4.0, 1
    nbytes = int(args.mb * 1e6) // 8 * 8
    sizes = [int(s) for s in args.ranks.split(",") if s.strip()]
    meta = {"mb": f"{args.mb:g}", "repeats": args.repeats, "cpus": usable_cpus(),
            "poolx": poolx.__version__, "git": git_revision(), "numpy": version_of("numpy"),
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}
    results = {}
    for nranks in sizes:
        results[nranks] = measure(nranks, nbytes, args.repeats)
        for way, r in results[nranks].items():
            print(f"{nranks} ranks  {way:18s} {r['median_s'] * 1e3:8.1f} ms  {r['gbps']:6.2f} GB/s",
                  flush=True)
    table = _markdown(results, meta)
    print()
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
