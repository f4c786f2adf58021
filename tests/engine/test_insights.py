"""insights() and str(statistics()): where an executor's time went, from its telemetry (issue 22, item 5).

A skewed workload (one slow function, one fast; the worker that runs the slow
task is given more time than the others) on every local backend and start
method; the figures are checked against what the tasks are known to do
(their sleeps), with loose bounds, never against timings that can flake.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

import poolx
from poolx._insights import Insights, insights

pytestmark = pytest.mark.timeout(120)

SLOW = 0.3  # seconds the one slow task sleeps
FAST = 0.005  # seconds each fast one sleeps
N_FAST = 30
SLEPT = SLOW + N_FAST * FAST  # the least working time the tasks add up to


def slow(x):
    time.sleep(SLOW)
    return x


def fast(x):
    time.sleep(FAST)
    return x


class Counter:
    def __init__(self):
        self.n = 0

    def increment(self):
        self.n += 1
        return self.n


def _skewed(ex: poolx.Executor) -> Insights:
    futures = [ex.submit(slow, 0)] + [ex.submit(fast, i) for i in range(N_FAST)]
    assert [f.result(timeout=60) for f in futures] == [0, *range(N_FAST)]
    return insights(ex)


def _check_skewed(ins: Insights, backend: str, workers: int) -> None:
    assert ins.backend == backend and ins.max_workers == workers
    # The slow function comes first (most total time), with the right counts.
    first, second = ins.functions[0], ins.functions[1]
    assert (first.name, first.tasks) == ("slow", 1)
    assert (second.name, second.tasks) == ("fast", N_FAST)
    assert first.max >= SLOW and first.mean == first.total == first.max
    assert second.total >= N_FAST * FAST and second.max >= FAST
    assert ins.slowest[0].function == "slow" and ins.slowest[0].seconds >= SLOW
    # Per lane: the tasks add up to the tasks run; working time to (at least) the sleeps.
    lanes = [lane for lane in ins.lanes if lane.kind == "worker"]
    assert sum(lane.tasks for lane in lanes) == N_FAST + 1 == ins.statistics.tasks_completed
    working = sum(lane.working for lane in lanes)
    assert SLEPT * 0.99 <= working <= 2 * SLEPT + 2.0  # (loose: a loaded machine oversleeps)
    assert sum(f.total for f in ins.functions) == pytest.approx(working)  # the same seconds
    # The lane that ran the slow task was given more: at least the slow sleep.
    busiest = next(lane for lane in lanes if lane.label == ins.slowest[0].lane)
    assert busiest.working >= SLOW * 0.99
    for lane in lanes:
        # Start-up, waiting, working and transfer fit in the time since the executor was created.
        spent = (lane.startup or 0.0) + lane.waiting + lane.working + lane.transfer
        assert spent <= ins.elapsed + 1e-6, lane
        assert lane.transfer == pytest.approx(lane.to_start + lane.unpickle + lane.pickle)
        assert min(lane.waiting, lane.transfer, lane.to_start, lane.unpickle, lane.pickle) >= 0


def test_processes(start_method):
    with poolx.Executor(2, mp_context=start_method) as ex:
        ins = _skewed(ex)
    _check_skewed(ins, "processes", 2)
    workers = [lane for lane in ins.lanes if lane.kind == "worker"]
    assert workers and all(lane.pid and lane.startup and lane.startup > 0 for lane in workers)
    assert all(lane.unpickle > 0 for lane in workers if lane.tasks)  # arguments travel pickled
    assert ins.elapsed >= SLOW


@pytest.mark.parametrize("backend", ["threads", "serial"])
def test_in_process_backends(backend):
    with poolx.Executor(2, backend=backend) as ex:
        ins = _skewed(ex)
    _check_skewed(ins, backend, 2)
    for lane in ins.lanes:
        # A thread (or the caller) has no process of its own to start, and nothing is pickled.
        assert lane.pid is None and lane.startup is None
        assert lane.unpickle == lane.pickle == 0
    if backend == "serial":
        assert [lane.label for lane in ins.lanes] == ["worker 0"]


@pytest.mark.parametrize("backend", ["processes", "threads", "serial"])
def test_actor_calls_are_lanes_of_their_own(backend):
    with poolx.Executor(2, backend=backend) as ex:
        counter = ex.actor(Counter)
        calls = [counter.increment.remote() for _ in range(7)]
        assert [f.result(timeout=60) for f in calls] == list(range(1, 8))
        assert ex.submit(fast, 1).result(timeout=60) == 1
        ins = insights(ex)
    (actor,) = [lane for lane in ins.lanes if lane.kind == "actor"]
    assert actor.label.startswith("actor Counter") and actor.tasks == 7
    assert sum(lane.tasks for lane in ins.lanes if lane.kind == "worker") == 1
    by_name = {f.name: f.tasks for f in ins.functions}
    assert by_name["fast"] == 1 and by_name[next(n for n in by_name if "increment" in n)] == 7
    if backend == "processes":
        assert actor.pid and actor.startup is not None and actor.startup > 0


def test_running_totals_cover_tasks_the_trace_let_go():
    with poolx.Executor(2, backend="threads", trace_capacity=5) as ex:
        assert list(ex.map(fast, range(20), chunksize=1)) == list(range(20))
        ins = insights(ex)
    assert ins.tasks_kept == 5 and ins.tasks_finished == 20
    assert sum(lane.tasks for lane in ins.lanes) == 20
    (fn,) = ins.functions
    assert fn.tasks == 20 and fn.total >= 20 * FAST
    assert any("newest 5 of 20" in note for note in ins.notes)
    assert "newest 5 of 20" in str(ins)


def test_text_with_rich():
    pytest.importorskip("rich")
    with poolx.Executor(2, backend="threads") as ex:
        ins = _skewed(ex)
    text = str(ins)
    assert text.startswith("poolx insights: threads backend, max_workers 2, 31 tasks finished")
    assert "─" * 20 in text  # drawn by rich: its rule under the headings
    assert any(line.split()[:2] == ["slow", "1"] for line in text.splitlines())
    assert "<table>" in ins._repr_html_() and "slow" in ins._repr_html_()


def test_text_without_rich(monkeypatch):
    for name in ("rich", "rich.console", "rich.table"):
        monkeypatch.setitem(sys.modules, name, None)  # import rich now fails
    with poolx.Executor(2, backend="serial") as ex:
        ins = _skewed(ex)
    text = str(ins)
    assert "─" not in text
    lines = text.splitlines()
    header = lines.index("Tasks by function (s)") + 1
    assert lines[header].split() == ["function", "tasks", "total", "mean", "max"]
    slow_row, fast_row = lines[header + 2].split(), lines[header + 3].split()
    assert slow_row[:2] == ["slow", "1"] and fast_row[:2] == ["fast", str(N_FAST)]
    # Figures are right-aligned under their headings.
    assert len(lines[header]) == len(lines[header + 2]) == len(lines[header + 3])
    worker = next(line for line in lines if line.strip().startswith("worker 0"))
    assert worker.split()[3] == str(N_FAST + 1)  # "worker", "0", pid "-", tasks


def test_to_dict():
    with poolx.Executor(1, backend="serial") as ex:
        ex.submit(fast, 1).result()
        data = insights(ex).to_dict()
    assert data["lanes"][0]["tasks"] == 1 and data["functions"][0]["name"] == "fast"
    assert data["statistics"]["tasks_completed"] == 1 and data["notes"] == []


def _boom():
    raise ValueError("input failed")


def test_a_task_whose_input_failed_counts_as_a_failed_task(tmp_path):
    # It never reached a worker (its worker stayed -1): it was counted as a failed
    # call of actor 1, and drawn in the trace on that actor's lane, before it began.
    with poolx.Executor(2, backend="threads") as ex:
        failing = ex.submit(_boom)
        dependent = ex.submit(fast, failing)
        with pytest.raises(ValueError):
            dependent.result(timeout=30)
        ins = insights(ex)
    stats = ex.statistics()
    assert (stats.tasks_failed, stats.actor_calls_failed, stats.tasks_pending) == (2, 0, 0)
    assert not [lane for lane in ins.lanes if lane.kind == "actor"]
    ex.export_trace(tmp_path / "trace.json")
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    assert [e["name"] for e in slices] == ["_boom"] and slices[0]["ts"] >= 0
    assert not [e for e in events if "actor" in e.get("args", {}).get("name", "")]


def test_statistics_print_as_tables(monkeypatch):
    with poolx.Executor(2, backend="threads") as ex:
        assert list(ex.map(fast, range(4), chunksize=1)) == list(range(4))
    stats = ex.statistics()
    assert repr(stats).startswith("Statistics(backend='threads', max_workers=2, tasks_submitted=4,")
    for name in ("rich", "rich.console", "rich.table"):
        monkeypatch.setitem(sys.modules, name, None)
    lines = str(stats).splitlines()
    assert lines[0] == "poolx statistics: threads backend, max_workers 2"
    rows = [line.split() for line in lines]
    assert ["submitted", "4", "0"] in rows and ["completed", "4", "0"] in rows
    header = lines.index("Tasks") + 1
    assert lines[header].split() == ["tasks", "actor", "calls"]
    assert len({len(line) for line in lines[header:header + 7]}) == 1  # aligned columns
    assert any(line.split()[:2] == ["worker", "0"] for line in lines)


@pytest.mark.skipif(not hasattr(poolx.Executor, "insights"),
                    reason="Executor.insights() is added at the merge")
def test_the_executor_method():
    with poolx.Executor(2, backend="threads") as ex:
        ins = _skewed(ex)
        assert isinstance(ex.insights(), Insights)
    _check_skewed(ins, "threads", 2)


def test_start_up_counts_from_when_the_backend_started_the_worker():
    # A backend that says when it started a worker's process (Telemetry.worker_started)
    # gets start-up from then; one that does not, from the executor's creation (noted).
    with poolx.Executor(1, backend="serial") as ex:
        tel = ex.telemetry
        time.sleep(0.05)
        tel.worker_ready(7, 4242)  # as a backend does when a worker says READY
        tel.worker_started(8)
        tel.worker_ready(8, 4343)
        ins = insights(ex)
    assert ins.startup_from_creation and any("creation" in note for note in ins.notes)
    lanes = {lane.label: lane for lane in ins.lanes}
    assert lanes["worker 7"].startup >= 0.05 > lanes["worker 8"].startup >= 0
    assert lanes["worker 8"].pid == 4343 and lanes["worker 8"].tasks == 0


def test_every_backend_counts_every_task(executor):
    # (the cluster backends too: a worker is known there by its first result)
    futures = [executor.submit(slow, 0)] + [executor.submit(fast, i) for i in range(5)]
    assert [f.result(timeout=60) for f in futures] == [0, *range(5)]
    ins = insights(executor)
    # (not their order: a task's time includes unpickling its function, and a fresh Ray
    # worker unpickling `fast` first imports this test module, poolx and pytest)
    assert sorted((f.name, f.tasks) for f in ins.functions) == [("fast", 5), ("slow", 1)]
    assert sum(lane.tasks for lane in ins.lanes) == 6
    assert sum(lane.working for lane in ins.lanes) >= SLOW + 5 * FAST
    assert all(lane.startup is None or lane.startup >= 0 for lane in ins.lanes)
    assert str(ins).startswith(f"poolx insights: {executor.backend} backend")
