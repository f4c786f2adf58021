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
import operator
import os
import statistics
import sys
import time

# A measurement (this file run as a script, and the forkserver or spawn child
# that re-imports it as __mp_main__) imports `_workloads` as a top-level module
# from this folder, so workers unpickle its functions by reference.  run.py
# (and through it `poolx bench`) loads this file by its path for the sizes and
# names alone, with this folder not on sys.path: there it needs no workloads.
if __name__ in ("__main__", "__mp_main__"):
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
    "actor_warmup": 100,  # actor calls not timed (actor_awaited, actor_pipelined)
    "actor_calls": 10_000,  # actor calls timed
    # The multiprocessing.Pool-API cases (pool_*).
    # 1,000,000, not 100,000: 100,000 tiny items take 10 to 15 ms, within the noise of a 2-core VM.
    "pool_map_items": 1_000_000,  # items of pool_map_tiny, default chunksize
    "pool_imap_items": 10_000,  # items of pool_imap_tiny and pool_imap_unordered_tiny, chunksize=1
    "pool_imap_chunked_items": 100_000,  # items of pool_imap_chunked
    "pool_imap_chunksize": 64,  # chunksize of pool_imap_chunked
    "pool_apply": 1_000,  # apply_async calls of pool_apply_async
    "pool_small_tasks": 1_000,  # ~1 ms tasks of pool_small_tasks
    "pool_roundtrip_warmup": 100,  # apply_async(...).get() not timed
    "pool_roundtrip": 1_000,  # apply_async(...).get() timed one by one
    # The joblib cases (joblib_*).
    "joblib_digits": 1_797,  # samples of load_digits the grid search fits (all of them)
    "joblib_fits": 5,  # warm grid-search fits timed (after one untimed) in joblib_gridsearch_warm
    "joblib_tiny_items": 100_000,  # items of the joblib_tiny call
    # The transfer cases (transfer_*): a float64 array of this many elements, 200 MB.
    "transfer_elements": 25_000_000,
    "transfer_calls": 5,  # timed calls, each waited for before the next (after one untimed)
    # Issue 23's map rows: map(inc) with default chunking at three sizes, after an untimed map
    # of map_warm items on the warm pool (as the issue measured them).
    "map_2k": 2_000,
    "map_200k": 200_000,
    "map_2m": 2_000_000,
    "map_warm": 2_000,
    # The floors: fresh interpreters timed by startup's floor rows (the median of these runs,
    # after one untimed), and the pipe ping-pong rows of roundtrip.
    "floor_runs": 5,
    "pingpong_warmup": 200,
    "pingpong": 2_000,
}
# --quick: a smoke test of every path, about 10x smaller.
QUICK = {
    "tasks": 1_000,
    "map_items": 20_000,
    "roundtrip_warmup": 50,
    "roundtrip": 300,
    "pi_samples": 24_000_000,
    "pi_chunks": 32,
    "actor_warmup": 100,
    "actor_calls": 1_000,
    "pool_map_items": 100_000,
    "pool_imap_items": 1_000,
    "pool_imap_chunked_items": 10_000,
    "pool_imap_chunksize": 64,
    "pool_apply": 200,
    "pool_small_tasks": 100,
    "pool_roundtrip_warmup": 20,
    "pool_roundtrip": 100,
    "joblib_digits": 500,
    "joblib_fits": 2,
    "joblib_tiny_items": 10_000,
    "transfer_elements": 2_500_000,  # 20 MB: still far above every library's large-buffer threshold (1 MB)
    "transfer_calls": 5,
    "map_2k": 2_000,
    "map_200k": 20_000,
    "map_2m": 200_000,
    "map_warm": 2_000,
    "floor_runs": 3,
    "pingpong_warmup": 50,
    "pingpong": 300,
}

# Seconds each warm-up task sleeps: long enough that a pool hands one to each
# of its workers instead of running them all on the first one that is ready.
WARM_SLEEP_S = 0.05

IMPLS = ["poolx", "poolx[fork]", "ProcessPoolExecutor", "multiprocessing.Pool",
         "multiprocessing.Pool[forkserver]", "loky", "threading", "serial", "bare-fork", "ray", "dask",
         "joblib", "poolx.remote", "floor:python-pass", "floor:import-poolx", "floor:pipe-bytes",
         "floor:pipe-pickled"]

# The machine's floors, measured in the same run as the libraries (issue 23): no
# pool at all, each the least any library could take on this machine for its case.
# floor:python-pass and floor:import-poolx are rows of startup (a fresh
# interpreter that does nothing, and one that imports poolx); floor:pipe-bytes and
# floor:pipe-pickled rows of roundtrip (a forked child echoing 8 bytes through a
# pair of pipes, and a small pickled tuple through multiprocessing Connections).
FLOOR_CASES = {"floor:python-pass": "startup", "floor:import-poolx": "startup",
               "floor:pipe-bytes": "roundtrip", "floor:pipe-pickled": "roundtrip"}
# Issue 23's map rows, each the map case at its own size (the key in FULL and QUICK).
MAP_SIZE_CASES = ["map_2k", "map_200k", "map_2m"]

# The actor cases run poolx, Ray and Dask; Ray and Dask run nothing else.
# Both are optional: where one cannot be imported its measurements are
# recorded as skipped, with the reason.
ACTOR_CASES = ["actor_awaited", "actor_pipelined", "actor_retrieve"]
ACTOR_IMPLS = ["poolx", "ray", "dask"]
OPTIONAL_IMPLS = {"ray": "ray", "dask": "distributed"}  # implementation: module it needs

# The multiprocessing.Pool-API cases: poolx.Pool beside multiprocessing.Pool
# (default context, and forkserver, poolx's default start method) and Ray's
# clone, ray.util.multiprocessing.Pool.  In these cases "poolx" is
# poolx.Pool(2), "poolx[fork]" poolx.Pool(2, context=fork) and "ray" Ray's Pool
# on a fresh local Ray cluster; the timed code calls each pool's own methods.
POOL_CASES = ["pool_map_tiny", "pool_imap_tiny", "pool_imap_unordered_tiny", "pool_imap_chunked",
              "pool_apply_async", "pool_small_tasks", "pool_apply_roundtrip"]
POOL_IMPLS = ["poolx", "poolx[fork]", "multiprocessing.Pool", "multiprocessing.Pool[forkserver]", "ray"]

# The joblib cases: joblib.Parallel (and scikit-learn's n_jobs) on poolx's
# joblib backend beside joblib's own backends and Dask's and Ray's.  Each row
# is one joblib backend, ``joblib.parallel_config(backend=..., n_jobs=2)``:
# "poolx" is poolx.joblib's "poolx", "loky" joblib's default, and
# "multiprocessing.Pool" joblib's "multiprocessing" backend (a
# multiprocessing.Pool underneath; the name is the suite's existing row name).
# "threading" runs only these cases.  They need joblib, and the grid-search
# cases scikit-learn: where either cannot be imported, the measurement is
# recorded as skipped, with the reason.
JOBLIB_CASES = ["joblib_gridsearch_warm", "joblib_gridsearch_first", "joblib_tiny"]
JOBLIB_IMPLS = ["poolx", "loky", "multiprocessing.Pool", "threading", "dask", "ray"]
JOBLIB_BACKENDS = {"poolx": "poolx", "loky": "loky", "multiprocessing.Pool": "multiprocessing",
                   "threading": "threading", "dask": "dask", "ray": "ray"}
