"""The overhead poolx's cluster backends add over native Dask and native Ray, as ratios.

    python benchmarks/cluster.py [--quick] [--engines dask,ray] [--cases a,b] [--repeats N]
                                 [--wait-idle S] [--timeout S] [--json PATH] [--markdown PATH]

The same work runs twice on the same engine in the same run: once through
``poolx.Executor(2, backend="dask", address=...)`` / ``poolx.Executor(2, backend="ray")``,
once through the engine's own API, written the way its users write it.  The
headline is poolx's median time over the native median; the goal is at most
1.10x (poolx's layer adds at most 10%) on every case.

One Dask cluster for all the Dask cases, ``LocalCluster(n_workers=2,
threads_per_worker=1, processes=True, dashboard_address=None)``: poolx gets its
scheduler address, the native side a ``Client`` of its own on it.  Then, that
cluster closed (so neither engine's idle processes run beside the other's
measurements), one ``ray.init(address="local", num_cpus=2,
include_dashboard=False)`` for all the Ray cases, which poolx uses as it finds
it.  Each case runs poolx and native once untimed (the warm-up), then
``--repeats`` timed runs of each, alternating which goes first; medians are
reported.  What a case needs before its timer (the big array, the actor) is
not timed.  ``CASE_TEXT`` below says what each case runs on each side; the
map case gives the native side the same chunks poolx makes, so its ratio
measures poolx's layer, not a different chunking.

Functions and the actor class live in ``_cluster_work.py``, beside this
script, which the workers import: this folder and the checkout's root (so the
workers import the poolx of this checkout, as this script does from a clone
installed with ``pip install -e .``) are put on the ``PYTHONPATH`` the workers
inherit before the cluster and Ray start.

A full run (5 repeats) takes about 5 minutes on 2 cores; ``--quick`` (small
sizes, 1 repeat) under a minute.  Exit status 1 when a measurement failed (a
poolx case recorded as n/a, its backend having no actors, does not count) or
processes were left behind; 0 otherwise, whatever the ratios.
"""

import argparse
import datetime
import functools
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path

import _cluster_work as w  # beside this script, which Python puts first on sys.path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# What the workers inherit: this checkout's poolx first (an editable install
# may point at another checkout), then this folder for _cluster_work (Ray's
# workers, and Dask's: spawned processes that inherit the environment).
_PATHS = ([str(REPO)] if (REPO / "poolx" / "__init__.py").is_file() else []) + [str(HERE)]
os.environ["PYTHONPATH"] = os.pathsep.join([*_PATHS, *filter(None, [os.environ.get("PYTHONPATH")])])
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

WORKERS = 2  # Dask worker processes, Ray CPUs, poolx's max_workers
GOAL = 1.10  # poolx's median over the native median, at most
DEFAULT_REPEATS = 5
QUICK_REPEATS = 1
TIMEOUT_S = 120.0  # waiting for a result, at most (a hang is recorded as an error, not waited for)
CLOSE_TIMEOUT_S = 60.0  # poolx's shutdown, at most (a hang is reported, and the run goes on)
# With --wait-idle: a measurement waits until other processes use less than
# this many cores, looked at over IDLE_PROBE_S at a time.
IDLE_CORES = 0.1
IDLE_PROBE_S = 0.5

CASES = ["small_tasks", "map", "medium_tasks", "chain", "large_arg", "actor"]
ENGINES = ["dask", "ray"]

# Task lengths, in turns of _cluster_work.spin's loop: a fixed amount of work,
# the same in every run (30,000 turns took 0.96 ms on the 2-core machine the
# suite was written on, as _workloads.SMALL_TASK_LOOPS; the run measures and
# reports what they take on its machine).
SMALL_LOOPS = 30_000  # ~1 ms: small_tasks, and each link of the chain
ITEM_LOOPS = 3_000  # ~0.1 ms: one map item
MEDIUM_LOOPS = 1_500_000  # ~50 ms: medium_tasks
NOMINAL_MS = {"small": 1.0, "item": 0.1, "medium": 50.0}

# Sizes, chosen so that one measurement takes 0.5 to 3 s with 2 workers (the
# medium tasks about 0.4 s: 16 tasks of 50 ms, as the case is defined).
# actor_calls is per engine: Ray's actor takes 500 pipelined calls in ~0.1 s.
FULL = {"small_tasks": 600, "map_items": 20_000, "map_chunksize": 500, "medium_per_worker": 8,
        "chain_links": 50, "chains": 5, "large_tasks": 40, "large_mb": 10,
        "actor_calls": {"dask": 500, "ray": 2_500}}
