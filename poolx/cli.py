"""The ``poolx`` command.

``poolx demo``: runs the pi example serially and on an Executor and prints
both times and the speedup.  (The profiling harness, ``poolx profile``, and the
peer benchmark, ``poolx bench``, are planned; see the README.)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


def demo(workers: int | None, samples: int, backend: str) -> int:
    from poolx import Executor
    from poolx._scenarios import load

    pi = load("pi")

    print(f"pi: {samples:,} random points in {pi.CHUNKS} chunks")
    pi.serial(pi.CHUNKS)  # warm up: import numpy here, as the workers will below
    started = time.perf_counter()
    estimate = pi.serial(samples)
    serial_s = time.perf_counter() - started
    print(f"  serial                        {serial_s:7.3f} s   pi ~ {estimate:.6f}")
    with Executor(workers, backend=backend) as ex:
        # Start every worker and import numpy in it: the demo times the work, not start-up.
        list(ex.map(pi.count_inside, [1] * ex.max_workers, range(ex.max_workers), chunksize=1))
        started = time.perf_counter()
        parallel = pi.tasks(ex, samples)
        parallel_s = time.perf_counter() - started
        label = f"tasks ({ex.backend}, {ex.max_workers} workers)"
    print(f"  {label:<29} {parallel_s:7.3f} s   pi ~ {parallel:.6f}")
    print(f"  speedup                       {serial_s / parallel_s:7.2f}x")
    if parallel != estimate:
        print("error: the parallel estimate differs from the serial one", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poolx", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run the pi example serially and on an Executor")
    p.add_argument("--workers", type=int, default=None, help="default: the usable CPUs")
    p.add_argument("--samples", type=int, default=None, help="random points (default: ~2 s of work)")
    p.add_argument("--backend", default="processes", help="processes (default), threads, serial")
    args = parser.parse_args(argv)
    if args.command == "demo":
        try:
            import numpy  # noqa: F401
        except ImportError:
            parser.error("the demo needs numpy: pip install 'poolx[examples]'")
        from poolx._scenarios import load

        return demo(args.workers, args.samples or load("pi").SAMPLES, args.backend)
    return 2


if __name__ == "__main__":
    sys.exit(main())
