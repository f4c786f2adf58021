"""One measurement: ``python benchmarks/_case.py CASE IMPL [--quick]``.

Runs one benchmark case on one implementation in this (fresh) process and
prints one JSON line with the result, then shuts the pool down and prints a
second JSON line with the shutdown time.  ``run.py`` starts one of these per
(case, implementation, repeat); it can also be run by hand.

Library imports happen in ``main()`` before any timer starts, so no case
counts import time.  They are not at module level on purpose: under
forkserver the server process imports this script as ``__mp_main__``, and
what it imports at the top would be charged to the forkserver's startup.
"""

import json
import os
import statistics
import sys
import time

import _workloads as w

# Workers per pool: the machine this suite was written for has 2 cores.
WORKERS = 2
# The retrieve case is the Ray tutorial example: 6 items on 6 workers.
RETRIEVE_WORKERS = 6
# Ideal wall time of retrieve: the longest item sleeps 5/10 s.
RETRIEVE_IDEAL_S = 0.5

# Sizes of the full run.  Chosen so a full run (5 repeats) stays under ~10
# minutes on 2 cores; the serial pi run takes about 2 s there (8.3 ns/sample).
FULL = {
    "tasks": 10_000,  # no-op tasks submitted one by one
    "map_items": 200_000,  # items of one map() with default chunking
    "roundtrip_warmup": 200,  # round trips not timed
    "roundtrip": 2_000,  # round trips timed
    "pi_samples": 400_000_000,  # total Monte Carlo samples
    "pi_chunks": 32,  # tasks the samples are split into (same for everyone)
}
# --quick: a smoke test of every path, about 10x smaller.
QUICK = {
    "tasks": 1_000,
    "map_items": 20_000,
    "roundtrip_warmup": 50,
    "roundtrip": 300,
    "pi_samples": 24_000_000,
    "pi_chunks": 32,
}

# Seconds each warm-up task sleeps: long enough that a pool hands one to each
# of its workers instead of running them all on the first one that is ready.
WARM_SLEEP_S = 0.05

IMPLS = ["poolx", "poolx[fork]", "ProcessPoolExecutor", "multiprocessing.Pool", "loky", "serial",
         "bare-fork"]


# -- a uniform face on every implementation -----------------------------------


class Handle:
    """A pending result: ``.result()`` for futures and AsyncResults alike."""

    def __init__(self, get):
        self.result = get


class Pool:
    """submit / map / close over one implementation, plus its start method."""

    def __init__(self, submit, map_, close, start_method):
        self.submit = submit
        self.map = map_
        self.close = close
        self.start_method = start_method


def import_libraries(impl):
    """Import what ``open_pool(impl)`` needs, so no timer counts an import."""
    if impl.startswith("poolx"):
        import poolx  # noqa: F401
    elif impl == "ProcessPoolExecutor":
        import concurrent.futures  # noqa: F401
    elif impl == "multiprocessing.Pool":
        import multiprocessing.pool  # noqa: F401
    elif impl == "loky":
        import loky  # noqa: F401


def open_pool(impl, workers):
    """Create the pool of ``impl`` with ``workers`` workers, default settings."""
    if impl == "poolx":
        import poolx

        return executor_pool(poolx.Executor(max_workers=workers), poolx_start_method)
    if impl == "poolx[fork]":
        import poolx

        return executor_pool(poolx.Executor(max_workers=workers, mp_context="fork"), poolx_start_method)
    if impl == "ProcessPoolExecutor":
        from concurrent.futures import ProcessPoolExecutor

        ex = ProcessPoolExecutor(max_workers=workers)
        return executor_pool(ex, lambda e: e._mp_context.get_start_method())
    if impl == "multiprocessing.Pool":
        import multiprocessing

        return mp_pool(multiprocessing.Pool(workers), multiprocessing.get_start_method())
    if impl == "loky":
        import loky

        ex = loky.get_reusable_executor(max_workers=workers)
        return executor_pool(ex, lambda e: e._context.get_start_method())
    if impl == "serial":
        return serial_pool()
    raise SystemExit(f"unknown implementation {impl!r}; known: {', '.join(IMPLS)}")