QUICK = {"small_tasks": 200, "map_items": 4_000, "map_chunksize": 250, "medium_per_worker": 2,
         "chain_links": 50, "chains": 1, "large_tasks": 4, "large_mb": 10,
         "actor_calls": {"dask": 100, "ray": 500}}

# What each case runs on each side; {placeholders} come from the sizes.
CASE_TEXT = {
    "small_tasks": (
        "{small_tasks:,} tasks of ~1 ms of CPU submitted one by one, then every result",
        {"poolx": "`[ex.submit(spin, loops, i) ...]`, then `f.result()` for each",
         "dask": "`[client.submit(spin, loops, i, pure=False) ...]`, then `client.gather(futures)`",
         "ray": "`[spin.remote(loops, i) ...]` (`ray.remote(spin)`), then `ray.get(refs)`"}),
    "map": (
        "{map_items:,} items of ~0.1 ms each, in chunks of {map_chunksize}",
        {"poolx": "`list(ex.map(partial(map_item, loops=loops), items, chunksize={map_chunksize}))`",
         "dask": "items cut into lists of {map_chunksize} (timed), `client.map(map_chunk, chunks, "
                 "loops=loops, pure=False)`, `client.gather`, the lists joined",
         "ray": "items cut into lists of {map_chunksize} (timed), `ray.get([map_chunk.remote(c, loops) "
                "for c in chunks])`, the lists joined"}),
    "medium_tasks": (
        "{medium_tasks} tasks ({medium_per_worker} x {workers} workers x 2) of ~50 ms of CPU: "
        "near-pure compute",
        {"poolx": "as small_tasks", "dask": "as small_tasks", "ray": "as small_tasks"}),
    "chain": (
        "{chains} chain(s) of {chain_links} dependent tasks (~1 ms each), one after another: "
        "each task gets the previous one's future",
        {"poolx": "`f = ex.submit(link, f, loops)` (poolx resolves the future in the driver, then sends "
                  "the value), the last `f.result()`",
         "dask": "`f = client.submit(link, f, loops, pure=False)` (the scheduler resolves it on the "
                 "cluster), the last `f.result()`",
         "ray": "`ref = link.remote(ref, loops)` (an ObjectRef argument, resolved by Ray), "
                "`ray.get` of the last"}),
    "large_arg": (
        "{large_tasks} tasks, each getting a {large_mb} MB float64 array (the same one, built before "
        "the timer) and returning its sum, all submitted, then every result",
        {"poolx": "`ex.submit(total, arr)`", "dask": "`client.submit(total, arr, pure=False)`",
         "ray": "`total.remote(arr)` (Ray puts the array in its object store for every call)"}),
    "actor": (
        "pipelined calls to one actor's method (Dask {actor_calls_dask:,}, Ray {actor_calls_ray:,}): "
        "all made, then every result, checked in order (the actor made before the timer)",
        {"poolx": "`h = ex.actor(Counter)`, `[h.increment.remote() ...]`, `f.result()` for each",
         "dask": "`a = client.submit(Counter, actor=True).result()`, `[a.increment() ...]`, "
                 "`.result()` for each (Dask does not promise the order: only the set of values is "
                 "checked, `in_order` says whether they came in order)",
         "ray": "`a = ray.remote(Counter).remote()`, `ray.get([a.increment.remote() ...])`"}),
}


class Failed(Exception):
    """A measurement failed: a wrong result, an error or a timeout."""


class NoActors(Exception):
    """``ex.actor`` raised: the backend runs no actors (yet), and the case is n/a for poolx."""


def check(ok, message):
    if not ok:
        raise Failed(message)


# -- task lengths ----------------------------------------------------------------


def task_lengths():
    """What one task of each length takes here, in ms: the fastest of a few calls in this process
    (for the report only: the loop counts are fixed)."""
    out = {}
    for name, loops in (("small", SMALL_LOOPS), ("item", ITEM_LOOPS), ("medium", MEDIUM_LOOPS)):
        best = float("inf")
        for _ in range(3 if loops > 100_000 else 9):
            t0 = time.perf_counter()
            w.spin(loops, 1)
            best = min(best, time.perf_counter() - t0)
        out[name] = round(best * 1e3, 3)
    return out


# -- the two sides ------------------------------------------------------------------
# Each side has one method per case: it takes the case's parameters, does what
# is not timed, and returns the timed body: a function of the time limit that
# runs the case and returns its result, which the caller checks.