# Implementations that run the joblib cases only.
JOBLIB_ONLY_IMPLS = ["threading"]
# The grid search of the grid-search cases: 6 candidates x 3 folds, 18 SVC fits and the refit.
JOBLIB_GRID = {"C": [1, 10, 100], "gamma": [1e-3, 1e-4]}
JOBLIB_CV = 3

# The transfer cases: a 200 MB numpy array between the caller and a worker
# process, poolx (its shared-memory object store) beside Ray (its plasma
# object store), joblib (the loky backend's automatic memory-mapping of large
# arrays) and multiprocessing.Pool (pickles through a pipe), 2 workers each.
# "poolx" is poolx.Executor(2); "ray" a fresh local Ray cluster,
# ``ray.init(num_cpus=2, ...)``; "joblib" ``joblib.Parallel(n_jobs=2,
# backend="loky")`` (default max_nbytes="1M": arrays above 1 MB are dumped to
# a memory-mapped file the workers open), one Parallel call per call;
# "multiprocessing.Pool[forkserver]" ``get_context("forkserver").Pool(2)``
# and ``pool.apply``.  joblib and multiprocessing.Pool have no put: in
# transfer_put they get the array itself, every call.  numpy is needed, joblib
# and Ray are optional (skipped, with the reason, where they cannot be imported).
TRANSFER_CASES = ["transfer_args", "transfer_returns", "transfer_put", "transfer_args_wall",
                  "transfer_returns_fresh"]
# Issue 23's two transfer forms, whose headline is the wall-time bandwidth (the sums
# included): transfer_args_wall passes the same array to a warm, reused system
# (joblib: one Parallel kept open, so its memory-mapping dumps the array once and
# reuses the file), transfer_returns_fresh has the task build a new array every call.
TRANSFER_WALL_CASES = ["transfer_args_wall", "transfer_returns_fresh"]
TRANSFER_IMPLS = ["poolx", "poolx.remote", "ray", "joblib", "multiprocessing.Pool[forkserver]"]
# Implementations that run the transfer cases only.  poolx.remote is poolx's
# Ray-style API (large arguments arrive read-only, as Ray's do); the poolx row is
# Executor.submit (arguments arrive as writable copy-on-write copies).
TRANSFER_ONLY_IMPLS = ["joblib", "poolx.remote"]
# The baseline (the same sums in the caller) is the median of this many runs.
TRANSFER_BASELINE_RUNS = 3
# Where the calls took less than this longer than the baseline (or no longer
# at all), the time left for moving the data is clamped to this floor and the
# measurement flagged "clamped".
TRANSFER_FLOOR_S = 1e-3


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
        import poolx

        # The package face loads its front ends on first use: load them here.
        poolx.Executor, poolx.Pool  # noqa: B018
    elif impl == "ProcessPoolExecutor":
        import concurrent.futures  # noqa: F401
    elif impl.startswith("multiprocessing.Pool"):
        import multiprocessing.pool  # noqa: F401
    elif impl == "loky":
        import loky  # noqa: F401
    elif impl == "ray":
        import ray
        import ray.util.multiprocessing  # noqa: F401  (the pool cases)
    elif impl == "dask":
        import dask  # noqa: F401
        import distributed  # noqa: F401


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
    if impl == "multiprocessing.Pool[forkserver]":
        import multiprocessing

        return mp_pool(multiprocessing.get_context("forkserver").Pool(workers), "forkserver")
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
    if impl in FLOOR_CASES:
        return startup_floor(impl, sizes)
    with Timer() as t:
        pool = open_pool(impl, WORKERS)
        pool.submit(w.noop).result()
    return pool, {"value": t.seconds * 1e3, "unit": "ms", "caller_cpu_s": t.cpu}


def case_startup_next(impl, sizes):
    """The next executor in the same process: construction to its first result, in ms.

    The first is made, used once and shut down (its time is ``first_ms``), as a
    program that makes one executor after another does; then the next is timed.
    """
    with Timer() as first:
        pool = open_pool(impl, WORKERS)
        pool.submit(w.noop).result()
    pool.close()
    with Timer() as t:
        pool = open_pool(impl, WORKERS)
        pool.submit(w.noop).result()
    return pool, {"value": t.seconds * 1e3, "unit": "ms", "first_ms": first.seconds * 1e3,
                  "caller_cpu_s": t.cpu}


# What each startup floor runs in a fresh interpreter (python -c ...).
FLOOR_PROGRAMS = {"floor:python-pass": "pass", "floor:import-poolx": "import poolx"}


def startup_floor(impl, sizes):
    """A fresh ``python -c PROGRAM``, start to exit: the median of ``floor_runs`` after one untimed."""
    import subprocess

    cmd = [sys.executable, "-c", FLOOR_PROGRAMS[impl]]
    subprocess.run(cmd, check=True)  # untimed: the interpreter's files into the page cache
    runs = []
    for _ in range(sizes["floor_runs"]):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        runs.append((time.perf_counter() - t0) * 1e3)
    pool = Pool(submit=None, map_=None, close=lambda: None, start_method="none (a fresh interpreter)")
    return pool, {"value": statistics.median(runs), "unit": "ms", "runs_ms": runs,
                  "program": f"{os.path.basename(sys.executable)} -c {FLOOR_PROGRAMS[impl]!r}"}


def pipe_pingpong(impl, sizes):
    """Round trips to a forked child echoing through pipes, no pool: median and p99 in us.

    floor:pipe-bytes writes 8 bytes and reads them back (os.write / os.read);
    floor:pipe-pickled sends a small tuple, as a pool's task message would be, and
    receives a reply tuple (multiprocessing Connection.send / recv: pickle both ways).
    """
    from multiprocessing.connection import Connection

    pickled = impl == "floor:pipe-pickled"
    down_r, down_w = os.pipe()
    up_r, up_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: echo until the parent closes its end
        os.close(down_w)
        os.close(up_r)
        try:
            if pickled:
                rx, tx = Connection(down_r, writable=False), Connection(up_w, readable=False)
                while True:
                    i, _fn, _args = rx.recv()
                    tx.send((i, None))
            else:
                while data := os.read(down_r, 64):
                    os.write(up_w, data)
        except EOFError:
            pass
        finally:
            os._exit(0)
    os.close(down_r)
    os.close(up_w)
    if pickled:
        rx, tx = Connection(up_r, writable=False), Connection(down_w, readable=False)

        def once(i):
            tx.send((i, "noop", ()))
            rx.recv()
    else:
        def once(i):
            os.write(down_w, b"12345678")
            os.read(up_r, 64)
    try:
        for i in range(sizes["pingpong_warmup"]):
            once(i)
        samples = []
        clock = time.perf_counter_ns
        with Timer() as t:
            for i in range(sizes["pingpong"]):
                t0 = clock()
                once(i)
                samples.append(clock() - t0)
    finally:
        if pickled:
            tx.close()
            rx.close()
        else:
            os.close(down_w)
            os.close(up_r)
        os.waitpid(pid, 0)
    pool = Pool(submit=None, map_=None, close=lambda: None, start_method="fork (os.fork, no pool)")
    return pool, latency_figures(samples, t)


