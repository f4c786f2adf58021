"""``poolx.profile``: profile a program, or one block of it, as it is written.

::

    with poolx.profile("out/") as prof:     # or poolx profile run train.py
        train()                             # any poolx executor made here is watched
    print(prof.summary())

A ``Session`` installs itself as the process's observer (``poolx._observe``),
so it is told of every executor the program makes, whatever the front end
(Executor, Pool, ThreadPool, the joblib backend, the Ray-style API):

- when one is made, it may change its settings: every task's record kept
  (``trace_capacity=None``), the profilers in every worker and actor process
  (``_hook.ProfilerHook``, as ``poolx profile`` does), and the what-ifs it was
  given (``workers``, a ``start_method`` where the program left none);
- when one begins to shut down, it reads its worker and actor processes while
  they still live (CPU time, peak memory, when each was born);
- at ``stop()``, it splits each process's lifetime (its executor's, not the
  program's) into start-up, unpickling, compute, pickling, transfer and idle
  (``measure``), judges whether parallelism paid (``analyze``), and writes
  results.json, trace.json, report.html and the cpu/ or mem/ profiles into
  ``out`` (``report_program``).

With ``live``, a daemon thread rewrites a small JSON status file every
LIVE_INTERVAL seconds (what ``poolx profile run``'s live view shows).
"""

from __future__ import annotations

import html as _html
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _observe
from ..backends import get_backend
from . import analyze, env, measure, report, report_program
from ._hook import ProfilerHook, slug
from .profile import SCHEMA, collect_profiles, prepare_out, require_profiler

PROFILES = ("cpu", "mem", "none")
START_METHODS = ("fork", "forkserver", "spawn")
#: Seconds between two writes of the live status file: often enough for a live view
#: to look live, rare enough that reading every worker's /proc costs nothing visible.
LIVE_INTERVAL = 0.5
#: A worker process counts as busy in the live view when it used the CPU for more than
#: this share of the last interval (a task that waits on I/O does not count).
BUSY_CPU_SHARE = 0.2
#: Lane keys of executor n (n >= 1) are offset by (n - 1) * KEY_STRIDE, so that
#: the lanes of several executors never share one (worker indexes and actor ids
#: stay far below it).
KEY_STRIDE = 1_000_000
#: Seconds between two readings of the processes of an executor that began to shut down with
#: work still queued (until they are gone): the CPU of their last FOLLOW_INTERVAL is lost.
FOLLOW_INTERVAL = 0.05
#: The task records an executor keeps for the accounting, the newest: about 330 bytes
#: each (poolx._telemetry), so at most ~70 MB per executor.  Every task of most programs
#: (a map's tasks are its chunks; a joblib call's, its batches); one that makes more
#: one-item tasks is accounted for its last 200,000 only, and a note says so.
TASK_RECORDS = 200_000
#: The front end that made an executor, by the module whose frame called the constructor.
FRONT_ENDS = {"poolx.joblib": "joblib", "poolx._api": "Ray-style API",
              "poolx.harness.measure": "poolx profile"}
#: The stdlib's classes that --drop-in runs on poolx, by the function of poolx.harness.dropin
#: that makes poolx's object for them.
DROP_INS = {"_make_executor": "ProcessPoolExecutor (drop-in)", "_make_pool": "multiprocessing.Pool (drop-in)"}


@dataclass
class Watched:
    """An executor the program made, as the session saw it (times: time.perf_counter())."""

    index: int
    executor: Any  # held: an executor dropped without shutdown() is still read at stop()
    front_end: str
    created: float
    closed: float | None = None
    facts: dict[int, measure.Facts] | None = None  # read at closing, while the processes lived
    lanes: list[measure.Lane] = field(default_factory=list)
    tasks: list[tuple[Any, ...]] = field(default_factory=list)