class PoolxSide:
    name = "poolx"

    def __init__(self, engine, address):
        import poolx

        kwargs = {"address": address} if engine == "dask" else {}
        self.ex = poolx.Executor(WORKERS, backend=engine, **kwargs)
        self.actor_handle = None

    def tasks(self, p, loops, n):
        ex = self.ex

        def body(timeout):
            futures = [ex.submit(w.spin, loops, i) for i in range(n)]
            return [f.result(timeout=timeout) for f in futures]

        return body

    def map(self, p, loops):
        ex, fn = self.ex, functools.partial(w.map_item, loops=loops)
        items = range(p["map_items"])

        def body(timeout):
            return list(ex.map(fn, items, chunksize=p["map_chunksize"], timeout=timeout))

        return body

    def chain(self, p, loops):
        ex = self.ex

        def body(timeout):
            ends = []
            for _ in range(p["chains"]):
                f = ex.submit(w.link, 0, loops)
                for _ in range(p["chain_links"] - 1):
                    f = ex.submit(w.link, f, loops)
                ends.append(f.result(timeout=timeout))
            return ends

        return body

    def large_arg(self, p, arr):
        ex = self.ex

        def body(timeout):
            futures = [ex.submit(w.total, arr) for _ in range(p["large_tasks"])]
            return [f.result(timeout=timeout) for f in futures]

        return body

    def actor(self, p, n):
        try:
            h = self.actor_handle = self.ex.actor(w.Counter)
        except Exception as exc:
            raise NoActors(f"ex.actor(Counter) raised {type(exc).__name__}: {exc}") from exc
        check(h.increment.remote().result(timeout=60) == 1, "the actor's first call did not return 1")
        state = {"count": 1}

        def body(timeout):
            futures = [h.increment.remote() for _ in range(n)]
            values = [f.result(timeout=timeout) for f in futures]
            start, state["count"] = state["count"], state["count"] + n
            check(values == list(range(start + 1, start + n + 1)),
                  f"actor results out of order or wrong: {values[:5]}...")
            return n

        return body

    def close_actor(self):
        if self.actor_handle is not None:
            handle, self.actor_handle = self.actor_handle, None
            self.ex.kill(handle)

    def close(self):
        self.ex.shutdown(wait=True)


class DaskSide:
    name = "native"

    def __init__(self, cluster):
        import distributed

        self.distributed = distributed
        self.client = distributed.Client(cluster)
        self.actor_future = None

    def wait(self, futures, timeout):
        self.distributed.wait(futures, timeout=timeout)  # raises TimeoutError past the limit
        return futures

    def tasks(self, p, loops, n):
        client = self.client

        def body(timeout):
            futures = [client.submit(w.spin, loops, i, pure=False) for i in range(n)]
            return client.gather(self.wait(futures, timeout))

        return body

    def map(self, p, loops):
        client, size = self.client, p["map_chunksize"]
        items = range(p["map_items"])

        def body(timeout):
            chunks = [list(items[i:i + size]) for i in range(0, len(items), size)]
            futures = client.map(w.map_chunk, chunks, loops=loops, pure=False)
            return [x for part in client.gather(self.wait(futures, timeout)) for x in part]

        return body

    def chain(self, p, loops):
        client = self.client

        def body(timeout):
            ends = []
            for _ in range(p["chains"]):
                f = client.submit(w.link, 0, loops, pure=False)
                for _ in range(p["chain_links"] - 1):
                    f = client.submit(w.link, f, loops, pure=False)
                ends.append(f.result(timeout=timeout))
            return ends

        return body

    def large_arg(self, p, arr):
        client = self.client

        def body(timeout):
            futures = [client.submit(w.total, arr, pure=False) for _ in range(p["large_tasks"])]
            return client.gather(self.wait(futures, timeout))

        return body

    def actor(self, p, n):
        self.actor_future = self.client.submit(w.Counter, actor=True)
        a = self.actor_future.result(timeout=60)
        check(a.increment().result(timeout=60) == 1, "the actor's first call did not return 1")
        state = {"count": 1, "in_order": []}

        def body(timeout):
            calls = [a.increment() for _ in range(n)]
            values = [c.result(timeout=timeout) for c in calls]
            start, state["count"] = state["count"], state["count"] + n
            expected = list(range(start + 1, start + n + 1))
            check(sorted(values) == expected, f"actor results wrong: {sorted(values)[:5]}...")
            state["in_order"].append(values == expected)
            return n

        body.state = state
        return body

    def close_actor(self):
        self.actor_future = None  # the last reference: Dask deletes the actor

    def close(self):
        self.client.close()


