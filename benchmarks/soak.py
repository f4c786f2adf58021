"""Soak: 300,000 tiny tasks with injected faults at realistic rates, every outcome checked.

    python benchmarks/soak.py [--tasks 300000] [--workers 2] [--start-method forkserver]
                              [--task-timeout 0.5] [--seed 0] [--json PATH]

By default 1% of the tasks crash their worker and 1% raise, with up to 30,000
futures in flight (issue 19); run it once per start method (fork, forkserver,
spawn).  Lower rates (``--crash-rate 1e-4``) make a longer run cheap.

Half the tasks go through ``Executor.submit`` (a bounded number of futures in
flight, a done-callback on each), half through ``Executor.map`` (many map()
calls over blocks of items, at most one fault per block).  Faults are decided
up front from a seeded RNG, so the outcome of every task is known: a value
(``x * 2``), the injected exception (``Injected``, a ValueError carrying x), a
crash (``os._exit(3)`` in the worker: ``WorkerDiedError``), a timeout (a sleep
of 4 x ``task_timeout``: ``TaskTimeoutError``).  A smaller retried part runs on
two more executors: tasks that raise ``Flaky`` on their first attempt only
(``retry_exceptions=(Flaky,)``, ``max_retries=2``) and tasks that crash their
worker on their first attempt only (``max_retries=1``); both must succeed.

Also checked: every future completes exactly once, ``workers_died`` equals the
crashes injected and the workers killed by the driver the timeouts injected,
the driver's memory does not grow after warm-up beyond ``--max-growth-mb``, and
no child process is left afterwards.  Exit status 0 when every check passed, 1
otherwise (the first mismatches are listed).  A hang (no progress for
``--hang-timeout`` seconds) kills the workers and ends the run as a failure.

``run_soak(**options)`` does the same in-process and returns the figures
(tests/engine/test_soak.py runs a small one).
"""

from __future__ import annotations

import argparse
import array
import collections
import datetime
import functools
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import poolx

HERE = Path(__file__).resolve().parent

# Fault codes: the second argument of ``work``.
OK, RAISE, CRASH, TIMEOUT, FLAKY, CRASH_ONCE = range(6)
KIND_NAMES = {RAISE: "exception", CRASH: "crash", TIMEOUT: "timeout", FLAKY: "flaky",
              CRASH_ONCE: "crash_once"}
CRASH_EXITCODE = 3

DEFAULTS: dict[str, Any] = {
    "tasks": 300_000,
    "workers": 2,
    "start_method": "forkserver",
    "task_timeout": 0.5,
    "seed": 0,
    # Realistic fault rates (issue 19): at 1% crashes with tens of thousands of
    # tasks in flight, blame that charged queued tasks failed thousands of them.
    "crash_rate": 1e-2,
    "timeout_rate": 1e-5,
    "exception_rate": 1e-2,
    "retry_fraction": 0.01,  # the retried part: this fraction of --tasks, on top of them
    "flaky_rate": 1e-2,
    "crash_once_rate": 1e-3,
    "window": 30_000,  # submit: futures in flight at most
    "block": 200,  # map: items per map() call
    "chunksize": 20,
    "map_window": 8,  # map: map() calls open at once
    "checkpoints": 20,  # memory samples
    "max_growth_mb": 64.0,
    "hang_timeout": 120.0,  # seconds without any progress that count as a hang
}

# -- in the workers -------------------------------------------------------------

_nap = 0.0  # a timeout task's sleep, set by init_worker
_markers: str | None = None  # the folder of first-attempt markers


class Injected(ValueError):
    """The exception an ``exception`` task raises; carries the task's x."""

    def __init__(self, x: int) -> None:
        super().__init__(x)
        self.x = x


class Flaky(Exception):
    """Raised by a ``flaky`` task on its first attempt only."""

    def __init__(self, x: int) -> None:
        super().__init__(x)
        self.x = x