def latency_figures(samples_ns, t):
    """Median, p99, min and max of round trips in us."""
    us = sorted(s / 1e3 for s in samples_ns)
    p99 = us[min(len(us) - 1, round(0.99 * (len(us) - 1)))]
    return {"value": statistics.median(us), "unit": "us", "p99_us": p99,
            "min_us": us[0], "max_us": us[-1], "n": len(us), "caller_cpu_s": t.cpu}


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


def run_map_size(impl, sizes, case):
    """Issue 23's map: a warm pool, an untimed map of ``map_warm`` items, then the timed map."""
    n = sizes[case]
    pool = open_pool(impl, WORKERS)
    warm_up(pool, WORKERS)
    pool.map(w.inc, range(sizes["map_warm"]))
    with Timer() as t:
        results = pool.map(w.inc, range(n))
    check(results == list(range(1, n + 1)), "wrong map results")
    return pool, {"value": n / t.seconds, "unit": "items/s", "seconds": t.seconds, "n": n,
                  "caller_cpu_s": t.cpu}


def case_map_2k(impl, sizes):
    return run_map_size(impl, sizes, "map_2k")


def case_map_200k(impl, sizes):
    return run_map_size(impl, sizes, "map_200k")


def case_map_2m(impl, sizes):
    return run_map_size(impl, sizes, "map_2m")


def case_roundtrip(impl, sizes):
    """Sequential submit(noop).result(): median and p99 latency in microseconds."""
    if impl in FLOOR_CASES:
        return pipe_pingpong(impl, sizes)
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
    return pool, latency_figures(samples, t)


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


# -- actors: poolx, Ray and Dask side by side -----------------------------------
# Each library is used the way its documentation shows; the timed loops call
# the library directly (``get_one`` and ``call`` are the library's own
# callables, not wrappers), so no adapter sits in the measured path.

# Seconds actor_retrieve waits at most for counts() to reach 6 after the last
# result: the tasks tell the tracker without waiting, so with Ray and Dask the
# last increment may still be on its way when the results are in.
TRACKER_DEADLINE_S = 5.0


class ActorSystem:
    """One library's actors and tasks behind the same few calls.

    new_actor(cls) -> handle; method(handle, name) -> a callable that starts a
    call and returns its pending result; get_one(pending) -> value;
    get_all(pendings) -> values; submit(fn, *args) -> a pending task result;
    gather(pending tasks) -> values; tracked_task: retrieve_tracked for this
    library's handles; start_method and close as for Pool.
    """

    def __init__(self, *, start_method, new_actor, method, get_one, get_all, submit, gather, close,
                 tracked_task, config):
        self.start_method = start_method
        self.new_actor = new_actor
        self.method = method
        self.get_one = get_one
        self.get_all = get_all
        self.submit = submit
        self.gather = gather
        self.close = close
        self.tracked_task = tracked_task
        self.config = config


def open_actor_system(impl, workers):
    if impl == "poolx":
        return poolx_actor_system(workers)
    if impl == "ray":
        return ray_actor_system(workers)
    if impl == "dask":
        return dask_actor_system(workers)
    raise SystemExit(f"{impl!r} does not run the actor cases; those that do: {', '.join(ACTOR_IMPLS)}")


def results_of(futures):
    return [f.result() for f in futures]


def poolx_actor_system(workers):
    """poolx.Executor(max_workers=workers), default settings; an actor is a process of its own."""
    import poolx

    ex = poolx.Executor(max_workers=workers)
    try:
        method = poolx_start_method(ex)
    except Exception:
        method = "unknown"
    return ActorSystem(start_method=method, new_actor=ex.actor,
                       method=lambda handle, name: getattr(handle, name).remote,
                       get_one=operator.methodcaller("result"), get_all=results_of, submit=ex.submit,
                       gather=results_of, close=lambda: ex.shutdown(wait=True),
                       tracked_task=w.retrieve_tracked, config=f"poolx.Executor(max_workers={workers})")


def ray_actor_system(workers):
    """A fresh local Ray cluster with ``workers`` CPUs; actors and tasks with Ray's default options.

    A default actor needs 1 CPU to be placed and 0 while it runs, so it does
    not take a task slot: ``workers`` tasks still run at once beside it.
    """
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    remote = {}

    def remote_of(obj):  # ray.remote once per function or class, as a decorator would
        if obj not in remote:
            remote[obj] = ray.remote(obj)
        return remote[obj]

    return ActorSystem(start_method="ray (raylet's worker processes)",
                       new_actor=lambda cls: remote_of(cls).remote(),
                       method=lambda handle, name: getattr(handle, name).remote,
                       get_one=ray.get, get_all=ray.get,
                       submit=lambda fn, *args: remote_of(fn).remote(*args), gather=ray.get,
                       close=ray.shutdown, tracked_task=w.retrieve_tracked,
                       config=f"ray.init(num_cpus={workers}, include_dashboard=False, "
                              "log_to_driver=False, configure_logging=False)")


def dask_actor_system(workers):
    """A LocalCluster of ``workers`` single-threaded worker processes; actors via ``actor=True``."""
    import dask
    import distributed

    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)

    def close():
        client.close()
        cluster.close()

    method = dask.config.get("distributed.worker.multiprocessing-method", "spawn")
    return ActorSystem(start_method=f"{method} (dask nanny)",
                       new_actor=lambda cls: client.submit(cls, actor=True).result(),
                       method=getattr, get_one=operator.methodcaller("result"), get_all=results_of,
                       submit=lambda fn, *args: client.submit(fn, *args, pure=False),
                       gather=client.gather, close=close, tracked_task=w.retrieve_tracked_dask,
                       config=f"LocalCluster(n_workers={workers}, threads_per_worker=1, processes=True, "
                              "dashboard_address=None)")


def warm_actor_system(system, workers):
    """As warm_up(): every worker runs a short sleeping task, then ten no-op round trips."""
    system.gather([system.submit(w.warm, WARM_SLEEP_S, False) for _ in range(2 * workers)])
    for _ in range(10):
        system.gather([system.submit(w.noop)])


def ready_counter(impl, sizes):
    """(system, counter, its increment caller, seconds to start the runtime, to ready the actor)."""
    t0 = time.perf_counter()
    system = open_actor_system(impl, WORKERS)
    t1 = time.perf_counter()
    counter = system.new_actor(w.Counter)
    call = system.method(counter, "increment")
    for _ in range(sizes["actor_warmup"]):
        system.get_one(call())
    return system, counter, call, t1 - t0, time.perf_counter() - t1