class RaySide:
    name = "native"

    def __init__(self):
        import ray

        self.ray = ray
        self.spin = ray.remote(w.spin)
        self.map_chunk = ray.remote(w.map_chunk)
        self.link = ray.remote(w.link)
        self.total = ray.remote(w.total)
        self.actor_handle = None

    def tasks(self, p, loops, n):
        ray, spin = self.ray, self.spin

        def body(timeout):
            return ray.get([spin.remote(loops, i) for i in range(n)], timeout=timeout)

        return body

    def map(self, p, loops):
        ray, remote, size = self.ray, self.map_chunk, p["map_chunksize"]
        items = range(p["map_items"])

        def body(timeout):
            chunks = [list(items[i:i + size]) for i in range(0, len(items), size)]
            parts = ray.get([remote.remote(c, loops) for c in chunks], timeout=timeout)
            return [x for part in parts for x in part]

        return body

    def chain(self, p, loops):
        ray, link = self.ray, self.link

        def body(timeout):
            ends = []
            for _ in range(p["chains"]):
                ref = link.remote(0, loops)
                for _ in range(p["chain_links"] - 1):
                    ref = link.remote(ref, loops)
                ends.append(ray.get(ref, timeout=timeout))
            return ends

        return body

    def large_arg(self, p, arr):
        ray, total = self.ray, self.total

        def body(timeout):
            return ray.get([total.remote(arr) for _ in range(p["large_tasks"])], timeout=timeout)

        return body

    def actor(self, p, n):
        ray = self.ray
        a = self.actor_handle = ray.remote(w.Counter).remote()
        check(ray.get(a.increment.remote(), timeout=60) == 1, "the actor's first call did not return 1")
        state = {"count": 1}

        def body(timeout):
            values = ray.get([a.increment.remote() for _ in range(n)], timeout=timeout)
            start, state["count"] = state["count"], state["count"] + n
            check(values == list(range(start + 1, start + n + 1)),
                  f"actor results out of order or wrong: {values[:5]}...")
            return n

        return body

    def close_actor(self):
        if self.actor_handle is not None:
            handle, self.actor_handle = self.actor_handle, None
            self.ray.kill(handle)

    def close(self):
        pass  # Ray is shut down by the engine, after poolx


# -- the cases ---------------------------------------------------------------------


def case_params(case, engine, sizes):
    """The case's parameters, with the sizes it uses (for the record and the text)."""
    p = {"workers": WORKERS}
    if case == "small_tasks":
        p.update(tasks=sizes["small_tasks"], loops=SMALL_LOOPS)
    elif case == "map":
        p.update(map_items=sizes["map_items"], loops=ITEM_LOOPS, map_chunksize=sizes["map_chunksize"])
    elif case == "medium_tasks":
        p.update(tasks=sizes["medium_per_worker"] * WORKERS * 2, loops=MEDIUM_LOOPS)
    elif case == "chain":
        p.update(chains=sizes["chains"], chain_links=sizes["chain_links"], loops=SMALL_LOOPS)
    elif case == "large_arg":
        p.update(large_tasks=sizes["large_tasks"], large_mb=sizes["large_mb"])
    elif case == "actor":
        p.update(actor_calls=sizes["actor_calls"][engine])
    return p


def prepare(side, case, p, shared):
    """The side's timed body for ``case`` (what is not timed happens here) and the expected result."""
    if case in ("small_tasks", "medium_tasks"):
        n = p["tasks"]
        return side.tasks(p, p["loops"], n), list(range(n))
    if case == "map":
        return side.map(p, p["loops"]), [2 * x for x in range(p["map_items"])]
    if case == "chain":
        return side.chain(p, p["loops"]), [p["chain_links"]] * p["chains"]
    if case == "large_arg":
        if "array" not in shared:
            shared["array"] = w.large_array(p["large_mb"] * 10**6)
            shared["array_sum"] = float(shared["array"].sum())
        return side.large_arg(p, shared["array"]), [shared["array_sum"]] * p["large_tasks"]
    if case == "actor":
        return side.actor(p, p["actor_calls"]), p["actor_calls"]
    raise ValueError(f"unknown case {case!r}")