class Session:
    """One profiled program or block: ``start()``, the program runs, ``stop()`` writes the files."""

    def __init__(self, out: str | os.PathLike[str], *, profile: str = "cpu", workers: int | None = None,
                 start_method: str | None = None, title: str = "poolx.profile",
                 argv: list[str] | None = None, live: str | os.PathLike[str] | None = None,
                 drop_in: bool = False) -> None:
        if profile not in PROFILES:
            raise ValueError(f"profile={profile!r}: choose 'cpu' (poolx's sampler), 'mem' (memray) or 'none'")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers={workers!r}: give every executor's worker count as an int >= 1, "
                             "or None to keep the program's")
        if start_method is not None and start_method not in START_METHODS:
            raise ValueError(f"start_method={start_method!r}: choose one of {', '.join(START_METHODS)}")
        self.out = Path(out)
        self.profile = profile
        self.workers = workers
        self.start_method = start_method
        self.title = title
        self.argv = list(sys.argv if argv is None else argv)
        self.live = Path(live) if live is not None else None
        self.drop_in = drop_in  # the program's stdlib pools were offered to poolx (the verdicts say so)
        self.results: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._watched: list[Watched] = []
        self._making = threading.local()  # when the executor being made in this thread began
        self._hook: ProfilerHook | None = None
        self._driver: ProfilerHook | None = None
        self._live: _LiveFile | None = None
        self._followers: list[threading.Thread] = []  # (closing: executors with work still queued)
        self._stopping = threading.Event()
        self._run: measure.Run | None = None
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._state = "new"

    # -- the observer (poolx._observe): told by every Executor made while active ---------

    def configure(self, settings: dict[str, Any]) -> None:
        self._making.created = time.perf_counter()
        settings["trace_capacity"] = TASK_RECORDS  # (the accounting needs every task's record)
        if self.workers is not None:
            settings["max_workers"] = self.workers
        backend = settings["backend"] or os.environ.get("POOLX_BACKEND") or "processes"
        if self.start_method is not None and settings["mp_context"] is None and backend == "processes":
            settings["mp_context"] = self.start_method
        if self._hook is not None and settings["child_hook"] is None:
            settings["child_hook"] = self._hook

    def opened(self, executor: Any) -> None:
        created = getattr(self._making, "created", None) or time.perf_counter()
        self._making.created = None
        with self._lock:
            self._watched.append(Watched(len(self._watched) + 1, executor, _front_end(executor), created))

    def closing(self, executor: Any) -> None:
        closed = time.perf_counter()
        facts = measure.read_processes(executor)
        with self._lock:
            watched = next((w for w in self._watched if w.executor is executor and w.closed is None), None)
            if watched is None:
                return
            watched.closed, watched.facts = closed, facts
            stats = executor.statistics()
            if stats.tasks_pending + stats.actor_calls_pending and not self._stopping.is_set():
                # shutdown(wait=True) with work still queued: the workers run it before they
                # stop, so their CPU and peak memory are read until they are gone.
                follower = threading.Thread(target=self._follow, args=(watched,), daemon=True,
                                            name=f"poolx-profile-follow-ex{watched.index}")
                self._followers.append(follower)
                follower.start()

    def _follow(self, w: Watched) -> None:
        executor = w.executor  # (stop() lets go of w.executor)
        while not self._stopping.wait(FOLLOW_INTERVAL):
            now = measure.read_processes(executor)
            with self._lock:
                w.facts = _latest(w.facts or {}, now)
            if not any(cpu is not None for cpu, _peak, _born in now.values()):
                return  # (all gone)

    # -- the session ---------------------------------------------------------------------

    def start(self) -> Session:
        """Watch every executor made from now on in this process, and profile this thread."""
        if self._state != "new":
            done = "started" if self._state == "on" else "stopped"
            raise RuntimeError(f"this profiling session has already {done}: a Session runs once; make "
                               "another for another block")
        prepare_out(self.out, f"out={str(self.out)!r}")
        # (absolute: a worker's working directory may differ from the driver's, and the
        # program may change its own before the files are written)
        self.out = self.out.resolve()
        if self.profile != "none":
            require_profiler(self.profile, f"profile={self.profile!r}",
                             ", or profile='none' for the timings alone")
            directory = self.out / self.profile / "program"
            directory.mkdir(parents=True)
            self._hook = ProfilerHook(self.profile, str(directory))
            self._driver = ProfilerHook(self.profile, str(directory))
        _observe.install(self)  # (RuntimeError when another session is active: nothing to undo here)
        self._state = "on"
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()
        if self.live is not None:
            self._live = _LiveFile(self.live, self)
            self._live.start()
        if self._driver is not None:
            self._driver.start("driver")
        return self

    def stop(self, *, exit_code: int | None = None, error: str | None = None,
             notes: Sequence[str] = ()) -> dict[str, Any]:
        """Stop watching, write the files into ``out`` and return the results (once: a second
        call returns the same results).  Call it from the thread that called ``start()``:
        the driver's profile is of that thread.

        ``exit_code`` given means the program has ended: the executors it left open
        are shut down now, as the interpreter's exit would, so that their workers
        write their profiles.  Without it (a block inside a program) they are left
        running, and read as they are.
        """
        with self._lock:
            if self._state == "off":
                if self.results is None:
                    raise RuntimeError("this profiling session's first stop() failed (its error was "
                                       "raised then): the files in its folder may be missing")
                return self.results
            if self._state == "new":
                raise RuntimeError("stop() before start(): nothing was profiled")
            self._state = "off"
        _observe.uninstall(self)
        if exit_code is not None:
            _shut_down_left_open(self._open())
        wall = time.perf_counter() - self._t0
        driver_cpu = time.process_time() - self._cpu0
        if self._live is not None:
            self._live.stop()
        self._stopping.set()
        for follower in list(self._followers):
            follower.join(timeout=10 * FOLLOW_INTERVAL)
        if self._driver is not None:
            self._driver.stop()
        for w in self._open():  # a block's executors, still running: read them as they are
            w.facts = measure.read_processes(w.executor)
        self.results = self._write(wall, driver_cpu, exit_code, error, list(notes))
        with self._lock:
            for w in self._watched:
                w.executor = None  # (an executor the program dropped may now be collected)
        return self.results

    def summary(self) -> str:
        """The terminal tables and the verdicts, as text (after ``stop()``)."""
        if self.results is None or self._run is None:
            return f"{self.title}: still running; stop() it (or leave its with block) for the summary"
        return report_program.terminal(self.results, self._run, self.out)

    def _repr_html_(self) -> str:
        """Jupyter: the report inline (in a frame of its own, so that its styles stay in it)."""
        if self.results is None or self._run is None:
            return f"<p>{_html.escape(self.summary())}</p>"
        page = report_program.html(self.results, self._run)
        return (f"<iframe srcdoc=\"{_html.escape(page, quote=True)}\" style='width:100%;height:640px;"
                f"border:1px solid #ddd'></iframe><p>files in <code>{_html.escape(str(self.out))}</code></p>")

    def __enter__(self) -> Session:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.stop()
            return
        try:
            self.stop(error="".join(traceback.format_exception(exc_type, exc, tb)))
        except Exception as failure:  # (the block's own error is the one to see)
            print(f"poolx.profile: the profile could not be written: {type(failure).__name__}: {failure}",
                  file=sys.stderr)

    def __repr__(self) -> str:
        return f"<poolx.profile {self.title!r} out={str(self.out)!r} {self._state}>"

    # -- building the results --------------------------------------------------------------

    def _open(self) -> list[Watched]:
        with self._lock:
            return [w for w in self._watched if w.closed is None and w.executor is not None]

    def _write(self, wall: float, driver_cpu: float, exit_code: int | None, error: str | None,
               notes: list[str]) -> dict[str, Any]:
        ok = error is None and exit_code in (None, 0)
        run = measure.Run("program", 0, 0, self.profile, wall=wall, ok=ok, error=error,
                          driver_cpu=driver_cpu, driver_peak_rss=measure.own_peak_rss())
        with self._lock:
            watched = list(self._watched)
        for w in watched:
            self._lanes_of(w, wall, several=len(watched) > 1)
            run.lanes += w.lanes
            run.tasks += w.tasks
        run.workers = len(run.lanes)
        measure.account(run)
        self._run = run
        program = {"argv": self.argv, "exit_code": exit_code, "error": error, "wall": wall,
                   "driver_cpu": driver_cpu, "driver_peak_rss": run.driver_peak_rss, "drop_in": self.drop_in}
        executors = [_executor_dict(w, self._t0) for w in watched]
        summary = analyze.program_summary([w.lanes for w in watched], run.tasks, wall, driver_cpu)
        notes += self._notes(watched)
        profiles = self._profiles(watched, run, notes)
        results = {
            "schema": SCHEMA, "kind": "program", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": self.title, "env": env.collect(), "program": program,
            "config": {"profile": self.profile,
                       "backend": ",".join(sorted({e["backend"] for e in executors})),
                       "workers": self.workers, "start_method": self.start_method},
            "executors": executors, "summary": summary,
            "verdicts": analyze.program_verdicts(program, executors, summary), "notes": notes,
            "profiles": profiles,
            "rows": [report.row_dict(r) for r in analyze.summarize([run], profiled=True)],
            "runs": [report.run_dict(run)],
        }
        (self.out / "results.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
        spans = [(f"ex{e['index']} {e['front_end']} ({e['backend']}, {e['max_workers']} workers)",
                  e["created"], wall if e["closed"] is None else e["closed"]) for e in executors]
        (self.out / "trace.json").write_text(json.dumps(report.trace([run], spans)), encoding="utf-8")
        (self.out / "report.html").write_text(report_program.html(results, run), encoding="utf-8")
        return results

    def _lanes_of(self, w: Watched, wall: float, several: bool) -> None:
        """``w``'s lanes and tasks on the program's clock, keyed and labelled apart from the others'."""
        start = w.created - self._t0
        lanes, tasks = measure.lanes_and_tasks(w.executor, self._t0, wall, start=start, facts=w.facts)
        # Its lifetime: until shut down (tasks that ran on after shutdown() began included).
        end = wall if w.closed is None else max([w.closed - self._t0, *(t[5] + t[11] for t in tasks)])
        offset = (w.index - 1) * KEY_STRIDE
        moved = {lane.key: (lane.key + offset if lane.key >= 0 else lane.key - offset) for lane in lanes}
        for lane in lanes:
            lane.key, lane.end = moved[lane.key], min(end, wall)
            lane.label = f"ex{w.index} {lane.label}" if several else lane.label
        w.lanes = lanes
        w.tasks = [(t[0], moved.get(t[1], t[1]), *t[2:]) for t in tasks]

    def _notes(self, watched: list[Watched]) -> list[str]:
        notes = []
        if self.profile == "cpu":  # (memray's capture of the driver tracks every thread of it)
            threads = sorted({w.executor.backend for w in watched if w.executor.backend == "threads"})
            if threads:
                notes.append("the threads backend runs tasks in threads of this process: the CPU profile "
                             "(the sampler) is of the driver's own thread, so the tasks in worker threads "
                             "are not in it; their time is in the lanes and the timeline")
        for w in watched:
            dropped = w.executor.telemetry.trace_kept()["tasks_not_kept"]
            if dropped > 0:
                notes.append(f"ex{w.index} ran more than {TASK_RECORDS:,} tasks: its {dropped:,} oldest were "
                             "not kept, so its workers' time before them counts as idle, and the timeline "
                             "starts later (the executors table counts every task)")
            if w.closed is None:
                notes.append(f"ex{w.index} ({w.front_end}) was still open when the profile stopped: it is "
                             "counted to the end, and its worker processes, still running, have not written "
                             "their profiles; shut it down inside the profiled block to have them")
        return notes

    def _profiles(self, watched: list[Watched], run: measure.Run, notes: list[str]) -> dict[str, Any]:
        if self.profile == "none":
            return {}
        directory = self.out / self.profile / "program"
        lanes = [lane for w in watched if _uses_processes(w.executor.backend) for lane in w.lanes if lane.pid]
        _relabel_files(directory, {lane.pid: lane.label for lane in lanes if lane.pid})
        cluster = any(w.executor.backend in ("dask", "ray") for w in watched)
        try:
            info = collect_profiles(self.profile, directory, self.title, lanes, cluster)
        except Exception as exc:  # (the timings and the report still stand)
            notes.append(f"the {self.profile} profiles could not be read: {type(exc).__name__}: {exc}")
            return {}
        # The workers of an executor still open have not ended, so have not written their
        # profiles yet (a note says so): they are not missing for having died.
        running = {lane.label for w in watched if w.closed is None for lane in w.lanes}
        info["missing"] = [label for label in info["missing"] if label not in running]
        info.update(kind=self.profile, mode="program", workers=run.workers, wall=run.wall,
                    folder=str(directory.relative_to(self.out)))
        return {"program": info}

    # -- the live status (LIVE_INTERVAL) ----------------------------------------------------

    def status(self, cpu_seen: dict[int, float], interval: float) -> dict[str, Any]:
        """What the live status file holds now; ``cpu_seen`` (pid -> CPU seconds at the last
        call) is updated, to tell busy workers from idle ones."""
        with self._lock:
            watched = [w for w in self._watched if w.executor is not None]
            several = len(self._watched) > 1
        done = failed = pending = workers = busy = opened = 0
        memory = []
        for w in watched:  # (the tasks of every executor so far; the workers of those still open)
            stats = w.executor.statistics()
            done += stats.tasks_completed + stats.actor_calls_completed
            failed += stats.tasks_failed + stats.actor_calls_failed
            if w.closed is not None:
                continue
            opened += 1
            pending += stats.tasks_pending + stats.actor_calls_pending
            alive = stats.workers_alive + stats.actors_alive
            workers += alive
            procs = _processes(w.executor.telemetry)
            if not procs:  # (threads, serial: no process of their own; busy while work is pending)
                busy += min(alive, stats.tasks_pending + stats.actor_calls_pending)
            for label, pid in procs:
                cpu, rss = _cpu_and_rss(pid)
                if cpu is None:
                    continue
                if cpu - cpu_seen.get(pid, cpu) > BUSY_CPU_SHARE * interval:
                    busy += 1
                cpu_seen[pid] = cpu
                memory.append({"label": f"ex{w.index} {label}" if several else label, "pid": pid, "rss": rss})
        running = min(pending, busy)
        return {"t": time.perf_counter() - self._t0, "executors": opened, "tasks_done": done,
                "tasks_failed": failed, "tasks_queued": pending - running, "tasks_running": running,
                "workers": workers, "workers_busy": busy, "memory": memory}


def profile(out: str | os.PathLike[str] = "poolx-profile", **options: Any) -> Session:
    """Profile a block of a program: ``with poolx.profile("out/") as prof: ...``.

    Every poolx executor made in the block is watched: per worker CPU
    (``profile="cpu"``, poolx's sampler, saved as pyinstrument sessions) or memory
    (``"mem"``, memray) profiles,
    the task timeline, where each worker's time went, and verdicts, written into
    ``out`` (report.html, results.json, trace.json) when the block ends;
    ``prof.summary()`` gives the tables as text, and in Jupyter the session
    shows the report.  ``options``: ``profile``, ``workers`` (every executor's
    worker count: a what-if), ``start_method`` (for executors that give none),
    ``title``, ``argv``, ``live`` (a status file, rewritten twice a second).
    """
    return Session(out, **options)


class _LiveFile:
    """The daemon thread that rewrites the live status file (tmp file + os.replace)."""

    def __init__(self, path: Path, session: Session) -> None:
        self.path = path
        self.session = session
        self.stopping = threading.Event()
        self.cpu_seen: dict[int, float] = {}
        self.done_before = 0
        self.thread = threading.Thread(target=self._run, name="poolx-profile-live", daemon=True)

    def start(self) -> None:
        self.write(LIVE_INTERVAL)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(LIVE_INTERVAL):
            try:
                self.write(LIVE_INTERVAL)
            except Exception as exc:  # (a full disk: the live view stops, the program does not)
                print(f"poolx profile: cannot write the live status {self.path}: {exc}", file=sys.stderr)
                return

    def write(self, interval: float) -> None:
        status = self.session.status(self.cpu_seen, interval)
        status["throughput"] = max(0, status["tasks_done"] - self.done_before) / interval
        self.done_before = status["tasks_done"]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(status), encoding="utf-8")
        os.replace(tmp, self.path)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10 * LIVE_INTERVAL)
        try:
            self.write(LIVE_INTERVAL)  # the final state
        except Exception:
            pass