def case_actor_awaited(impl, sizes):
    """``n`` calls of Counter.increment, each awaited before the next: calls/s."""
    n, warmup = sizes["actor_calls"], sizes["actor_warmup"]
    system, _counter, call, start_s, ready_s = ready_counter(impl, sizes)
    get_one = system.get_one
    last = None
    with Timer() as t:
        for _ in range(n):
            last = get_one(call())
    check(last == warmup + n, f"the counter ended at {last}, not {warmup + n}")
    return system, {"value": n / t.seconds, "unit": "calls/s", "seconds": t.seconds, "n": n,
                    "runtime_start_s": start_s, "actor_ready_s": ready_s, "config": system.config,
                    "caller_cpu_s": t.cpu}


def case_actor_pipelined(impl, sizes):
    """``n`` calls of Counter.increment all started, then all results gathered: calls/s."""
    n, warmup = sizes["actor_calls"], sizes["actor_warmup"]
    system, _counter, call, start_s, ready_s = ready_counter(impl, sizes)
    with Timer() as t:
        pending = [call() for _ in range(n)]
        results = system.get_all(pending)
    expected = list(range(warmup + 1, warmup + n + 1))
    # Each call ran once; Dask does not promise that calls run in the order made.
    check(sorted(results) == expected, "wrong or missing counter values")
    return system, {"value": n / t.seconds, "unit": "calls/s", "seconds": t.seconds, "n": n,
                    "in_order": results == expected, "runtime_start_s": start_s, "actor_ready_s": ready_s,
                    "config": system.config, "caller_cpu_s": t.cpu}


def case_actor_retrieve(impl, sizes):
    """The retrieve example with a tracker actor: 6 tasks on 6 warm slots, all results and counts() == 6.

    Not timed, in this order: the measured tracker and a rehearsal tracker
    are created (an actor may take a worker process of its own: Ray's does,
    so creating it after the warm-up would leave a task without a warm
    worker), the measured one answers counts() == 0; every slot runs a
    sleeping task, ten no-op round trips; then one rehearsal of the whole
    example (the same 6 tasks and sleeps) on the rehearsal tracker, so each
    library has run the tracked function and seen how long it takes (Dask's
    scheduler places tasks by the durations it has seen).
    """
    workers, n = RETRIEVE_WORKERS, len(w.DATABASE)
    t0 = time.perf_counter()
    system = open_actor_system(impl, workers)
    start_s = time.perf_counter() - t0
    task, counts_of = system.tracked_task, system.method
    tracker = system.new_actor(w.DataTracker)
    rehearsal_tracker = system.new_actor(w.DataTracker)
    counts = counts_of(tracker, "counts")
    check(system.get_one(counts()) == 0, "a fresh tracker does not count 0")
    warm_actor_system(system, workers)
    results = system.gather([system.submit(task, i, rehearsal_tracker) for i in range(n)])
    check(results == list(enumerate(w.DATABASE)), "wrong retrieve results in the rehearsal")
    deadline = time.monotonic() + TRACKER_DEADLINE_S
    while system.get_one(counts_of(rehearsal_tracker, "counts")()) != n:
        check(time.monotonic() < deadline, "the rehearsal tracker never counted every task")
        time.sleep(0.01)
    polls = 0
    with Timer() as t:
        pending = [system.submit(task, i, tracker) for i in range(n)]
        results = system.gather(pending)
        deadline = time.monotonic() + TRACKER_DEADLINE_S
        while True:  # the tasks do not wait for their increment: poll until all 6 have landed
            count = system.get_one(counts())
            polls += 1
            if count == n or time.monotonic() > deadline:
                break
    check(results == list(enumerate(w.DATABASE)), "wrong retrieve results")
    check(count == n, f"the tracker counted {count}, not {n}")
    return system, {"value": t.seconds, "unit": "s", "seconds": t.seconds,
                    "overhead_ms": (t.seconds - RETRIEVE_IDEAL_S) * 1e3, "counts_polls": polls,
                    "runtime_start_s": start_s, "config": system.config, "caller_cpu_s": t.cpu}


# -- the multiprocessing.Pool API: poolx.Pool, multiprocessing.Pool, Ray's clone --
# Every peer gets the same call (the same chunksize argument, or none); the
# timed loops call the pool's own methods (``raw`` below), no adapter between.


def open_mp_api_pool(impl, workers):
    """A ``Pool`` face (submit, map, close, start method) over a multiprocessing.Pool-API pool.

    ``.raw`` is the pool itself: poolx.Pool, multiprocessing.Pool or
    ray.util.multiprocessing.Pool, with ``workers`` processes.
    """
    if impl in ("poolx", "poolx[fork]"):
        import poolx

        raw = poolx.Pool(workers) if impl == "poolx" else poolx.Pool(workers, context="fork")
        try:
            method = raw._executor._backend.context.get_start_method()
        except Exception:
            method = "unknown"
    elif impl == "multiprocessing.Pool":
        import multiprocessing

        raw, method = multiprocessing.Pool(workers), multiprocessing.get_start_method()
    elif impl == "multiprocessing.Pool[forkserver]":
        import multiprocessing

        raw, method = multiprocessing.get_context("forkserver").Pool(workers), "forkserver"
    elif impl == "ray":
        import ray
        import ray.util.multiprocessing

        # As the actor cases start Ray; the pool's actors take no CPU of their own.
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        raw, method = ray.util.multiprocessing.Pool(workers), "ray (one Ray actor per pool process)"
    else:
        raise SystemExit(f"{impl!r} does not run the pool cases; those that do: {', '.join(POOL_IMPLS)}")

    def close():
        raw.close()
        raw.join()
        if impl == "ray":
            import ray

            ray.shutdown()

    pool = Pool(submit=lambda fn, *args: Handle(raw.apply_async(fn, args).get), map_=raw.map, close=close,
                start_method=method)
    pool.raw = raw
    return pool


def ready_mp_api_pool(impl):
    """The pool of ``impl`` with WORKERS processes, warmed: warm_up(), then one small map."""
    pool = open_mp_api_pool(impl, WORKERS)
    warm_up(pool, WORKERS)
    check(pool.raw.map(w.inc, range(100)) == list(range(1, 101)), "wrong warm-up map results")
    return pool, pool.raw


def items_result(n, t):
    return {"value": n / t.seconds, "unit": "items/s", "seconds": t.seconds, "n": n, "caller_cpu_s": t.cpu}


def case_pool_map_tiny(impl, sizes):
    """``pool.map(inc, range(n))``, default chunksize (each pool's own heuristic): items/s."""
    n = sizes["pool_map_items"]
    pool, raw = ready_mp_api_pool(impl)
    with Timer() as t:
        results = raw.map(w.inc, range(n))
    check(results == list(range(1, n + 1)), "wrong map results")
    return pool, items_result(n, t)