def measure(body, expected, timeout):
    """One run: (wall seconds, driver CPU seconds, others' cores); raises Failed."""
    before = others_snapshot()
    c0 = time.process_time()
    t0 = time.perf_counter()
    try:
        result = body(timeout)
    except Failed:
        raise
    except TimeoutError as exc:  # (Ray's GetTimeoutError is one too)
        raise Failed(f"timed out: a result not in after {timeout:g} s ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:
        raise Failed(f"{type(exc).__name__}: {exc}") from exc
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    others = others_cpu_s(before, others_snapshot()) / wall
    if result != expected:
        raise Failed(mismatch(result, expected))
    return wall, cpu, others


def mismatch(result, expected):
    """What differs between a case's result and the expected one, in a line."""
    if isinstance(result, list) and isinstance(expected, list):
        if len(result) != len(expected):
            return f"wrong result: {len(result)} values, expected {len(expected)}"
        i = next((i for i, (a, b) in enumerate(zip(result, expected)) if a != b), 0)
        return f"wrong result at index {i} of {len(result)}: {result[i]!r}, expected {expected[i]!r}"
    return f"wrong result: {str(result)[:100]!r}, expected {str(expected)[:100]!r}"


def wait_until_idle(max_wait):
    """Wait (at most ``max_wait`` s) until other processes use under IDLE_CORES; returns the wait."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        before = others_snapshot()
        time.sleep(IDLE_PROBE_S)
        if others_cpu_s(before, others_snapshot()) / IDLE_PROBE_S < IDLE_CORES:
            break
    return time.monotonic() - t0


def run_case(case, engine, sides, p, repeats, timeout, wait_idle, shared, log):
    """Warm-up, then ``repeats`` interleaved timed runs of poolx and native; the case's record."""
    record = {"case": case, "engine": engine, "params": p, "runs": {"native": [], "poolx": []},
              "errors": {}}
    bodies = {}
    for name, side in sides.items():
        if side is None:
            record["errors"][name] = shared["poolx_error"]
            continue
        try:
            bodies[name] = prepare(side, case, p, shared)
        except NoActors as exc:  # no actors on this backend (yet): n/a, not a failure
            record["errors"][name] = str(exc)
            record["poolx_na"] = True
        except Exception as exc:
            record["errors"][name] = f"{type(exc).__name__}: {exc}"
    try:
        for name in list(bodies):  # the warm-up: one untimed run each
            try:
                measure(*bodies[name], timeout)
            except Failed as exc:
                record["errors"][name] = f"warm-up: {exc}"
                del bodies[name]
        for r in range(repeats):
            order = ["native", "poolx"] if r % 2 == 0 else ["poolx", "native"]
            for name in order:
                if name not in bodies:
                    continue
                waited = wait_until_idle(wait_idle) if wait_idle else 0.0
                try:
                    wall, cpu, others = measure(*bodies[name], timeout)
                except Failed as exc:
                    record["errors"][name] = f"repeat {r + 1}: {exc}"
                    del bodies[name]
                    continue
                record["runs"][name].append({"s": wall, "driver_cpu_s": cpu, "others_cores": others,
                                             "repeat": r + 1, "first": name == order[0],
                                             "waited_for_idle_s": round(waited, 2)})
                log(f"  {engine:<4} {case:<13} {name:<6} repeat {r + 1}: {wall:.3f} s "
                    f"(driver CPU {cpu:.2f} s, others {others:.2f} cores)")
    finally:
        for name, side in sides.items():
            if case == "actor" and side is not None:
                try:
                    side.close_actor()
                except Exception as exc:
                    record.setdefault("close_errors", {})[name] = f"{type(exc).__name__}: {exc}"
    state = getattr(bodies.get("native", (None,))[0], "state", None)
    if state and "in_order" in state:
        record["native_in_order"] = state["in_order"]
    summarise(record)
    return record


def summarise(record):
    for name in ("native", "poolx"):
        runs = record["runs"][name]
        if runs:
            record[f"{name}_median_s"] = statistics.median(x["s"] for x in runs)
            record[f"{name}_min_s"] = min(x["s"] for x in runs)
            record[f"{name}_max_s"] = max(x["s"] for x in runs)
            record[f"{name}_driver_cpu_s"] = statistics.median(x["driver_cpu_s"] for x in runs)
    runs = record["runs"]["native"] + record["runs"]["poolx"]
    if runs:
        record["others_cores"] = statistics.median(x["others_cores"] for x in runs)
    if "native_median_s" in record and "poolx_median_s" in record:
        record["ratio"] = record["poolx_median_s"] / record["native_median_s"]
        record["goal_met"] = record["ratio"] <= GOAL
        record["status"] = "ok"
    elif record.get("poolx_na") and "native_median_s" in record:
        record["status"] = "n/a"
    else:
        record["status"] = "error"


# -- the engines --------------------------------------------------------------------


def run_engine(engine, cases, sizes, repeats, timeout, wait_idle, records, facts, log):
    """Start the engine, run every case on it (appending to ``records``), stop it; ``facts`` gets
    what is known about the engine (its start, its workers)."""
    t0 = time.perf_counter()
    cluster = None
    if engine == "dask":
        import distributed

        cluster = distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
        facts["config"] = (f"distributed.LocalCluster(n_workers={WORKERS}, threads_per_worker=1, "
                           "processes=True, dashboard_address=None)")
        address = cluster.scheduler_address
    else:
        import ray

        # address="local": a Ray of our own, always.  Without it ray.init() joins
        # whatever cluster `ray start` left in /tmp/ray/ray_current_cluster (or
        # RAY_ADDRESS names), and then refuses num_cpus.
        ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        facts["config"] = (f"ray.init(address=\"local\", num_cpus={WORKERS}, include_dashboard=False, "
                           "log_to_driver=False, configure_logging=False)")
        address = None
    sides = {}
    shared = {}
    try:
        sides["native"] = DaskSide(cluster) if engine == "dask" else RaySide()
        facts["start_s"] = time.perf_counter() - t0
        facts["workers"] = warm_workers(engine, sides["native"])
        log(f"{engine}: started in {facts['start_s']:.1f} s; workers: "
            + "; ".join(f"pid {x['pid']} poolx from {x['poolx_from']}" for x in facts["workers"]))
        try:
            sides["poolx"] = PoolxSide(engine, address)
        except Exception as exc:
            shared["poolx_error"] = f"poolx.Executor(backend={engine!r}) failed: {type(exc).__name__}: {exc}"
            sides["poolx"] = None
            log(f"{engine}: {shared['poolx_error']}")
        for case in cases:
            p = case_params(case, engine, sizes)
            try:
                record = run_case(case, engine, sides, p, repeats, timeout, wait_idle, shared, log)
            except Exception as exc:  # a bug here, not a failed measurement: say so, go on
                record = {"case": case, "engine": engine, "params": p, "runs": {"native": [], "poolx": []},
                          "errors": {"case": f"{type(exc).__name__}: {exc}"}, "status": "error"}
            records.append(record)
            for name, error in record["errors"].items():
                log(f"  {engine:<4} {case:<13} {name:<6} {'N/A' if record.get('poolx_na') else 'ERROR'}: "
                    f"{error}")
    finally:
        t1 = time.perf_counter()
        for name in ("poolx", "native"):
            side = sides.get(name)
            if side is not None:
                try:
                    within(CLOSE_TIMEOUT_S, side.close, f"closing {name}")
                except Exception as exc:
                    facts.setdefault("close_errors", {})[name] = f"{type(exc).__name__}: {exc}"
                    log(f"{engine}: closing {name} failed: {type(exc).__name__}: {exc}")
        if cluster is not None:
            cluster.close()
        if engine == "ray":
            import ray

            ray.shutdown()
        facts["stop_s"] = time.perf_counter() - t1


def within(seconds, fn, what):
    """``fn()`` in a daemon thread, waited for at most ``seconds``: a hang raises, and is left behind."""
    outcome = {}

    def run():
        try:
            fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=what, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not finish in {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]


def warm_workers(engine, native):
    """Every worker runs ``warm`` (numpy imported, a 0.2 s sleep); says where each imports poolx from."""
    n = 2 * WORKERS
    if engine == "dask":
        futures = [native.client.submit(w.warm, 0.2, pure=False) for _ in range(n)]
        infos = native.client.gather(futures)
    else:
        remote = native.ray.remote(w.warm)
        infos = native.ray.get([remote.remote(0.2) for _ in range(n)])
    return list({x["pid"]: x for x in infos}.values())


# -- the machine: other processes' CPU, leftovers ---------------------------------------


def _proc_stats():
    """{pid: fields after the command name} from Linux /proc ({} elsewhere)."""
    stats = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return stats
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stats[int(entry)] = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                pass
    return stats


def _descendants(stats, root):
    children = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def others_snapshot():
    """{(pid, start time): CPU ticks} of every process outside this one and its descendants
    (the Dask cluster's and Ray's processes are descendants of this script)."""
    stats = _proc_stats()
    mine = _descendants(stats, os.getpid()) | {os.getpid()}
    return {(pid, f[19]): int(f[11]) + int(f[12]) for pid, f in stats.items() if pid not in mine}


def others_cpu_s(before, after):
    ticks = sum(used - before.get(key, 0) for key, used in after.items())
    return max(0, ticks) / os.sysconf("SC_CLK_TCK")


def leftover_children(grace_s=5.0):
    """This script's live descendants after everything was stopped, given ``grace_s`` to exit.

    multiprocessing's resource tracker (started for the Dask cluster's spawned
    processes) does not count: it exits when this script does.
    """
    deadline = time.monotonic() + grace_s
    while True:
        stats = _proc_stats()
        alive = sorted(pid for pid in _descendants(stats, os.getpid())
                       if stats[pid][0] not in ("Z", "X") and "resource_tracker" not in command_of(pid))
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def command_of(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return "?"


# -- environment ----------------------------------------------------------------------


def environment(lengths):
    from run import git_revision, usable_cpus, version_of  # (the suite's own, beside this file)

    import poolx

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version() + " (" + platform.python_implementation() + ")",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "workers": WORKERS,
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "poolx_from": str(Path(poolx.__file__).resolve().parent.parent),
        "poolx_git": git_revision(),
        "dask": version_of("dask"),
        "distributed": version_of("distributed"),
        "ray": version_of("ray"),
        "numpy": version_of("numpy"),
        "cloudpickle": version_of("cloudpickle"),
        "task_ms_here": lengths,
    }


# -- output -----------------------------------------------------------------------------


def text_sizes(sizes):
    return {**{k: v for k, v in sizes.items() if k != "actor_calls"},
            "medium_tasks": sizes["medium_per_worker"] * WORKERS * 2, "workers": WORKERS,
            "actor_calls_dask": sizes["actor_calls"]["dask"], "actor_calls_ray": sizes["actor_calls"]["ray"]}


def result_cells(r):
    native = f"{r['native_median_s']:.3f}" if "native_median_s" in r else "-"
    if r["status"] == "ok":
        return [native, f"{r['poolx_median_s']:.3f}", f"{r['ratio']:.3f}x",
                "yes" if r["goal_met"] else "**no**"]
    if r["status"] == "n/a":
        return [native, "n/a", "n/a", "n/a"]
    return [native, "ERROR" if "native_median_s" in r else "-", "-", "-"]


def table(records):
    header = ["case", "engine", "native s (median)", "poolx s (median)", "poolx ÷ native",
              f"<= {GOAL:.2f}x", "min-max s: native; poolx", "driver CPU s: native, poolx",
              "ok runs: native, poolx", "others' CPU"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        cpu = ", ".join(f"{r[k]:.2f}" if k in r else "-"
                        for k in ("native_driver_cpu_s", "poolx_driver_cpu_s"))
        spread = "; ".join(f"{r[n + '_min_s']:.3f}-{r[n + '_max_s']:.3f}" if n + "_min_s" in r else "-"
                           for n in ("native", "poolx"))
        runs = f"{len(r['runs']['native'])}, {len(r['runs']['poolx'])}"
        others = f"{r['others_cores']:.2f}" if "others_cores" in r else "-"
        cells = [r["case"], r["engine"], *result_cells(r), spread, cpu, runs, others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(env, config, records, facts):
    sizes = text_sizes(config["sizes"])
    ok = [r for r in records if r["status"] == "ok"]
    met = sum(1 for r in ok if r["goal_met"])
    lines = [
        "## Cluster backends: poolx over native Dask and Ray", "",
        f"Generated by `{config['command']}` on {env['date']} ({config['total_s']:.0f} s), poolx "
        f"{env['poolx_git']} from `{env['poolx_from']}`; {config['repeats']} timed run(s) of each side per "
        f"case, medians; cores: os.cpu_count() {env['cpu_count']}, usable (sched_getaffinity) "
        f"{env['usable_cpus']}; load average at start {env['load_average_at_start']}.  Dask "
        f"{env['distributed']} (`{facts.get('dask', {}).get('config', 'not run')}`), Ray {env['ray']} "
        f"(`{facts.get('ray', {}).get('config', 'not run')}`).",
        "",
        f"Each row runs the same work through poolx (`poolx.Executor({WORKERS}, backend=\"dask\", "
        f"address=cluster.scheduler_address)` or `poolx.Executor({WORKERS}, backend=\"ray\")` on the same "
        "Ray) and through the engine's own API, in the same process and on the same cluster, alternating "
        "which goes first, after one untimed run of each.  \"poolx ÷ native\" is the poolx median over the "
        f"native median (time: above 1x poolx is slower); the goal is at most {GOAL:.2f}x.  "
        f"Goal met in {met} of {len(ok)} measured rows.",
        "",
        *table(records),
        "",
        "\"driver CPU s\": CPU time of the driver process during the timed span (median; it includes the "
        "engine's client threads).  \"others' CPU\": cores used by processes outside this script and its "
        "cluster during the timed spans (median; the machine is shared, and anything above ~0.1 shows in "
        "the numbers).",
        "",
        f"Task lengths are fixed amounts of pure-Python work ({SMALL_LOOPS:,}, {ITEM_LOOPS:,} and "
        f"{MEDIUM_LOOPS:,} loop turns: nominally " + ", ".join(f"{v:g}" for v in NOMINAL_MS.values())
        + " ms); in the driver at the start they took "
        + ", ".join(f"{v:g}" for v in env["task_ms_here"].values()) + " ms (the fastest of a few calls).",
        "",
        "| case | work | poolx | native Dask | native Ray |",
        "|---|---|---|---|---|",
    ]
    for case in config["cases"]:
        what, idioms = CASE_TEXT[case]
        lines.append(f"| {case} | {what.format(**sizes)} | "
                     + " | ".join(idioms[k].format(**sizes) for k in ("poolx", "dask", "ray")) + " |")
    notes = []
    for r in records:
        for name, error in r["errors"].items():
            kind = "n/a" if name == "poolx" and r.get("poolx_na") else "error"
            notes.append(f"- {r['case']} on {r['engine']}, {name}: {kind}: `{error}`")
        if "native_in_order" in r:
            notes.append(f"- actor on dask, native: results in call order in {sum(r['native_in_order'])} of "
                         f"{len(r['native_in_order'])} runs (warm-up included)")
    for engine, f in facts.items():
        if f.get("error"):
            notes.append(f"- {engine}: FAILED, its remaining cases not run: `{f['error']}`")
        if f.get("close_errors"):
            notes.append(f"- {engine}: closing failed: {f['close_errors']}")
        if f.get("workers"):
            where = sorted({x["poolx_from"] for x in f["workers"]})
            notes.append(f"- {engine}: started in {f.get('start_s', 0):.1f} s, stopped in "
                         f"{f.get('stop_s', 0):.1f} s (not timed); its workers import poolx from "
                         + ", ".join(f"`{x}`" for x in where))
    if config.get("leftover_processes"):
        notes.append("- processes left after everything was stopped (killed): "
                     f"{config['leftover_processes']}")
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------


def parse_list(text, allowed, what):
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(allowed)}")
    return items


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"small sizes, {QUICK_REPEATS} repeat: checks the script works (under a minute)")
    p.add_argument("--engines", default=",".join(ENGINES), type=lambda t: parse_list(t, ENGINES, "engine"),
                   help="comma-separated (%(default)s)")
    p.add_argument("--cases", default=",".join(CASES), type=lambda t: parse_list(t, CASES, "case"),
                   help="comma-separated (%(default)s)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed runs of each side per case ({DEFAULT_REPEATS}; --quick: {QUICK_REPEATS})")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S,
                   help="seconds a measurement may wait for a result before it counts as failed "
                        "(%(default)s)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each timed run, wait up to S seconds until other processes use under "
                        f"{IDLE_CORES:g} core (%(default)s: no wait)")
    p.add_argument("--json", metavar="PATH", help="write every run, the summary and the environment here")
    p.add_argument("--markdown", metavar="PATH", help="write a section to paste into RESULTS.md here")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else DEFAULT_REPEATS
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    warnings.filterwarnings("ignore", message="Sending large graph")  # large_arg, both sides alike
    # The scheduler's HTTP server (no dashboard, but /health) moves off a port someone else holds.
    warnings.filterwarnings("ignore", message="Port .* is already in use")

    def log(msg):
        print(msg, flush=True)

    env = environment(task_lengths())
    log(f"poolx cluster overhead: engines {', '.join(args.engines)}; cases {', '.join(args.cases)}; "
        f"{args.repeats} repeat(s); cores {env['cpu_count']} (usable {env['usable_cpus']}); poolx from "
        f"{env['poolx_from']} ({env['poolx_git']}); task lengths here (ms): {env['task_ms_here']}")
    t0 = time.perf_counter()
    records, facts = [], {}
    for engine in args.engines:
        facts[engine] = {}
        try:
            run_engine(engine, args.cases, sizes, args.repeats, args.timeout, args.wait_idle, records,
                       facts[engine], log)
        except Exception as exc:
            facts[engine]["error"] = f"{type(exc).__name__}: {exc}"
            log(f"{engine}: FAILED: {type(exc).__name__}: {exc}")
    left = leftover_children()
    for pid in left:
        log(f"leftover process {pid} ({command_of(pid)}): killed")
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    env["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    config = {"command": "python benchmarks/cluster.py " + " ".join(argv), "quick": args.quick,
              "repeats": args.repeats, "engines": args.engines, "cases": args.cases, "sizes": sizes,
              "goal_ratio": GOAL, "timeout_s": args.timeout, "wait_idle_s": args.wait_idle,
              "total_s": time.perf_counter() - t0, "leftover_processes": len(left)}
    text = markdown(env, config, records, facts)
    print()
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "config": config, "engines": facts,
                                               "results": records}, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text)
    failed = [r for r in records if r["status"] == "error"] or [f for f in facts.values() if "error" in f]
    return 1 if failed or left else 0


if __name__ == "__main__":
    sys.exit(main())
