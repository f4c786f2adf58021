"""poolx._observe: a profiling session sees every executor a program makes, whatever its front end.

The observer here records what it is told, and reads the workers at ``closing``:
the contract is that they are still alive then (their pids and /proc facts are
what the session reports).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading

import psutil
import pytest
from _tasks import getpid, sleep_and_return, square

import poolx
from poolx import _observe

pytestmark = pytest.mark.timeout(120)


class Recorder:
    """An observer: the events it saw, and optional changes to the settings."""

    def __init__(self, **changes):
        self.changes = changes
        self.events: list[tuple[str, object]] = []
        self.settings: list[dict] = []
        self.executors: list[poolx.Executor] = []  # held: still reachable when left open
        self.alive_at_closing: dict[int, bool] = {}

    def configure(self, settings):
        self.settings.append(dict(settings))
        settings.update(self.changes)

    def opened(self, executor):
        self.events.append(("opened", executor))
        self.executors.append(executor)

    def closing(self, executor):
        self.events.append(("closing", executor))
        pids = list(executor.telemetry.worker_pids.values()) + list(executor.telemetry.actor_pids.values())
        self.alive_at_closing.update({pid: _running(pid) for pid in pids})

    def seen(self, kind):
        return [ex for k, ex in self.events if k == kind]


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def recorder():
    rec = Recorder()
    _observe.install(rec)
    try:
        yield rec
    finally:
        _observe.uninstall(rec)


def _opened_and_closed_once(rec: Recorder, n: int = 1) -> list[poolx.Executor]:
    opened = rec.seen("opened")
    assert len(opened) == n, rec.events
    assert rec.seen("closing") == opened, rec.events  # each exactly once, in the same order
    return opened


def test_executor_is_seen_opened_and_closing_while_its_workers_live(recorder, start_method):
    with poolx.Executor(2, mp_context=start_method) as ex:
        assert recorder.seen("opened") == [ex] and recorder.seen("closing") == []
        assert sorted(ex.map(square, range(6))) == [0, 1, 4, 9, 16, 25]
    _opened_and_closed_once(recorder)
    assert recorder.alive_at_closing and all(recorder.alive_at_closing.values()), recorder.alive_at_closing
    ex.shutdown()  # again: closing is said once
    _opened_and_closed_once(recorder)


@pytest.mark.parametrize("kill", [False, True])
def test_terminate_and_kill_workers_are_closing_too(recorder, kill):
    ex = poolx.Executor(1)
    ex.submit(sleep_and_return, 30)
    ex.prestart(60)
    (ex.kill_workers if kill else ex.terminate_workers)()
    ex.shutdown()
    _opened_and_closed_once(recorder)
    assert all(recorder.alive_at_closing.values()), recorder.alive_at_closing


def test_pool_and_thread_pool(recorder):
    with poolx.Pool(2) as pool:
        assert pool.map(square, range(4)) == [0, 1, 4, 9]
    with poolx.ThreadPool(2) as pool:
        assert pool.map(square, range(4)) == [0, 1, 4, 9]
    pool.join()
    pools = _opened_and_closed_once(recorder, 2)
    assert [ex.backend for ex in pools] == ["processes", "threads"]


def test_joblib_backend(recorder):
    joblib = pytest.importorskip("joblib")
    import poolx.joblib

    try:
        with joblib.parallel_config(backend="poolx", n_jobs=2):
            assert joblib.Parallel()(joblib.delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
        assert len(recorder.seen("opened")) == 1 and recorder.seen("closing") == []
    finally:
        poolx.joblib.shutdown_workers()
    _opened_and_closed_once(recorder)


def test_ray_style_api_tasks_and_actors(recorder):
    @poolx.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n

    poolx.init(num_cpus=2)
    try:
        assert poolx.get(poolx.remote(square).remote(7)) == 49
        counter = Counter.remote()
        assert poolx.get(counter.add.remote(2)) == 2
        (ex,) = recorder.seen("opened")
        assert ex.telemetry.actor_pids, "the actor ran in a process of its own"
    finally:
        poolx.shutdown()
    _opened_and_closed_once(recorder)


def test_configure_changes_the_settings(recorder, tmp_path):
    hook = MarkingHook(str(tmp_path))
    recorder.changes = {"max_workers": 3, "mp_context": "spawn", "trace_capacity": None, "child_hook": hook}
    with poolx.Executor(1, trace_capacity=2) as ex:
        assert ex.max_workers == 3
        pids = set(ex.map(getpid, range(40), chunksize=1))
        records = ex.telemetry.task_records()
    assert len(records) == 40  # trace_capacity None: every record kept, not the 2 asked for
    assert recorder.settings == [{"max_workers": 1, "mp_context": None, "backend": None,
                                  "trace_capacity": 2, "child_hook": None}]
    # the child hook ran in each worker process, which was spawned (not forked: no parent's modules)
    marks = {int(p.name.split("-")[1]): p.read_text() for p in tmp_path.iterdir()}
    assert pids <= set(marks) and all(v == "spawn" for v in marks.values()), (pids, marks)


class MarkingHook:
    """A child hook that leaves a file per process: its pid and its start method."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def start(self, label: str) -> None:
        method = multiprocessing.get_start_method(allow_none=True) or "?"
        with open(os.path.join(self.directory, f"p-{os.getpid()}"), "w") as f:
            f.write(method)

    def stop(self) -> None:
        pass