def case_pool_imap_tiny(impl, sizes):
    """``list(pool.imap(inc, range(n), chunksize=1))``: items/s."""
    n = sizes["pool_imap_items"]
    pool, raw = ready_mp_api_pool(impl)
    with Timer() as t:
        results = list(raw.imap(w.inc, range(n), chunksize=1))
    check(results == list(range(1, n + 1)), "wrong imap results")
    return pool, items_result(n, t)


def case_pool_imap_unordered_tiny(impl, sizes):
    """``list(pool.imap_unordered(inc, range(n), chunksize=1))``: items/s."""
    n = sizes["pool_imap_items"]
    pool, raw = ready_mp_api_pool(impl)
    with Timer() as t:
        results = list(raw.imap_unordered(w.inc, range(n), chunksize=1))
    check(sorted(results) == list(range(1, n + 1)), "wrong imap_unordered results")
    return pool, items_result(n, t)


def case_pool_imap_chunked(impl, sizes):
    """``list(pool.imap(inc, range(n), chunksize=64))``: items/s."""
    n, chunksize = sizes["pool_imap_chunked_items"], sizes["pool_imap_chunksize"]
    pool, raw = ready_mp_api_pool(impl)
    with Timer() as t:
        results = list(raw.imap(w.inc, range(n), chunksize=chunksize))
    check(results == list(range(1, n + 1)), "wrong imap results")
    return pool, items_result(n, t)


def case_pool_apply_async(impl, sizes):
    """``n`` ``apply_async(inc, (i,))`` all made, then every ``.get()``: tasks/s."""
    n = sizes["pool_apply"]
    pool, raw = ready_mp_api_pool(impl)
    apply_async = raw.apply_async
    with Timer() as t:
        handles = [apply_async(w.inc, (i,)) for i in range(n)]
        results = [h.get() for h in handles]
    check(results == list(range(1, n + 1)), "wrong apply_async results")
    return pool, {"value": n / t.seconds, "unit": "tasks/s", "seconds": t.seconds, "n": n,
                  "caller_cpu_s": t.cpu}


def case_pool_small_tasks(impl, sizes):
    """``pool.map(small_task, range(n))``, ~1 ms of CPU each, default chunksize: seconds."""
    n = sizes["pool_small_tasks"]
    pool, raw = ready_mp_api_pool(impl)
    t0 = time.perf_counter()  # one task's length here, in the caller (not timed)
    for i in range(20):
        w.small_task(i)
    task_ms = (time.perf_counter() - t0) / 20 * 1e3
    with Timer() as t:
        results = raw.map(w.small_task, range(n))
    check(results == [w.small_task(i) for i in range(n)], "wrong small_task results")
    return pool, {"value": t.seconds, "unit": "s", "seconds": t.seconds, "n": n,
                  "task_ms": task_ms,
                  "ideal_s": n * task_ms / 1e3 / WORKERS, "caller_cpu_s": t.cpu}


def case_pool_apply_roundtrip(impl, sizes):
    """``apply_async(noop).get()`` one after another: median and p99 latency in microseconds."""
    pool, raw = ready_mp_api_pool(impl)
    apply_async = raw.apply_async
    for _ in range(sizes["pool_roundtrip_warmup"]):
        apply_async(w.noop).get()
    clock = time.perf_counter_ns
    samples = []
    with Timer() as t:
        for _ in range(sizes["pool_roundtrip"]):
            t0 = clock()
            apply_async(w.noop).get()
            samples.append(clock() - t0)
    samples.sort()
    us = [s / 1e3 for s in samples]
    p99 = us[min(len(us) - 1, round(0.99 * (len(us) - 1)))]
    return pool, {"value": statistics.median(us), "unit": "us", "p99_us": p99, "min_us": us[0],
                  "max_us": us[-1], "n": len(us), "seconds": t.seconds, "caller_cpu_s": t.cpu}


# -- joblib: poolx's backend beside joblib's own, Dask's and Ray's ---------------
# Every row is ``joblib.parallel_config(backend=JOBLIB_BACKENDS[impl], n_jobs=2)``
# around the timed code, which calls joblib (or scikit-learn) itself.  Dask's
# cluster and Ray's are started before any timer (their start is recorded as
# ``runtime_start_s``); what is left of a backend's start happens inside
# parallel_config, so joblib_gridsearch_first counts it.


class JoblibRun:
    """One joblib backend: ``config()`` enters it; ``start_method`` and ``close`` as for Pool.

    For dask and ray the constructor starts the cluster (not timed):
    a ``distributed.Client`` on a ``LocalCluster`` of WORKERS single-threaded
    worker processes, or ``ray.init(num_cpus=WORKERS)`` as for the actor cases.
    """

    def __init__(self, impl):
        self.impl = impl
        self.backend = JOBLIB_BACKENDS[impl]
        self.runtime_start_s = None
        self._stop = []
        self.config_text = f'parallel_config(backend="{self.backend}", n_jobs={WORKERS})'
        t0 = time.perf_counter()
        if impl == "dask":
            import dask
            import distributed

            cluster = distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                               dashboard_address=None)
            client = distributed.Client(cluster)
            self._stop = [client.close, cluster.close]
            client.wait_for_workers(WORKERS)  # the cluster is up: its workers are not the backend's to start
            method = dask.config.get("distributed.worker.multiprocessing-method", "spawn")
            self.start_method = f"{method} (dask nanny)"
            self.config_text += (f"; Client(LocalCluster(n_workers={WORKERS}, threads_per_worker=1, "
                                 "processes=True, dashboard_address=None))")
        elif impl == "ray":
            import ray
            from ray.util.joblib import register_ray

            register_ray()
            ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False, configure_logging=False)
            self._stop = [ray.shutdown]
            self.start_method = "ray (a Ray Pool of actors per Parallel call)"
            self.config_text += (f"; register_ray(); ray.init(num_cpus={WORKERS}, include_dashboard=False, "
                                 "log_to_driver=False, configure_logging=False)")
        elif impl == "multiprocessing.Pool":
            import multiprocessing

            self.start_method = f"{multiprocessing.get_start_method()} (a new Pool per Parallel call)"
        elif impl == "threading":
            self.start_method = "threads (a new ThreadPool per Parallel call)"
        elif impl == "loky":
            self.start_method = "loky"
        else:
            self.start_method = "unknown"  # poolx: read once its executor runs (warm_start_method)
        if self._stop:
            self.runtime_start_s = time.perf_counter() - t0

    def config(self):
        import joblib

        return joblib.parallel_config(backend=self.backend, n_jobs=WORKERS)

    def note_start_method(self):
        """poolx: the start method of the backend's own executor, while it is warm."""
        if self.impl == "poolx":
            try:
                import poolx.joblib

                self.start_method = poolx_start_method(poolx.joblib._shared.executor)
            except Exception:
                self.start_method = "unknown"

    def close(self):
        """Stop the warm workers (poolx's, loky's) or the cluster (Dask's, Ray's)."""
        if self.impl == "poolx":
            import poolx.joblib

            poolx.joblib.shutdown_workers(wait=True)
        elif self.impl == "loky":
            from joblib.externals.loky import reusable_executor

            executor = reusable_executor._executor  # joblib's loky workers, warm since the first call
            if executor is not None:
                executor.shutdown(wait=True)
        for stop in self._stop:
            stop()