def _latest(before: dict[int, measure.Facts], now: dict[int, measure.Facts]) -> dict[int, measure.Facts]:
    """Each process's facts at their largest (CPU and peak only grow; a gone process reads None)."""
    merged = dict(before)
    for pid, (cpu, peak, born) in now.items():
        old_cpu, old_peak, old_born = merged.get(pid, (None, None, None))
        merged[pid] = (_larger(cpu, old_cpu), _larger(peak, old_peak), born if old_born is None else old_born)
    return merged


def _larger(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


def _processes(tel: Any) -> list[tuple[str, int]]:
    workers = [(f"worker {i}", pid) for i, pid in sorted(tel.worker_pids.items())]
    actors = [(f"actor {tel.actor_labels.get(a, a)}", pid) for a, pid in sorted(tel.actor_pids.items())]
    return workers + actors


def _cpu_and_rss(pid: int) -> tuple[float | None, int]:
    try:
        import psutil

        proc = psutil.Process(pid)
        with proc.oneshot():
            times, rss = proc.cpu_times(), proc.memory_info().rss
        return times.user + times.system, int(rss)
    except Exception:  # (gone, or psutil missing)
        return None, 0


def _front_end(executor: Any) -> str:
    """Which front end made ``executor``, from the poolx frames that called its constructor:
    a drop-in's (the stdlib's class it stands for) first, else the innermost front end."""
    frame = sys._getframe(2)
    found = []
    while frame is not None and frame.f_globals.get("__name__", "").startswith("poolx."):
        found.append((frame.f_globals["__name__"], frame.f_code.co_name, frame.f_locals.get("self")))
        frame = frame.f_back  # type: ignore[assignment]
    for module, function, _owner in found:
        if module == "poolx.harness.dropin" and function in DROP_INS:
            return DROP_INS[function]
    for module, _function, owner in found:
        if module == "poolx._pool" and owner is not None:  # Pool or ThreadPool (or a subclass)
            return type(owner).__name__
        if module in FRONT_ENDS:
            return FRONT_ENDS[module]
    return type(executor).__name__


def _executor_dict(w: Watched, t0: float) -> dict[str, Any]:
    stats = w.executor.statistics()  # (counts every task, kept or not: TASK_RECORDS)
    return {"index": w.index, "backend": w.executor.backend, "max_workers": w.executor.max_workers,
            "front_end": w.front_end, "created": w.created - t0,
            "closed": None if w.closed is None else w.closed - t0,
            "tasks": (stats.tasks_completed + stats.tasks_failed + stats.actor_calls_completed
                      + stats.actor_calls_failed),
            "failed": stats.tasks_failed + stats.actor_calls_failed}


def _shut_down_left_open(watched: list[Watched]) -> None:
    """The program ended: shut down what it left open, as the interpreter's exit would."""
    for w in watched:
        try:
            w.executor.shutdown(wait=True)
        except Exception as exc:
            print(f"poolx profile: shutting down ex{w.index} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


def _uses_processes(backend: str) -> bool:
    return bool(get_backend(backend).uses_processes)


def _relabel_files(directory: Path, labels: dict[int, str]) -> None:
    """Name each profile file after its process's lane ("ex2 worker 0"): a worker labels its
    file with what it knows ("worker 0"), and two executors each have a worker 0."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        stem, dash, rest = path.name.rpartition("-p")
        pid = rest.split("-")[0].split(".")[0]
        if dash and pid.isdigit() and int(pid) in labels and stem != slug(labels[int(pid)]):
            path.rename(path.with_name(f"{slug(labels[int(pid)])}-p{rest}"))