def poolx_start_method(ex):
    return ex._backend.context.get_start_method()


def executor_pool(ex, start_method_of):
    """A concurrent.futures-style executor, with its default map chunking."""
    try:
        method = start_method_of(ex)
    except Exception:
        method = "unknown"
    return Pool(
        submit=ex.submit,
        map_=lambda fn, items: list(ex.map(fn, items)),
        close=lambda: ex.shutdown(wait=True),
        start_method=method,
    )


def mp_pool(pool, method):
    def close():
        pool.close()
        pool.join()

    return Pool(
        submit=lambda fn, *args: Handle(pool.apply_async(fn, args).get),
        map_=pool.map,
        close=close,
        start_method=method,
    )


def serial_pool():
    def submit(fn, *args):
        value = fn(*args)
        return Handle(lambda: value)

    return Pool(submit=submit, map_=lambda fn, items: list(map(fn, items)), close=lambda: None,
                start_method="none (in the caller)")


def warm_up(pool, workers, import_numpy=False):
    """Start every worker (and optionally import numpy there) before timing."""
    handles = [pool.submit(w.warm, WARM_SLEEP_S, import_numpy) for _ in range(2 * workers)]
    for h in handles:
        h.result()
    for _ in range(10):
        pool.submit(w.noop).result()


# -- the cases ----------------------------------------------------------------
# Each returns (pool, result dict); "value" is the headline number and
# "caller_cpu_s" the CPU time the calling process (all its threads) spent in
# the timed region: on 2 cores, a caller that burns CPU takes it from a worker.


class Timer:
    """Wall time and this process's CPU time over a ``with`` block."""

    def __enter__(self):
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0


def case_startup(impl, sizes):
    """Construction to the first result of a trivial task, in ms."""
    with Timer() as t:
        pool = open_pool(impl, WORKERS)
        pool.submit(w.noop).result()
    return pool, {"value": t.seconds * 1e3, "unit": "ms", "caller_cpu_s": t.cpu}


def case_tasks(impl, sizes):
    """``n`` no-op tasks submitted one by one, then all results gathered."""
    n = sizes["tasks"]
    pool = open_pool(impl, WORKERS)
    warm_up(pool, WORKERS)
    with Timer() as t:
        handles = [pool.submit(w.noop) for _ in range(n)]
        results = [h.result() for h in handles]
    check(results == [None] * n, "wrong task results")
    return pool, {"value": n / t.seconds, "unit": "tasks/s", "seconds": t.seconds, "n": n,
                  "caller_cpu_s": t.cpu}


def case_map(impl, sizes):
    """One map() of ``inc`` over tiny items with the library's default chunking."""
    n = sizes["map_items"]
    pool = open_pool(impl, WORKERS)
    warm_up(pool, WORKERS)
    with Timer() as t:
        results = pool.map(w.inc, range(n))
    check(results == list(range(1, n + 1)), "wrong map results")
    return pool, {"value": n / t.seconds, "unit": "items/s", "seconds": t.seconds, "n": n,
                  "caller_cpu_s": t.cpu}


def case_roundtrip(impl, sizes):
    """Sequential submit(noop).result(): median and p99 latency in microseconds."""
    pool = open_pool(impl, WORKERS)
    warm_up(pool, WORKERS)
    for _ in range(sizes["roundtrip_warmup"]):
        pool.submit(w.noop).result()
    clock = time.perf_counter_ns
    samples = []
    with Timer() as t:
        for _ in range(sizes["roundtrip"]):
            t0 = clock()
            pool.submit(w.noop).result()
            samples.append(clock() - t0)
    samples.sort()
    us = [s / 1e3 for s in samples]
    p99 = us[min(len(us) - 1, round(0.99 * (len(us) - 1)))]
    return pool, {"value": statistics.median(us), "unit": "us", "p99_us": p99,
                  "min_us": us[0], "max_us": us[-1], "n": len(us), "caller_cpu_s": t.cpu}