def joblib_digits(sizes):
    """scikit-learn's bundled digits (1,797 8x8 images; no download), the first ``joblib_digits``."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    n = sizes["joblib_digits"]
    return X[:n], y[:n]


def grid_search(X, y):
    """``GridSearchCV(SVC(), JOBLIB_GRID, cv=3).fit(X, y)``; its n_jobs comes from parallel_config."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    search = GridSearchCV(SVC(), JOBLIB_GRID, cv=JOBLIB_CV)
    search.fit(X, y)
    return search.best_score_


def case_joblib_gridsearch_warm(impl, sizes):
    """Grid-search fits on warm workers: the median seconds per fit of ``joblib_fits`` timed fits.

    Not timed: the serial fit (the reference best_score_), the cluster (dask,
    ray) and one fit inside parallel_config that starts the backend's workers.
    """
    X, y = joblib_digits(sizes)
    serial = grid_search(X, y)  # outside parallel_config: n_jobs=None, joblib's sequential backend
    run = JoblibRun(impl)
    fits, cpus = [], []
    with run.config():
        check(grid_search(X, y) == serial, "the untimed fit's best_score_ differs from the serial one")
        run.note_start_method()
        for _ in range(sizes["joblib_fits"]):
            with Timer() as t:
                score = grid_search(X, y)
            check(score == serial, f"best_score_ {score} differs from the serial fit's {serial}")
            fits.append(t.seconds)
            cpus.append(t.cpu)
    return run, {"value": statistics.median(fits), "unit": "s", "min_s": min(fits), "max_s": max(fits),
                 "fits_s": fits, "best_score": serial, "samples": len(y),
                 "runtime_start_s": run.runtime_start_s, "config": run.config_text,
                 "caller_cpu_s": statistics.median(cpus)}


def case_joblib_gridsearch_first(impl, sizes):
    """The first grid-search fit in this process: from entering parallel_config to the end of the fit.

    Imports, the data and the serial reference fit come first, and for dask
    and ray the cluster (``runtime_start_s``); the timer counts whatever else
    the backend starts (its worker processes, their imports, Ray's actors).
    """
    X, y = joblib_digits(sizes)
    serial = grid_search(X, y)
    run = JoblibRun(impl)
    with Timer() as t:
        with run.config():
            score = grid_search(X, y)
    check(score == serial, f"best_score_ {score} differs from the serial fit's {serial}")
    run.note_start_method()
    return run, {"value": t.seconds, "unit": "s", "best_score": serial, "samples": len(y),
                 "runtime_start_s": run.runtime_start_s, "config": run.config_text, "caller_cpu_s": t.cpu}


def case_joblib_tiny(impl, sizes):
    """``Parallel(n_jobs=2)(delayed(square)(i) for i in range(n))`` after one untimed call: seconds.

    Each item is far too small for a task of its own: joblib's automatic
    batching decides the speed.  ``batches`` is how many the timed call sent.
    """
    import joblib

    n = sizes["joblib_tiny_items"]
    expected = sum(i * i for i in range(n))
    run = JoblibRun(impl)
    with run.config():
        check(sum(joblib.Parallel(n_jobs=WORKERS)(joblib.delayed(w.square)(i) for i in range(n))) == expected,
              "wrong sum in the untimed call")
        run.note_start_method()
        parallel = joblib.Parallel(n_jobs=WORKERS)
        with Timer() as t:
            results = parallel(joblib.delayed(w.square)(i) for i in range(n))
    check(len(results) == n and sum(results) == expected, "wrong joblib_tiny results")
    return run, {"value": t.seconds, "unit": "s", "seconds": t.seconds, "n": n, "items_per_s": n / t.seconds,
                 "batches": parallel.n_dispatched_batches, "runtime_start_s": run.runtime_start_s,
                 "config": run.config_text, "caller_cpu_s": t.cpu}


def import_joblib_libraries(case, impl):
    """What a joblib case needs on ``impl``, imported before any timer; ImportError names what is missing."""
    import joblib

    if case != "joblib_tiny":
        import sklearn.datasets
        import sklearn.model_selection
        import sklearn.svm  # noqa: F401
    if impl == "poolx":
        import poolx.joblib  # noqa: F401  (registers the "poolx" backend)
    elif impl == "dask":
        import dask  # noqa: F401
        import distributed  # noqa: F401
        import joblib._dask  # noqa: F401  (joblib's "dask" backend)
    elif impl == "ray":
        import ray
        import ray.util.joblib  # noqa: F401


# -- transfer: a 200 MB array between processes -----------------------------------
# The same task functions (``total``, ``cached_array`` in _workloads.py) for
# every implementation; the timed loops call the library's own call for one
# task (``call`` below is that call and nothing else), each call waited for
# before the next.


class TransferSystem:
    """One implementation of the transfer cases behind the same few calls.

    call(fn, *args) -> the task's result, waited for; put(obj) -> a ref to
    pass as an argument, or None where the library has no put; spread(fn,
    *args) -> the results of ``2 x workers`` calls made at once, so that every
    worker runs one; start_method, config and close as for Pool.
    """

    def __init__(self, *, call, put, spread, close, start_method, config):
        self.call = call
        self.put = put
        self.spread = spread
        self.close = close
        self.start_method = start_method
        self.config = config