def init_worker(nap: float, markers: str) -> None:
    global _nap, _markers
    _nap = nap
    _markers = markers


def _first_attempt(x: int) -> bool:
    """True the first time task x asks (a marker file per task: it survives a crash)."""
    assert _markers is not None
    try:
        os.close(os.open(os.path.join(_markers, str(x)), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def work(x: int, fault: int) -> int:
    if fault == OK:
        return x * 2
    if fault == RAISE:
        raise Injected(x)
    if fault == CRASH:
        os._exit(CRASH_EXITCODE)
    if fault == TIMEOUT:
        time.sleep(_nap)  # task_timeout kills the worker long before this returns
        return x * 2
    if fault == FLAKY:
        if _first_attempt(x):
            raise Flaky(x)
        return x * 2
    if fault == CRASH_ONCE:
        if _first_attempt(x):
            os._exit(CRASH_EXITCODE)
        return x * 2
    raise AssertionError(f"unknown fault {fault!r}")


# -- the plan --------------------------------------------------------------------



def _draw_tasks(rng: random.Random, ids: range, rates: list[tuple[int, float]]) -> dict[int, int]:
    """An independent fault draw per task."""
    total = sum(r for _, r in rates)
    faults: dict[int, int] = {}
    rand = rng.random
    for x in ids:
        u = rand()
        if u < total:
            faults[x] = _pick(rates, u, total)
    return faults


def _draw_blocks(rng: random.Random, ids: range, block: int,
                 rates: list[tuple[int, float]]) -> list[tuple[int, int, int, int]]:
    """Blocks ``(start, size, position of the fault or -1, kind)`` with at most one fault each:
    a block has one with the probability that any of its items would have."""
    total = sum(r for _, r in rates)
    blocks = []
    for start in range(ids.start, ids.stop, block):
        size = min(block, ids.stop - start)
        if rng.random() < 1 - (1 - total) ** size:
            blocks.append((start, size, rng.randrange(size), _pick(rates, rng.random() * total, total)))
        else:
            blocks.append((start, size, -1, OK))
    return blocks


def _pick(rates: list[tuple[int, float]], u: float, total: float) -> int:
    """The fault for a uniform draw ``u``: OK unless ``u < total``, then by rate."""
    if u >= total:
        return OK
    for kind, r in rates:
        if u < r:
            return kind
        u -= r
    return rates[-1][0]


class Plan:
    """Which task gets which fault, drawn up front from one seeded RNG.

    Task ids are the ``x`` passed to ``work``: ``[0, half)`` submit, ``[half,
    tasks)`` map, then the retried part (flaky tasks, then crash-once tasks;
    each half submit, half map).
    """

    def __init__(self, o: dict[str, Any]) -> None:
        rng = random.Random(o["seed"])
        tasks, block = o["tasks"], o["block"]
        rates = [(RAISE, o["exception_rate"]), (CRASH, o["crash_rate"]), (TIMEOUT, o["timeout_rate"])]
        if sum(r for _, r in rates) >= 1:
            raise ValueError("the fault rates add up to 1 or more")
        self.half = tasks // 2
        self.submit = range(0, self.half)
        self.submit_faults = _draw_tasks(rng, self.submit, rates)
        self.blocks = _draw_blocks(rng, range(self.half, tasks), block, rates)
        n_retry = round(tasks * o["retry_fraction"])
        self.flaky = range(tasks, tasks + n_retry // 2)
        self.crash_once = range(tasks + n_retry // 2, tasks + n_retry)
        self.retried: dict[str, tuple[range, dict[int, int], list[tuple[int, int, int, int]]]] = {}
        for part, ids, kind, rate in (("flaky", self.flaky, FLAKY, o["flaky_rate"]),
                                      ("crash_once", self.crash_once, CRASH_ONCE, o["crash_once_rate"])):
            sub, mapped = ids[: len(ids) // 2], ids[len(ids) // 2:]
            self.retried[part] = (sub, _draw_tasks(rng, sub, [(kind, rate)]),
                                  _draw_blocks(rng, mapped, block, [(kind, rate)]))

    def injected_by_part(self) -> dict[str, dict[str, int]]:
        out = {"submit": collections.Counter(KIND_NAMES[k] for k in self.submit_faults.values()),
               "map": collections.Counter(KIND_NAMES[b[3]] for b in self.blocks if b[2] >= 0)}
        for part, (_, faults, blocks) in self.retried.items():
            out[f"{part} submit"] = collections.Counter(KIND_NAMES[k] for k in faults.values())
            out[f"{part} map"] = collections.Counter(KIND_NAMES[b[3]] for b in blocks if b[2] >= 0)
        return {k: dict(v) for k, v in out.items()}

    def injected(self) -> dict[str, int]:
        counts = dict.fromkeys(KIND_NAMES.values(), 0)
        for part in self.injected_by_part().values():
            for kind, n in part.items():
                counts[kind] += n
        return counts

    def timeouts(self, part: str) -> int:
        """Workers the driver kills for running over task_timeout in ``part``, by plan."""
        if part != "main":
            return 0
        return (sum(1 for k in self.submit_faults.values() if k == TIMEOUT)
                + sum(1 for b in self.blocks if b[2] >= 0 and b[3] == TIMEOUT))

    def deaths(self, part: str) -> int:
        """Workers the faults of ``part`` ("main", "flaky", "crash_once") kill, by plan."""
        if part == "main":
            return (sum(1 for k in self.submit_faults.values() if k == CRASH)
                    + sum(1 for b in self.blocks if b[2] >= 0 and b[3] == CRASH))
        _, faults, blocks = self.retried[part]
        return (sum(1 for k in faults.values() if k == CRASH_ONCE)
                + sum(1 for b in blocks if b[2] >= 0 and b[3] == CRASH_ONCE))


# -- checking ----------------------------------------------------------------------


class Checks:
    """Named checks and per-task mismatches (thread-safe: callbacks report here)."""

    KEEP = 10  # mismatches kept in full, per part

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: list[dict[str, Any]] = []
        self.mismatches: list[dict[str, Any]] = []
        self.mismatch_count: collections.Counter[str] = collections.Counter()

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        with self.lock:
            self.results.append({"name": name, "ok": bool(ok), "detail": detail})
        return ok

    def mismatch(self, part: str, task: int, expected: str, got: str) -> None:
        with self.lock:
            self.mismatch_count[part] += 1
            if self.mismatch_count[part] <= self.KEEP:
                self.mismatches.append({"part": part, "task": task, "expected": expected, "got": got[:300]})

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.results) and not self.mismatch_count


def expected_text(x: int, fault: int) -> str:
    if fault == RAISE:
        return f"Injected({x})"
    if fault == CRASH:
        return f"WorkerDiedError(exitcode={CRASH_EXITCODE})"
    if fault == TIMEOUT:
        return "TaskTimeoutError"
    return f"value {x * 2}"


def outcome_text(value: Any, exc: BaseException | None) -> str:
    if exc is None:
        return f"value {value!r}"
    extra = f" exitcode={exc.exitcode}" if hasattr(exc, "exitcode") else ""
    return f"{type(exc).__name__}{extra}: {exc}"


def outcome_ok(x: int, fault: int, value: Any, exc: BaseException | None) -> bool:
    if fault in (OK, FLAKY, CRASH_ONCE):
        return exc is None and value == x * 2
    if fault == RAISE:
        return type(exc) is Injected and exc.x == x
    if fault == CRASH:
        return (isinstance(exc, poolx.WorkerDiedError) and isinstance(exc, BrokenProcessPool)
                and exc.exitcode == CRASH_EXITCODE)
    if fault == TIMEOUT:
        return isinstance(exc, poolx.TaskTimeoutError) and isinstance(exc, TimeoutError)
    return False


def map_message_prefix(index: int, x: int, fault: int) -> str:
    """How poolx names a map item in the error of a crash or timeout it caused."""
    return f"map item {index}, {work.__qualname__}({x!r}, {fault!r})"


# -- memory ------------------------------------------------------------------------


class Sampler:
    """The driver's RSS (after gc.collect()) every ``every`` tasks."""

    def __init__(self, total: int, checkpoints: int) -> None:
        import psutil

        self.proc = psutil.Process()
        self.every = max(1, total // max(1, checkpoints))
        self.next_at = self.every
        self.done = 0
        self.phase = ""
        self.samples: list[dict[str, Any]] = []

    def tick(self, n: int = 1) -> None:
        self.done += n
        if self.done >= self.next_at:
            self.next_at += self.every
            self.sample()

    def sample(self) -> None:
        gc.collect()
        self.samples.append({"tasks": self.done, "rss_mb": self.proc.memory_info().rss / 2**20,
                             "phase": self.phase})

    def report(self, bound_mb: float, checks: Checks) -> dict[str, Any]:
        s = self.samples
        if len(s) < 2:
            return {"samples": s}
        first, last = s[0], s[-1]  # the first sample is taken after warm-up (1/checkpoints of the tasks)
        growth = last["rss_mb"] - first["rss_mb"]
        span = max(1, last["tasks"] - first["tasks"])
        out: dict[str, Any] = {
            "first_mb": round(first["rss_mb"], 1), "last_mb": round(last["rss_mb"], 1),
            "max_mb": round(max(x["rss_mb"] for x in s), 1), "growth_mb": round(growth, 1),
            "growth_per_100k_tasks_mb": round(growth / span * 100_000, 2), "phase_growth_mb": {},
            "samples": [{**x, "rss_mb": round(x["rss_mb"], 1)} for x in s],
        }
        checks.check("memory: growth after warm-up", growth <= bound_mb,
                     f"{growth:+.1f} MB from {first['rss_mb']:.1f} MB (bound {bound_mb:g} MB)")
        # Per phase too: the submit phase holds more in flight than the map phase,
        # so a leak in the first could hide behind the drop between them.
        for phase in dict.fromkeys(x["phase"] for x in s):
            ps = [x for x in s if x["phase"] == phase]
            if len(ps) >= 2:
                g = ps[-1]["rss_mb"] - ps[0]["rss_mb"]
                out["phase_growth_mb"][phase] = round(g, 1)
                checks.check(f"memory: growth within the {phase} phase", g <= bound_mb,
                             f"{g:+.1f} MB over {ps[-1]['tasks'] - ps[0]['tasks']:,} tasks")
        return out


# -- the parts ---------------------------------------------------------------------


class Hang(Exception):
    """No progress for ``hang_timeout`` seconds: the soak stops there (its workers killed)."""


def _hang(ex: Any, checks: Checks, name: str, detail: str) -> Hang:
    checks.check(name, False, detail)
    ex.kill_workers()  # so that leaving the executor's with-block cannot hang as well
    return Hang(f"{name}: {detail}")


def _submit_part(ex: Any, part: str, ids: range, faults: dict[int, int], o: dict[str, Any],
                 checks: Checks, sampler: Sampler | None) -> array.array:
    """Submit every id with at most ``window`` futures in flight; returns the callback counts."""
    counts = array.array("I", bytes(4 * len(ids)))
    first = ids.start
    cond = threading.Condition()
    inflight = [0]

    def done(fut: Any, x: int) -> None:
        counts[x - first] += 1
        try:
            exc = fut.exception()
            value = None if exc is not None else fut.result()
            fault = faults.get(x, OK)
            if not outcome_ok(x, fault, value, exc):
                checks.mismatch(part, x, expected_text(x, fault), outcome_text(value, exc))
        except BaseException as e:  # a callback must not raise: record it
            checks.mismatch(part, x, "a done future", f"callback error {e!r}")
        finally:
            with cond:
                inflight[0] -= 1
                cond.notify()

    def wait_below(limit: int) -> bool:
        with cond:
            return cond.wait_for(lambda: inflight[0] < limit, timeout=o["hang_timeout"])

    window = o["window"]
    for x in ids:
        fault = faults.get(x, OK)
        if not wait_below(window):
            raise _hang(ex, checks, f"{part}: progress", f"no future completed in {o['hang_timeout']:g} s "
                        f"with {inflight[0]} in flight (next: task {x})")
        with cond:
            inflight[0] += 1
        ex.submit(work, x, fault).add_done_callback(functools.partial(done, x=x))
        if sampler is not None:
            sampler.tick()
    if not wait_below(1):
        raise _hang(ex, checks, f"{part}: progress", f"{inflight[0]} futures still not done after "
                    f"{o['hang_timeout']:g} s")
    return counts


def _check_counts(part: str, ids: range, counts: array.array, checks: Checks) -> None:
    bad = [(ids.start + i, c) for i, c in enumerate(counts) if c != 1]
    checks.check(f"{part}: every future completed exactly once", not bad,
                 f"{len(bad)} not once, e.g. (task, callbacks) {bad[:5]}" if bad else f"{len(ids):,} futures")


def _consume(it: Any) -> tuple[list[Any], BaseException | None]:
    got: list[Any] = []
    try:
        for v in it:
            got.append(v)
    except Exception as e:  # the outcome is checked
        return got, e
    return got, None


def _map_part(ex: Any, part: str, blocks: list[tuple[int, int, int, int]], o: dict[str, Any],
              checks: Checks, sampler: Sampler | None) -> int:
    """map() over each block, ``map_window`` calls open at once; returns the items checked.

    A block yields every value when it has no fault, or a fault that is retried
    (flaky, crash-once); else the values before the fault, then its error.
    """
    pending: collections.deque[tuple[tuple[int, int, int, int], Any]] = collections.deque()
    todo = collections.deque(blocks)
    checked = 0

    def launch(consuming: int) -> None:
        """Open map() calls up to ``map_window`` (``consuming``: the one being read counts)."""
        while todo and len(pending) + consuming < o["map_window"]:
            start, size, pos, kind = todo[0]
            blk = todo.popleft()
            faults = [OK] * size
            if pos >= 0:
                faults[pos] = kind
            pending.append((blk, ex.map(work, range(start, start + size), faults, chunksize=o["chunksize"],
                                        timeout=o["hang_timeout"])))

    launch(0)
    while pending:
        (start, size, pos, kind), it = pending.popleft()
        launch(1)
        got, err = _consume(it)
        launch(0)
        if kind in (FLAKY, CRASH_ONCE):
            pos = -1  # retried: the block must yield every value
        if type(err) is TimeoutError:  # map()'s own timeout (TaskTimeoutError is a subclass)
            raise _hang(ex, checks, f"{part}: progress", f"the map() of block {start} timed out after "
                        f"{o['hang_timeout']:g} s")
        n = size if pos < 0 else pos
        expected = [x * 2 for x in range(start, start + n)]
        if got != expected:
            bad = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), min(len(got), n))
            checks.mismatch(part, start + bad, f"{n} values then {'the end' if pos < 0 else 'an error'}"
                            f" (item {bad}: {expected[bad] if bad < n else 'none'})",
                            f"{len(got)} values (item {bad}: {got[bad] if bad < len(got) else 'none'}), "
                            f"then {outcome_text(None, err) if err else 'the end'}")
        elif pos < 0:
            if err is not None:
                checks.mismatch(part, start, "the end", outcome_text(None, err))
        else:
            x = start + pos
            if not outcome_ok(x, kind, None, err):
                checks.mismatch(part, x, expected_text(x, kind), outcome_text(None, err))
            elif kind in (CRASH, TIMEOUT) and not str(err).startswith(map_message_prefix(pos, x, kind)):
                checks.mismatch(part, x, f"a message starting {map_message_prefix(pos, x, kind)!r}",
                                outcome_text(None, err))
        checked += size if pos < 0 else pos + 1
        if sampler is not None:
            sampler.tick(size)
    return checked


def _retried_part(ex: Any, part: str, plan: Plan, o: dict[str, Any], checks: Checks) -> array.array:
    """Half the part's tasks by submit, half by map() over blocks: every task must succeed."""
    sub, faults, blocks = plan.retried[part]
    counts = _submit_part(ex, f"{part} submit", sub, faults, o, checks, None)
    _map_part(ex, f"{part} map", blocks, o, checks, None)
    return counts


def _children() -> dict[int, str]:
    """Child processes of this one, but for the stdlib's forkserver and resource tracker."""
    import psutil

    me = psutil.Process()
    out = {}
    for child in me.children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            parent = child.ppid()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if parent == me.pid and any(h in cmd for h in ("forkserver", "resource_tracker")):
            continue
        out[child.pid] = cmd
    return out


def _stats(ex: Any) -> dict[str, int]:
    s = ex.statistics()
    fields = ("tasks_submitted", "tasks_completed", "tasks_failed", "tasks_cancelled", "workers_started",
              "workers_restarted", "workers_died", "workers_alive")
    out = {k: getattr(s, k) for k in fields}
    # Taken once every task is done: the workers that exited are those that died
    # plus those the driver killed (a task over task_timeout).
    out["workers_exited"] = s.workers_started - s.workers_alive
    return out


def _cores() -> dict[str, int | None]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {"cpu_count": os.cpu_count(), "usable": usable}


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _dirty(package: Path) -> bool | None:
    """Whether the imported poolx differs from the commit (None: not in this checkout)."""
    if package.parent != HERE.parent:
        return None
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", str(package)], cwd=HERE,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def run_soak(log: Any = None, **options: Any) -> dict[str, Any]:
    """Run the soak in this process; returns the figures (``result["ok"]``: every check passed).

    ``options`` are DEFAULTS' keys; ``log`` (a callable) receives progress lines.
    """
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    o = {**DEFAULTS, **options}
    say = log or (lambda _msg: None)
    checks = Checks()
    plan = Plan(o)
    t = o["task_timeout"]
    before_children = set(_children())
    package = Path(poolx.__file__).parent
    result: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": _commit(),
        "python": sys.version.split()[0], "poolx": poolx.__version__, "poolx_dir": str(package),
        "poolx_uncommitted_changes": _dirty(package), "cores": _cores(),
        "load_at_start": [round(x, 2) for x in os.getloadavg()], "options": o,
        "injected": plan.injected(), "injected_by_part": plan.injected_by_part(),
    }
    sampler = Sampler(len(plan.submit) + sum(b[1] for b in plan.blocks), o["checkpoints"])
    timings: dict[str, float] = {}
    stats: dict[str, dict[str, int]] = {}
    counts: dict[str, tuple[range, array.array]] = {}
    map_checked = 0
    hung = None
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="poolx-soak-") as markers:
        common = {"mp_context": o["start_method"], "task_timeout": t, "initializer": init_worker,
                  "initargs": (4 * t, markers)}
        try:
            with poolx.Executor(o["workers"], **common) as ex:
                say(f"submit: {len(plan.submit):,} tasks, at most {o['window']:,} in flight")
                sampler.phase = "submit"
                t1 = time.perf_counter()
                counts["submit"] = (plan.submit, _submit_part(ex, "submit", plan.submit, plan.submit_faults,
                                                              o, checks, sampler))
                timings["submit_s"] = time.perf_counter() - t1
                say(f"map: {len(plan.blocks):,} map() calls of {o['block']} items, "
                    f"chunksize={o['chunksize']}, {o['map_window']} open at once")
                sampler.phase = "map"
                t1 = time.perf_counter()
                map_checked = _map_part(ex, "map", plan.blocks, o, checks, sampler)
                timings["map_s"] = time.perf_counter() - t1
                stats["main"] = _stats(ex)
            t1 = time.perf_counter()
            say(f"retried: {len(plan.flaky):,} tasks with retry_exceptions=(Flaky,), max_retries=2; "
                f"{len(plan.crash_once):,} with max_retries=1")
            for part, extra in (("flaky", {"max_retries": 2, "retry_exceptions": (Flaky,)}),
                                ("crash_once", {"max_retries": 1})):
                with poolx.Executor(o["workers"], **common, **extra) as ex:
                    counts[f"{part} submit"] = (plan.retried[part][0],
                                                _retried_part(ex, part, plan, o, checks))
                    stats[part] = _stats(ex)
            timings["retried_s"] = time.perf_counter() - t1
        except Hang as e:
            hung = str(e)
            say(f"HANG: {hung}; the soak stops here")
    elapsed = time.perf_counter() - t0
    sampler.phase = "end"
    sampler.sample()
    end_mb = sampler.samples.pop()["rss_mb"]

    if hung is None:
        for part, (ids, c) in counts.items():
            _check_counts(part, ids, c, checks)
        for part in stats:
            died, expected = stats[part]["workers_died"], plan.deaths(part)
            checks.check(f"{part} executor: workers_died == crashes injected", died == expected,
                         f"workers_died={died}, crashes={expected}")
            killed, expected = stats[part]["workers_exited"] - died, plan.timeouts(part)
            checks.check(f"{part} executor: workers killed == timeouts injected", killed == expected,
                         f"workers killed by the driver={killed}, timeouts={expected}")
    deadline = time.monotonic() + 5
    while set(_children()) - before_children and time.monotonic() < deadline:
        time.sleep(0.05)
    left = {p: c for p, c in _children().items() if p not in before_children}
    checks.check("no child process left", not left, f"left: {left}" if left else "")

    retried = len(plan.flaky) + len(plan.crash_once)
    checked = len(plan.submit) + map_checked + retried
    memory = sampler.report(o["max_growth_mb"], checks)
    memory["end_mb"] = round(end_mb, 1)
    result.update({
        "elapsed_s": round(elapsed, 2), "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "tasks_checked": checked, "map_items_planned": sum(b[1] for b in plan.blocks),
        "map_items_checked": map_checked, "retried_tasks": retried, "tasks_per_s": round(checked / elapsed),
        "statistics": stats, "memory": memory, "load_at_end": [round(x, 2) for x in os.getloadavg()],
        "checks": checks.results, "mismatch_count": dict(checks.mismatch_count),
        "mismatches": checks.mismatches, "hung": hung, "ok": checks.ok and hung is None,
    })
    return result


def summary(r: dict[str, Any]) -> str:
    m = r["memory"]
    lines = [
        f"soak: {r['options']['tasks']:,} tasks + {r['retried_tasks']:,} retried "
        f"({r['map_items_planned'] - r['map_items_checked']:,} map items after a fault not run), "
        f"{r['tasks_checked']:,} outcomes checked in {r['elapsed_s']:.1f} s "
        f"({r['tasks_per_s']:,} tasks/s; "
        + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in r["timings_s"].items()) + ")",
        f"  {r['options']['workers']} workers, {r['options']['start_method']}, "
        f"task_timeout={r['options']['task_timeout']:g} s, seed {r['options']['seed']}"
        f"; cores {r['cores']}, "
        f"load {r['load_at_start'][0]:.2f} at start",
        "  injected: " + ", ".join(f"{k} {v:,}" for k, v in r["injected"].items()),
        "  workers died / killed for a timeout: " + ", ".join(
            f"{k} {s['workers_died']}/{s['workers_exited'] - s['workers_died']}"
            for k, s in r["statistics"].items()),
        f"  poolx from {r['poolx_dir']}"
        + {True: " (with uncommitted changes)", False: " (clean)", None: ""}[r["poolx_uncommitted_changes"]]
        + f", commit {r['commit']}",
    ]
    if "first_mb" in m:
        lines.append(f"  driver RSS: first {m['first_mb']:.1f} MB (after warm-up), last {m['last_mb']:.1f}, "
                     f"max {m['max_mb']:.1f}, growth {m['growth_mb']:+.1f} MB "
                     f"({m['growth_per_100k_tasks_mb']:+.2f} MB per 100k tasks), per phase "
                     + ", ".join(f"{k} {v:+.1f}" for k, v in m["phase_growth_mb"].items())
                     + f"; {m['end_mb']:.1f} MB at the end")
    if r["hung"]:
        lines.append(f"  HUNG: {r['hung']}")
    for c in r["checks"]:
        if not c["ok"]:
            lines.append(f"  FAILED {c['name']}: {c['detail']}")
    if r["mismatch_count"]:
        lines.append("  mismatches: " + ", ".join(f"{k} {v}" for k, v in r["mismatch_count"].items()))
        shown: collections.Counter[str] = collections.Counter()
        for mm in r["mismatches"]:
            shown[mm["part"]] += 1
            if shown[mm["part"]] <= 3:
                lines.append(f"    [{mm['part']}] task {mm['task']}: expected {mm['expected']}; "
                             f"got {mm['got']}")
    lines.append(f"  {'OK: every check passed' if r['ok'] else 'FAILED'} ({len(r['checks'])} checks)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DEFAULTS
    p.add_argument("--tasks", type=int, default=d["tasks"],
                   help="tasks, half submit and half map (%(default)s)")
    p.add_argument("--workers", type=int, default=d["workers"])
    p.add_argument("--start-method", default=d["start_method"])
    p.add_argument("--task-timeout", type=float, default=d["task_timeout"], help="seconds (%(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--crash-rate", type=float, default=d["crash_rate"])
    p.add_argument("--timeout-rate", type=float, default=d["timeout_rate"])
    p.add_argument("--exception-rate", type=float, default=d["exception_rate"])
    p.add_argument("--retry-fraction", type=float, default=d["retry_fraction"],
                   help="size of the retried part, a fraction of --tasks (%(default)s)")
    p.add_argument("--flaky-rate", type=float, default=d["flaky_rate"])
    p.add_argument("--crash-once-rate", type=float, default=d["crash_once_rate"])
    p.add_argument("--window", type=int, default=d["window"], help="submit: futures in flight (%(default)s)")
    p.add_argument("--block", type=int, default=d["block"], help="map: items per map() call (%(default)s)")
    p.add_argument("--chunksize", type=int, default=d["chunksize"])
    p.add_argument("--map-window", type=int, default=d["map_window"], help="map() calls open at once")
    p.add_argument("--checkpoints", type=int, default=d["checkpoints"], help="memory samples (%(default)s)")
    p.add_argument("--max-growth-mb", type=float, default=d["max_growth_mb"],
                   help="driver memory growth allowed after warm-up (%(default)s MB)")
    p.add_argument("--hang-timeout", type=float, default=d["hang_timeout"],
                   help="seconds without progress that count as a hang (%(default)s)")
    p.add_argument("--json", metavar="PATH", help="write the figures here as JSON")
    p.add_argument("--quiet", action="store_true")
    args = vars(p.parse_args(argv))
    path = args.pop("json")
    quiet = args.pop("quiet")
    result = run_soak(log=None if quiet else (lambda msg: print(msg, flush=True)), **args)
    print(summary(result))
    if path:
        Path(path).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    # Run under the module's own name, so that the workers unpickle its
    # functions and exceptions as ``soak.*`` rather than ``__main__.*``.
    import soak

    sys.exit(soak.main(sys.argv[1:]))
