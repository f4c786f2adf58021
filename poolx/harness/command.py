"""The poolx command: profile a workload, benchmark poolx, describe the machine.

  poolx profile SCENARIO   run a workload serially, as tasks and as actors, and
                           show where the time and memory went
                           (poolx profile compare A B compares two runs)
  poolx profile run        profile your own program: run script.py [args]
                           or -m module [args], unchanged
  poolx bench              poolx beside the libraries you would otherwise use
  poolx info               the machine and the installation, as poolx sees them
  poolx demo               the pi example serially and as tasks, in seconds

Its parser and dispatch, and ``poolx demo``; ``poolx.cli.main`` (the console
script's entry point) hands the command line here.  The commands' work lives
in ``profile.py``, ``program.py`` (``poolx profile run``), ``bench.py`` and
``env.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from .. import Executor, __version__
from ..backends import get_backend
from . import bench, compare, env, profile, program
from ._args import positive_int
from .profile import CLUSTER_BACKENDS, require_engine
from .scenario import load_module


def demo(workers: int | None, samples: int, backend: str, address: str | None = None) -> int:
    try:  # an unknown backend, a missing extra: said before any work
        get_backend(backend)
        if backend in CLUSTER_BACKENDS:
            require_engine(backend)
    except (ImportError, ValueError) as exc:
        print(f"poolx demo: error: {exc}", file=sys.stderr)
        return 2
    pi = load_module("pi")

    print(f"pi: {samples:,} random points in {pi.CHUNKS} chunks")
    pi.serial(pi.CHUNKS)  # warm up: import numpy here, as the workers will below
    started = time.perf_counter()
    estimate = pi.serial(samples)
    serial_s = time.perf_counter() - started
    print(f"  serial                        {serial_s:7.3f} s   pi ~ {estimate:.6f}")
    try:
        ex = Executor(workers, backend=backend, address=address)
    except Exception as exc:  # an option the backend refuses, a cluster out of reach
        print(f"poolx demo: error: cannot start the {backend!r} backend: {exc}", file=sys.stderr)
        return 2
    with ex:
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


SCENARIO_HELP = """\
A scenario is one workload written three ways, in a module or a .py file:

  SIZE = 1_000_000                    # default input size (--size overrides it)
  def serial(size): ...               # the result, computed in this process
  def tasks(executor, size): ...      # the same, with tasks on a poolx.Executor
  def actors(executor, size): ...     # the same, with actors on that Executor

Optional: WORKERS = (1, 2, 4) (default worker counts) and check(result,
expected) -> bool (default ==).  Built in: pi, retrieve.  See docs/profiling.md.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poolx",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:11]),
    )
    parser.add_argument("--version", action="version", version=f"poolx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{profile,bench,info,demo}")
    p = sub.add_parser(
        "profile",
        help="compare a workload's serial, task and actor runs",
        description="Run SCENARIO serially, as tasks and as actors; report where the "
        "time and memory went.  'poolx profile compare A B' compares two "
        "runs' results.json; 'poolx profile run script.py [args]' profiles your own "
        "program, unchanged (see 'poolx profile run --help').",
        epilog=SCENARIO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    profile.add_arguments(p)
    b = sub.add_parser("bench", help="run the benchmarks against the installed peers")
    bench.add_arguments(b)
    sub.add_parser("info", help="Python, CPUs, start method, versions, thread limits")
    d = sub.add_parser("demo", help="run the pi example serially and on an Executor")
    d.add_argument("--workers", type=positive_int, default=None, help="default: the usable CPUs")
    d.add_argument("--samples", type=positive_int, default=None, help="random points (default: ~2 s of work)")
    d.add_argument("--backend", default="processes", help="processes (default), threads, serial, dask, ray")
    d.add_argument("--address", default=None, help="dask or ray: the cluster (default: a local one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["profile", "compare"]:
        cp = argparse.ArgumentParser(
            prog="poolx profile compare",
            description="Compare two 'poolx profile' runs (before and after a change).",
            epilog=compare.RULE,
        )
        compare.add_arguments(cp)
        return compare.run(cp.parse_args(argv[2:]))
    if argv[:2] == ["profile", "run"]:
        # (its own parser: everything after the program's script or -m module is the program's)
        return program.run(argv[2:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "profile":
        return profile.run(args)
    if args.command == "bench":
        return bench.run(args)
    if args.command == "info":
        print(env.render_info(env.collect()))
        return 0
    if args.command == "demo":
        try:
            import numpy  # noqa: F401
        except ImportError:
            parser.error("the demo needs numpy: pip install numpy (poolx's 'examples' extra)")
        return demo(args.workers, args.samples or load_module("pi").SIZE, args.backend, args.address)
    return 2