def open_transfer_system(impl, workers, reuse=False):
    """The system of ``impl``; ``reuse``: joblib keeps one Parallel open across calls (issue 23's form)."""
    if impl == "joblib" and reuse:
        return joblib_reused_system(workers)
    if impl == "poolx":
        import poolx

        ex = poolx.Executor(max_workers=workers)
        try:
            method = poolx_start_method(ex)
        except Exception:
            method = "unknown"

        def call(fn, *args):
            return ex.submit(fn, *args).result()

        def spread(fn, *args):
            return results_of([ex.submit(fn, *args) for _ in range(2 * workers)])

        return TransferSystem(call=call, put=ex.put, spread=spread, close=lambda: ex.shutdown(wait=True),
                              start_method=method, config=f"poolx.Executor(max_workers={workers})")
    if impl == "poolx.remote":
        import poolx

        ex = poolx.init(num_cpus=workers)
        remotes = {}

        def remote_fn(fn):  # poolx.remote once per function, as a decorator would
            if fn not in remotes:
                remotes[fn] = poolx.remote(fn)
            return remotes[fn]

        def call(fn, *args):
            return poolx.get(remote_fn(fn).remote(*args))

        def spread(fn, *args):
            return poolx.get([remote_fn(fn).remote(*args) for _ in range(2 * workers)])

        return TransferSystem(call=call, put=poolx.put, spread=spread, close=poolx.shutdown,
                              start_method=poolx_start_method(ex),
                              config=f"poolx.init(num_cpus={workers}); poolx.remote(fn).remote(...)")
    if impl == "ray":
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # quiet and offline
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        remote = {}

        def remote_of(fn):  # ray.remote once per function, as a decorator would
            if fn not in remote:
                remote[fn] = ray.remote(fn)
            return remote[fn]

        def call(fn, *args):
            return ray.get(remote_of(fn).remote(*args))

        def spread(fn, *args):
            return ray.get([remote_of(fn).remote(*args) for _ in range(2 * workers)])

        return TransferSystem(call=call, put=ray.put, spread=spread, close=ray.shutdown,
                              start_method="ray (raylet's worker processes)",
                              config=f"ray.init(num_cpus={workers}, include_dashboard=False, "
                                     "log_to_driver=False, configure_logging=False)")
    if impl == "joblib":
        import joblib

        def call(fn, *args):
            return joblib.Parallel(n_jobs=workers, backend="loky")([joblib.delayed(fn)(*args)])[0]

        def spread(fn, *args):
            return joblib.Parallel(n_jobs=workers, backend="loky")(
                joblib.delayed(fn)(*args) for _ in range(2 * workers))

        def close():
            from joblib.externals.loky import reusable_executor

            executor = reusable_executor._executor  # joblib's loky workers, warm since the first call
            if executor is not None:
                executor.shutdown(wait=True)

        return TransferSystem(call=call, put=None, spread=spread, close=close,
                              start_method="loky (joblib's reusable executor)",
                              config=f'joblib.Parallel(n_jobs={workers}, backend="loky"), max_nbytes="1M" '
                                     "(default): a new Parallel per call, on the same warm workers")
    if impl == "multiprocessing.Pool[forkserver]":
        import multiprocessing

        pool = multiprocessing.get_context("forkserver").Pool(workers)

        def spread(fn, *args):
            return [r.get() for r in [pool.apply_async(fn, args) for _ in range(2 * workers)]]

        def close():
            pool.close()
            pool.join()

        return TransferSystem(call=lambda fn, *args: pool.apply(fn, args), put=None, spread=spread,
                              close=close, start_method="forkserver",
                              config=f'multiprocessing.get_context("forkserver").Pool({workers}); pool.apply')
    raise SystemExit(f"{impl!r} does not run the transfer cases; those that do: {', '.join(TRANSFER_IMPLS)}")


def joblib_reused_system(workers):
    """One ``joblib.Parallel`` entered once and called for every call: a warm, reused joblib.

    Inside one Parallel context joblib's memory-mapping reducer remembers the
    arrays it dumped (by identity), so the same array passed again is not
    written again: the form in which the issue measured joblib at 6.7 GB/s.
    """
    import joblib

    parallel = joblib.Parallel(n_jobs=workers, backend="loky")
    parallel.__enter__()

    def call(fn, *args):
        return parallel([joblib.delayed(fn)(*args)])[0]

    def spread(fn, *args):
        return parallel(joblib.delayed(fn)(*args) for _ in range(2 * workers))

    def close():
        from joblib.externals.loky import reusable_executor

        parallel.__exit__(None, None, None)
        executor = reusable_executor._executor
        if executor is not None:
            executor.shutdown(wait=True)

    return TransferSystem(call=call, put=None, spread=spread, close=close,
                          start_method="loky (joblib's reusable executor)",
                          config=f'with joblib.Parallel(n_jobs={workers}, backend="loky") as parallel: '
                                 'parallel([delayed(fn)(arr)]) per call, max_nbytes="1M" (default)')


def driver_sums_s(arr, calls):
    """The compute baseline: ``calls`` sums of ``arr`` here, in memory; the median of a few runs, in s."""
    runs = []
    for _ in range(TRANSFER_BASELINE_RUNS):
        t0 = time.perf_counter()
        for _ in range(calls):
            float(arr.sum())
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def transfer_figures(nbytes, wall_s, baseline_s):
    """Effective GB/s (``nbytes`` over the wall time less the baseline), and GB/s over the wall time.

    Where the calls took less than TRANSFER_FLOOR_S longer than the baseline
    (none of the time is left for moving the data), that floor is used
    instead and ``clamped`` says so.
    """
    moved_s = wall_s - baseline_s
    clamped = moved_s < TRANSFER_FLOOR_S
    moved_s = max(moved_s, TRANSFER_FLOOR_S)
    return {"value": nbytes / moved_s / 1e9, "unit": "GB/s", "wall_gb_s": nbytes / wall_s / 1e9,
            "seconds": wall_s, "baseline_s": baseline_s, "moved_s": moved_s, "clamped": clamped}


def run_transfer(impl, sizes, kind):
    """One transfer case: ``kind`` is "args", "returns" or "put".

    Not timed, in this order: the array, built here (every page written) and
    summed for the expected result; the pool or cluster (``runtime_start_s``);
    the warm-up, one call exactly as a timed one (put: a put and one call on
    its ref), timed by itself as ``warmup_s``: the cold cost, whatever the
    library starts on its first call; every worker readied (numpy imported,
    and for returns the worker's cached array built); the baseline, the same
    sums in this process on the array in memory.  Then ``calls`` timed calls
    (put: the put and the calls).
    """
    n, calls = sizes["transfer_elements"], sizes["transfer_calls"]
    arr = w.transfer_array(n)
    expected = float(arr.sum())
    # Issue 23's forms: the same array to a reused system, or a new array built in every task.
    wall_headline = kind in ("args_wall", "returns_fresh")
    returns_fn = w.fresh_array if kind == "returns_fresh" else w.cached_array
    kind = {"args_wall": "args", "returns_fresh": "returns"}.get(kind, kind)
    t0 = time.perf_counter()
    system = open_transfer_system(impl, WORKERS, reuse=wall_headline)
    start_s = time.perf_counter() - t0
    call, put = system.call, (system.put if kind == "put" else None)
    clock = time.perf_counter

    t0 = clock()
    if kind == "returns":
        r = call(returns_fn, n)
        first = float(r.sum())
        del r
    elif put is not None:
        ref = put(arr)
        first = call(w.total, ref)
        del ref
    else:
        first = call(w.total, arr)
    warmup_s = clock() - t0
    check(first == expected, f"the warm-up call's sum {first} is not {expected}")
    cached = kind == "returns" and returns_fn is w.cached_array  # the worker builds its array now
    pids = system.spread(w.warm_transfer, WARM_SLEEP_S, n if cached else 0)
    baseline_s = driver_sums_s(arr, calls)

    sums, call_s, put_s, arg = [], [], None, None
    with Timer() as t:
        if kind == "returns":
            for _ in range(calls):
                c0 = clock()
                r = call(returns_fn, n)
                sums.append(float(r.sum()))  # the driver consumes it, then drops it
                del r
                call_s.append(clock() - c0)
        else:
            if put is not None:
                c0 = clock()
                arg = put(arr)
                put_s = clock() - c0
            else:
                arg = arr  # no put: the array itself, every call
            for _ in range(calls):
                c0 = clock()
                sums.append(call(w.total, arg))
                call_s.append(clock() - c0)
    del arg  # put: the ref, dropped before the shutdown
    check(sums == [expected] * calls, f"wrong sums: {sums}, expected {expected} each")
    figures = transfer_figures(calls * arr.nbytes, t.seconds, baseline_s)
    if wall_headline:  # the figure: the wall time, the sums included
        figures.update(value=figures["wall_gb_s"], effective_gb_s=figures["value"])
    return system, {**figures,
                    "warmup_s": warmup_s, "bytes": calls * arr.nbytes, "array_bytes": arr.nbytes,
                    "calls": calls, "calls_s": call_s, "put_s": put_s, "put": put is not None,
                    "warmed_workers": len(set(pids)), "runtime_start_s": start_s, "config": system.config,
                    "caller_cpu_s": t.cpu}