def test_a_program_left_mp_context_none_gets_the_sessions_start_method(recorder, monkeypatch):
    recorder.changes = {"mp_context": "fork"}
    monkeypatch.setattr(sys.modules[__name__], "MARK", "set by the test")
    with poolx.Executor(1) as ex:  # (poolx's default is forkserver: its workers import this module afresh)
        assert ex.submit(_mark).result() == "set by the test"  # a forked worker has the parent's memory


MARK = "set at import"


def _mark() -> str:
    return MARK


def test_executors_left_open_are_still_reachable(recorder):
    ex = poolx.Executor(1)
    assert ex.submit(square, 3).result() == 9
    del ex
    (held,) = recorder.seen("opened")
    assert recorder.seen("closing") == []
    assert not held.closed and held.statistics().tasks_completed == 1
    held.shutdown()
    _opened_and_closed_once(recorder)


def test_a_second_observer_is_refused_and_uninstall_is_exact(recorder):
    other = Recorder()
    with pytest.raises(RuntimeError, match="another poolx profiling session is active"):
        _observe.install(other)
    _observe.install(recorder)  # the same one again: no error
    _observe.uninstall(other)  # not the active one: nothing happens
    assert _observe.active() is recorder


def test_no_observer_nothing_is_called():
    assert _observe.active() is None
    with poolx.Executor(1, backend="threads") as ex:
        assert ex.submit(square, 2).result() == 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_inherit_the_observer(recorder):
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_report_observer, args=(child,))
    proc.start()
    try:
        assert parent.poll(60)
        assert parent.recv() == (None, True)
    finally:
        proc.join(60)
    assert _observe.active() is recorder


def _report_observer(conn) -> None:
    with poolx.Executor(1, backend="threads") as ex:  # made in the child: nobody is told
        ex.submit(square, 1).result()
    conn.send((_observe.active(), threading.current_thread() is threading.main_thread()))


def test_an_executor_that_fails_its_checks_is_configured_but_never_opened(recorder):
    with pytest.raises(ValueError):
        poolx.Executor(0)
    assert len(recorder.settings) == 1 and recorder.events == []


class Failing(Recorder):
    def configure(self, settings):
        settings["max_workers"] = 5
        raise ValueError("the observer's own bug")

    def opened(self, executor):
        super().opened(executor)
        raise ValueError("the observer's own bug")

    def closing(self, executor):
        super().closing(executor)
        raise ValueError("the observer's own bug")


def test_an_observer_that_fails_does_not_fail_the_executor(capsys):
    failing = Failing()
    _observe.install(failing)
    try:
        with poolx.Executor(1) as ex:
            assert ex.submit(square, 4).result() == 16
    finally:
        _observe.uninstall(failing)
    assert ex.closed and failing.seen("closing") == [ex]
    assert ex.max_workers == 1  # (a failed configure changes nothing)
    err = capsys.readouterr().err
    for what in ("configure a new executor", "record a new executor", "read a closing executor"):
        assert f"failed to {what}: ValueError: the observer's own bug" in err
    # (the leak guard checks that its worker is gone)
