"""Exact blame: a worker's death charges the task that killed it, and no other (issue 19).

A worker holds the task it runs and the tasks sent ahead of it (the prefetch
window, up to thousands of tiny tasks).  When it dies, the task it was running
fails (or runs again within its ``max_retries``); the tasks it had not started
run elsewhere as if never sent, whatever the crash rate; the tasks it had
finished keep their outcomes (the results log: ``_cell.read_log``) and never
run again.  Each test counts runs through a log file the tasks append to.
"""

from __future__ import annotations

import time

import pytest
from _blame_tasks import (
    close_every_fd_and_return,
    exit_once_returned,
    fate,
    faulty,
    faulty_item,
    noted,
    runs,
)

import poolx
from poolx import WorkerDiedError

pytestmark = pytest.mark.slow


def _check_outcomes(futures, log, n):
    """Every task's future holds its own outcome, and every task ran exactly once."""
    wrong = []
    for i, f in enumerate(futures):
        error = f.exception(timeout=120)
        what = fate(i)
        own = {"ok": error is None and f.result() == 2 * i,
               "raise": isinstance(error, ValueError),
               "crash": isinstance(error, WorkerDiedError) and "code 13" in str(error)}[what]
        if not own:
            wrong.append((i, what, repr(error)))
    assert not wrong, f"{len(wrong)} of {n} futures got another outcome than their own: {wrong[:5]}"
    counts = runs(log)
    twice = {i: c for i, c in counts.items() if c != 1}
    assert not twice, f"{len(twice)} tasks ran more than once (task: runs): {dict(list(twice.items())[:10])}"
    assert sorted(counts) == list(range(n)), "some tasks never ran"


@pytest.mark.timeout(240)
def test_a_steady_crash_rate_fails_only_the_crashing_tasks(start_method, tmp_path):
    """1% of tasks kill their worker and 1% raise, thousands in flight at once.

    Before exact blame, a task sent ahead to workers that died one after
    another was failed after 17 of them ("giving up on it") without ever
    running: 4,374 of 9,900 innocent tasks failed at this rate.
    """
    n = 6000 if start_method == "fork" else 3000  # (a spawned worker takes ~0.1 s to start)
    log = str(tmp_path / "runs")
    with poolx.Executor(2, mp_context=start_method) as ex:
        futures = [ex.submit(faulty, log, i) for i in range(n)]
        _check_outcomes(futures, log, n)
        stats = ex.statistics()
    assert stats.workers_died == n // 100, stats


@pytest.mark.timeout(240)
def test_a_steady_crash_rate_in_a_map_fails_only_the_crashing_items(start_method, tmp_path):
    """The same in Executor.map chunks: the chunk runs again without its culprit item."""
    n = 3000
    log = str(tmp_path / "runs")
    with poolx.Executor(2, mp_context=start_method) as ex:
        out = []
        it = ex.map(faulty_item, [log] * n, range(n), chunksize=50)
        for _ in range(n):
            try:
                out.append(next(it))
            except (ValueError, WorkerDiedError) as exc:
                out.append(exc)
                break  # map() ends at the first error, as the stdlib's
    first = next(i for i in range(n) if fate(i) != "ok")
    assert out[:first] == [2 * i for i in range(first)]
    assert isinstance(out[first], WorkerDiedError if fate(first) == "crash" else ValueError)