def case_transfer_args(impl, sizes):
    """The array as the argument of ``total`` (returns its sum), ``calls`` times: effective GB/s."""
    return run_transfer(impl, sizes, "args")


def case_transfer_returns(impl, sizes):
    """``cached_array(n)`` (the worker's cached array) returned ``calls`` times, summed here: GB/s."""
    return run_transfer(impl, sizes, "returns")


def case_transfer_put(impl, sizes):
    """The array put once, its ref passed to ``total`` ``calls`` times (no put: the array): GB/s."""
    return run_transfer(impl, sizes, "put")


def case_transfer_args_wall(impl, sizes):
    """Issue 23: the same array to ``total`` ``calls`` times on a warm, reused system: wall GB/s."""
    return run_transfer(impl, sizes, "args_wall")


def case_transfer_returns_fresh(impl, sizes):
    """Issue 23: a new array built in the task and returned, ``calls`` times, summed here: wall GB/s."""
    return run_transfer(impl, sizes, "returns_fresh")


def import_transfer_libraries(impl):
    """numpy and what ``impl`` needs, before any timer; ImportError names what is missing."""
    import numpy  # noqa: F401

    if impl == "joblib":
        import joblib  # noqa: F401
    elif impl == "poolx.remote":
        import poolx  # noqa: F401
    elif impl == "ray":
        import ray  # noqa: F401
    else:
        import_libraries(impl)


CASES = {
    "startup": case_startup,
    "startup_next": case_startup_next,
    "tasks": case_tasks,
    "map": case_map,
    "map_2k": case_map_2k,
    "map_200k": case_map_200k,
    "map_2m": case_map_2m,
    "roundtrip": case_roundtrip,
    "pi": case_pi,
    "retrieve": case_retrieve,
    "actor_awaited": case_actor_awaited,
    "actor_pipelined": case_actor_pipelined,
    "actor_retrieve": case_actor_retrieve,
    "pool_map_tiny": case_pool_map_tiny,
    "pool_imap_tiny": case_pool_imap_tiny,
    "pool_imap_unordered_tiny": case_pool_imap_unordered_tiny,
    "pool_imap_chunked": case_pool_imap_chunked,
    "pool_apply_async": case_pool_apply_async,
    "pool_small_tasks": case_pool_small_tasks,
    "pool_apply_roundtrip": case_pool_apply_roundtrip,
    "joblib_gridsearch_warm": case_joblib_gridsearch_warm,
    "joblib_gridsearch_first": case_joblib_gridsearch_first,
    "joblib_tiny": case_joblib_tiny,
    "transfer_args": case_transfer_args,
    "transfer_returns": case_transfer_returns,
    "transfer_put": case_transfer_put,
    "transfer_args_wall": case_transfer_args_wall,
    "transfer_returns_fresh": case_transfer_returns_fresh,
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
    if case in ACTOR_CASES:
        refused = impl not in ACTOR_IMPLS
    elif case in POOL_CASES:
        refused = impl not in POOL_IMPLS
    elif case in JOBLIB_CASES:
        refused = impl not in JOBLIB_IMPLS
    elif case in TRANSFER_CASES:
        refused = impl not in TRANSFER_IMPLS
    elif impl in FLOOR_CASES:
        refused = FLOOR_CASES[impl] != case
    else:
        refused = impl in OPTIONAL_IMPLS or impl in JOBLIB_ONLY_IMPLS or impl in TRANSFER_ONLY_IMPLS
    if refused and impl in FLOOR_CASES:
        raise SystemExit(f"{impl} is a floor of {FLOOR_CASES[impl]} alone, not of {case}")
    if refused:
        raise SystemExit(f"{impl} does not run {case}: the actor cases ({', '.join(ACTOR_CASES)}) "
                         f"run {', '.join(ACTOR_IMPLS)}; the pool cases ({', '.join(POOL_CASES)}) run "
                         f"{', '.join(POOL_IMPLS)}; the joblib cases ({', '.join(JOBLIB_CASES)}) run "
                         f"{', '.join(JOBLIB_IMPLS)}; the transfer cases ({', '.join(TRANSFER_CASES)}) run "
                         f"{', '.join(TRANSFER_IMPLS)}; ray and dask run only those, threading only the "
                         "joblib cases, joblib only the transfer cases")
    sizes = QUICK if "--quick" in argv else FULL
    if case in JOBLIB_CASES:
        # joblib, scikit-learn (grid search), Dask and Ray are all optional here.
        try:
            import_joblib_libraries(case, impl)
        except ImportError as exc:
            emit({"case": case, "impl": impl,
                  "skipped": f"{exc.name or 'a module it needs'} cannot be imported "
                             f"({type(exc).__name__}: {exc})"})
            return
    elif case in TRANSFER_CASES:
        # numpy is needed, and joblib or Ray by their rows; all are optional here.
        try:
            import_transfer_libraries(impl)
        except ImportError as exc:
            emit({"case": case, "impl": impl,
                  "skipped": f"{exc.name or 'a module it needs'} cannot be imported "
                             f"({type(exc).__name__}: {exc})"})
            return
    elif impl in OPTIONAL_IMPLS:
        try:
            import_libraries(impl)
        except Exception as exc:  # optional: record why, do not fail
            emit({"case": case, "impl": impl,
                  "skipped": f"{OPTIONAL_IMPLS[impl]} cannot be imported ({type(exc).__name__}: {exc})"})
            return
    elif impl not in FLOOR_CASES:  # a floor imports no library
        import_libraries(impl)
    pool, result = CASES[case](impl, sizes)
    # The result goes out before shutdown, so a hang in shutdown still leaves it.
    emit({"case": case, "impl": impl, "start_method": pool.start_method, "pid": os.getpid(), **result})
    t0 = time.perf_counter()
    pool.close()
    emit({"shutdown_ms": (time.perf_counter() - t0) * 1e3})


if __name__ == "__main__":
    main(sys.argv[1:])