def case_pi(impl, sizes):
    """Monte Carlo pi in equal numpy chunks with fixed seeds: wall time in s."""
    chunks = sizes["pi_chunks"]
    per_chunk = sizes["pi_samples"] // chunks
    if impl == "bare-fork":
        return pi_bare_fork(per_chunk, chunks)
    pool = open_pool(impl, WORKERS)
    warm_up(pool, WORKERS, import_numpy=True)
    with Timer() as t:
        handles = [pool.submit(w.pi_chunk, per_chunk, seed) for seed in range(chunks)]
        inside = sum(h.result() for h in handles)
    estimate = 4.0 * inside / (per_chunk * chunks)
    check(abs(estimate - 3.14159) < 0.01, f"pi estimate {estimate} is off")
    return pool, {"value": t.seconds, "unit": "s", "pi": estimate, "samples": per_chunk * chunks,
                  "caller_cpu_s": t.cpu}


def pi_bare_fork(per_chunk, chunks):
    """The machine's ceiling: WORKERS os.fork()ed children, a static split, no pool.

    Child k computes chunks k, k + WORKERS, ... and writes its count to a pipe.
    Whatever speedup this reaches is what the hardware gives two processes.
    """
    import numpy  # noqa: F401  (imported before the fork, like a warmed pool)

    with Timer() as t:
        readers = []
        for k in range(WORKERS):
            r, wfd = os.pipe()
            if os.fork() == 0:
                os.close(r)
                count = sum(w.pi_chunk(per_chunk, seed) for seed in range(k, chunks, WORKERS))
                os.write(wfd, str(count).encode())
                os._exit(0)
            os.close(wfd)
            readers.append(r)
        inside = 0
        for r in readers:
            with os.fdopen(r, "rb") as f:
                inside += int(f.read())
        for _ in readers:
            os.wait()
    estimate = 4.0 * inside / (per_chunk * chunks)
    check(abs(estimate - 3.14159) < 0.01, f"pi estimate {estimate} is off")
    pool = Pool(submit=None, map_=None, close=lambda: None, start_method="fork (os.fork, no pool)")
    return pool, {"value": t.seconds, "unit": "s", "pi": estimate, "samples": per_chunk * chunks,
                  "caller_cpu_s": t.cpu}


def case_retrieve(impl, sizes):
    """6 items on 6 warm workers, item i sleeps i/10 s: ms above the ideal 0.5 s."""
    pool = open_pool(impl, RETRIEVE_WORKERS)
    warm_up(pool, RETRIEVE_WORKERS)
    with Timer() as t:
        handles = [pool.submit(w.retrieve, i) for i in range(len(w.DATABASE))]
        results = [h.result() for h in handles]
    check(results == list(enumerate(w.DATABASE)), "wrong retrieve results")
    return pool, {"value": (t.seconds - RETRIEVE_IDEAL_S) * 1e3, "unit": "ms", "seconds": t.seconds,
                  "caller_cpu_s": t.cpu}


CASES = {
    "startup": case_startup,
    "tasks": case_tasks,
    "map": case_map,
    "roundtrip": case_roundtrip,
    "pi": case_pi,
    "retrieve": case_retrieve,
}


def check(ok, message):
    if not ok:
        raise AssertionError(message)


def emit(record):
    print(json.dumps(record), flush=True)


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 2 or args[0] not in CASES or args[1] not in IMPLS:
        raise SystemExit(f"usage: _case.py CASE IMPL [--quick]\n  CASE: {', '.join(CASES)}\n"
                         f"  IMPL: {', '.join(IMPLS)}")
    case, impl = args
    sizes = QUICK if "--quick" in argv else FULL
    import_libraries(impl)
    pool, result = CASES[case](impl, sizes)
    # The result goes out before shutdown, so a hang in shutdown still leaves it.
    emit({"case": case, "impl": impl, "start_method": pool.start_method, "pid": os.getpid(), **result})
    t0 = time.perf_counter()
    pool.close()
    emit({"shutdown_ms": (time.perf_counter() - t0) * 1e3})


if __name__ == "__main__":
    main(sys.argv[1:])