@pytest.mark.timeout(120)
def test_a_death_after_the_task_returned_keeps_its_outcome_and_runs_it_once(start_method, tmp_path):
    """A task whose thread kills the worker once it returned: its result is kept, it ran once.

    Its result was still waiting in the worker's batch when the worker died.
    Before, the cell said "finished", nobody was blamed and every task of the
    worker went back to the queue, the culprit included: it ran again on 17
    workers, killing each, and then failed though it had returned.
    """
    log = str(tmp_path / "runs")
    with poolx.Executor(1, mp_context=start_method) as ex:
        assert ex.submit(noted, log, 0).result(timeout=60) == 0
        for i in range(1, 4):
            assert ex.submit(exit_once_returned, log, i).result(timeout=60) == 2 * i
            # (its killer thread waits for the task's "finished" mark: a next task sent at
            # once could start first and leave it waiting out its deadline, the worker alive)
            deadline = time.monotonic() + 30
            while ex.statistics().workers_died < i and time.monotonic() < deadline:
                time.sleep(0.01)
        assert [f.result(timeout=60) for f in [ex.submit(noted, log, i) for i in range(4, 100)]] == [
            2 * i for i in range(4, 100)]
        stats = ex.statistics()
    assert runs(log) == dict.fromkeys(range(100), 1)
    assert stats.workers_died == 3, stats


@pytest.mark.timeout(120)
def test_a_task_that_closes_every_fd_keeps_its_result_and_its_neighbours_run(start_method, tmp_path):
    """Closing fds 3 and up (the channel among them) kills the worker once the task returns.

    Its result was logged before it could be sent; the tasks behind it run on
    another worker; nothing runs twice.  Before, the culprit ran 17 times with
    max_retries=0 and innocent neighbours of its batch failed in its place.
    """
    log = str(tmp_path / "runs")
    with poolx.Executor(1, mp_context=start_method) as ex:
        ex.submit(noted, log, 0).result(timeout=60)
        futures = [ex.submit(noted, log, i) for i in range(1, 200)]
        culprit = ex.submit(close_every_fd_and_return, log, 200)
        futures += [ex.submit(noted, log, i) for i in range(201, 400)]
        assert culprit.result(timeout=60) == 400
        assert [f.result(timeout=60) for f in futures] == [2 * i for i in range(1, 400) if i != 200]
    assert runs(log) == dict.fromkeys(range(400), 1)


@pytest.mark.timeout(120)
def test_the_task_running_when_its_worker_dies_still_gets_max_retries(tmp_path):
    """Exact blame changes nothing for the culprit: it runs 1 + max_retries times, then fails."""
    log = str(tmp_path / "runs")
    with poolx.Executor(2, max_retries=2) as ex:
        futures = [ex.submit(faulty, log, i) for i in range(300)]
        crashes = [i for i in range(300) if fate(i) == "crash"]
        for i in crashes:
            assert isinstance(futures[i].exception(timeout=60), WorkerDiedError)
        assert all(f.result(timeout=60) == 2 * i for i, f in enumerate(futures) if fate(i) == "ok")
    counts = runs(log)
    assert {counts[i] for i in crashes} == {3}
    assert {c for i, c in counts.items() if i not in crashes} == {1}


@pytest.mark.timeout(60)
def test_a_crash_noticed_after_the_task_timeout_is_a_crash_not_a_timeout(monkeypatch, tmp_path):
    """The loop saw a crashed task "over time" before it saw the worker's exit.

    On a loaded machine the soak's crashing tasks (os._exit(13)) got
    TaskTimeoutError: the timeout check ran first and found the dead worker's
    task still marked running.  The exit code says who ended it.
    """
    from poolx.backends.processes import driver

    on_exit = driver.Scheduler.on_exit

    def late_on_exit(self, w):
        time.sleep(0.3)  # the loop, starved of CPU, comes late: the timeout check first
        self.check_timeouts()
        return on_exit(self, w)

    monkeypatch.setattr(driver.Scheduler, "on_exit", late_on_exit)
    log = str(tmp_path / "runs")
    with poolx.Executor(1, task_timeout=0.1) as ex:
        crash = next(i for i in range(100) if fate(i) == "crash")
        error = ex.submit(faulty, log, crash).exception(timeout=30)
        assert isinstance(error, WorkerDiedError) and "code 13" in str(error), repr(error)
        assert ex.submit(faulty, log, 1).result(timeout=30) == 2
        stats = ex.statistics()
    assert stats.workers_died == 1, stats
