"""Actor calls on the processes backend: the caller that waits reads its reply itself; calls held back.

A thread that waits for an actor call's result reads the actor's channel
itself when nobody else does (``driver/_actor_calls``), and calls made to a
sequential actor while it runs earlier ones go out together.  These tests try
to break both: a kill, a crash, a timeout and Ctrl-C while a caller reads;
several threads and a task calling one actor; a restart mid-stream; order
over 10,000 calls; calls held back that nobody waits for.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import time

import pytest
from _direct_actors import Log, Meeting, call_log

import poolx

pytestmark = pytest.mark.timeout(180)


def _slot(ex, handle):
    return ex._actors.by_id[handle._id].impl


def _reading(ex, handle):
    """Whether a caller reads the actor's channel itself now."""
    slot = _slot(ex, handle)
    proc = slot.proc if slot is not None else None
    return proc is not None and getattr(proc, "direct", False)


def _until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return False


class _After(threading.Thread):
    """``action()`` on a helper thread once ``predicate()`` holds (or after ``timeout``)."""

    def __init__(self, predicate, action, timeout=10.0):
        super().__init__(daemon=True)
        self.predicate, self.action, self.timeout = predicate, action, timeout
        self.held = None
        self.start()

    def run(self):
        self.held = _until(self.predicate, self.timeout)
        self.action()


def test_the_waiting_thread_completes_its_own_call(tmp_path):
    # The actor replies only once the caller waits (it waits for the file the helper
    # writes then): the caller's thread reads the reply and completes the future.
    with poolx.Executor(2) as ex:
        log = ex.actor(Log)
        assert log.add.remote(0).result(timeout=30) == 1
        done_on = []
        for i in range(3):
            flag = tmp_path / f"go{i}"
            future = log.wait_for.remote(str(flag))
            future.add_done_callback(lambda f: done_on.append(threading.current_thread()))
            helper = _After(lambda: _reading(ex, log), flag.touch)
            assert future.result(timeout=30) is True
            helper.join(30)
            assert helper.held
        assert done_on == [threading.main_thread()] * 3


def test_calls_made_while_one_runs_travel_together(tmp_path):
    flag = tmp_path / "go"
    with poolx.Executor(2) as ex:
        log = ex.actor(Log)
        assert log.count_messages.remote().result(timeout=30)
        first = log.wait_for.remote(str(flag))
        rest = [log.add.remote(i) for i in range(1000)]
        flag.touch()
        assert first.result(timeout=30) is True
        assert [f.result(timeout=30) for f in rest] == list(range(1, 1001))
        # 1,000 calls made while the first ran: a few messages, not one each.
        assert log.messages.remote().result(timeout=30) <= 1000 // 16


@pytest.mark.parametrize("how", ["kill", "sigkill", "crash"])
def test_the_actor_dies_while_a_caller_reads_its_channel(start_method, how, tmp_path):
    with poolx.Executor(2, mp_context=start_method) as ex:
        log = ex.options(max_restarts=1).actor(Log)
        pid = log.pid.remote().result(timeout=60)
        if how == "crash":
            future = log.add_or_die.remote("x", die_at="x")
            helper = None
        else:
            never = tmp_path / "never"
            future = log.wait_for.remote(str(never), 60)
            action = ((lambda: ex.kill(log, no_restart=False)) if how == "kill"
                      else (lambda: os.kill(pid, signal.SIGKILL)))
            started = tmp_path / "never.started"
            helper = _After(lambda: started.exists() and _reading(ex, log), action)
        with pytest.raises(poolx.ActorDiedError, match=r"the actor Log#\d+") as info:
            future.result(timeout=60)
        if helper is not None:
            helper.join(30)
            assert helper.held
        assert info.value.actor.startswith("Log#")
        if how != "kill":
            assert "while running Log." in str(info.value)
        # Restarted: calls work again, and the caller reads them itself again.
        assert log.add.remote(1).result(timeout=60) == 1
        assert log.pid.remote().result(timeout=60) != pid
        flag = tmp_path / "go"
        again = log.wait_for.remote(str(flag))
        helper = _After(lambda: _reading(ex, log), flag.touch)
        assert again.result(timeout=60) is True
        helper.join(30)
        assert helper.held


@pytest.mark.timeout(60)
def test_a_death_seen_only_by_the_liveness_check_wakes_the_reader(tmp_path):
    # A grandchild keeps the actor's socket and sentinel open after the actor died:
    # neither wakes the caller that reads its channel; the scheduler's liveness
    # check sees the death and must wake it.
    pid_file = tmp_path / "grandchild"
    with poolx.Executor(2, mp_context="fork") as ex:
        log = ex.actor(Log)
        log.add.remote(0).result(timeout=30)
        try:
            with pytest.raises(poolx.ActorDiedError, match=r"the actor Log#\d+"):
                log.fork_then_die.remote(str(pid_file)).result()  # (a timeout would end the wait)
        finally:
            if _until(pid_file.exists, 5) and pid_file.read_text():
                try:
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_a_timeout_while_reading_gives_the_channel_back(tmp_path):
    flag = tmp_path / "go"
    with poolx.Executor(2) as ex:
        log = ex.actor(Log)
        future = log.wait_for.remote(str(flag))
        for _ in range(3):
            with pytest.raises(cf.TimeoutError):
                future.result(timeout=0.05)
        assert not _reading(ex, log)
        flag.touch()
        # Nobody calls result() now: the scheduler must read the channel again.
        done, _ = cf.wait([future], timeout=60)
        assert done == {future}
        assert future.result() is True
        assert log.add.remote(1).result(timeout=30) == 1


def test_ctrl_c_while_reading_gives_the_channel_back(tmp_path):
    flag = tmp_path / "go"
    main = threading.main_thread().ident
    with poolx.Executor(2) as ex:
        log = ex.actor(Log)
        log.add.remote(0).result(timeout=30)
        future = log.wait_for.remote(str(flag))
        helper = _After(lambda: _reading(ex, log), lambda: signal.pthread_kill(main, signal.SIGINT))
        with pytest.raises(KeyboardInterrupt):
            future.result(timeout=60)
        helper.join(30)
        assert not _reading(ex, log)
        flag.touch()
        done, _ = cf.wait([future], timeout=60)
        assert done == {future}
        assert log.add.remote(1).result(timeout=30) == 2


def test_several_threads_call_one_actor():
    with poolx.Executor(2) as ex:
        log = ex.actor(Log)
        log.add.remote(("warm", 0)).result(timeout=30)
        errors = []

        def awaited(tag, n):
            try:
                positions = [log.add.remote((tag, i)).result(timeout=60) for i in range(n)]
                assert positions == sorted(positions)
            except BaseException as exc:
                errors.append(exc)

        def pipelined(tag, n):
            try:
                futures = [log.add.remote((tag, i)) for i in range(n)]
                positions = [f.result(timeout=60) for f in futures]
                assert positions == sorted(positions)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=awaited, args=(f"a{k}", 400)) for k in range(3)]
        threads += [threading.Thread(target=pipelined, args=(f"p{k}", 1500)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        items = log.items.remote().result(timeout=30)
        assert len(items) == 1 + 3 * 400 + 2 * 1500
        for tag, n in [("a0", 400), ("a1", 400), ("a2", 400), ("p0", 1500), ("p1", 1500)]:
            assert [i for t, i in items if t == tag] == list(range(n))


def test_calls_from_a_task_interleave_with_the_drivers():
    with poolx.Executor(2) as ex:
        log = ex.actor(Log)
        tasks = [ex.submit(call_log, log, f"task{k}", 300) for k in range(2)]
        mine = [log.add.remote(("driver", i)).result(timeout=60) for i in range(300)]
        piped = [log.add.remote(("piped", i)) for i in range(300)]
        for task in tasks:
            positions = task.result(timeout=120)
            assert positions == sorted(positions)
        assert mine == sorted(mine)
        [f.result(timeout=60) for f in piped]
        items = log.items.remote().result(timeout=30)
        assert len(items) == 4 * 300
        for tag in ("task0", "task1", "driver", "piped"):
            assert [i for t, i in items if t == tag] == list(range(300))


def test_a_restart_mid_stream_fails_what_it_held_and_runs_what_came_after():
    with poolx.Executor(2) as ex:
        log = ex.options(max_restarts=1).actor(Log)
        log.pid.remote().result(timeout=60)
        futures = [log.add_or_die.remote(i, 500) for i in range(1000)]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(timeout=60))
            except poolx.ActorDiedError as exc:
                outcomes.append(exc)
        # The calls whose results had come back before the crash succeeded, in order;
        # the call that crashed it and those in flight with it fail, naming the actor
        # and the call it died in (results the actor had not sent yet are lost with it);
        # the restarted instance runs the later ones, in order, counting from 1 again.
        ok = next(i for i, o in enumerate(outcomes) if isinstance(o, BaseException))
        assert ok <= 500 and outcomes[:ok] == list(range(1, ok + 1))
        failed = next((i for i, o in enumerate(outcomes[ok:]) if not isinstance(o, BaseException)),
                      len(outcomes) - ok)
        assert ok + failed > 500
        for died in outcomes[ok:ok + failed]:
            assert isinstance(died, poolx.ActorDiedError)
            assert died.actor.startswith("Log#") and "while running Log.add_or_die()" in str(died)
        later = outcomes[ok + failed:]
        assert later == list(range(1, len(later) + 1))
        assert log.add.remote("after").result(timeout=60) == len(later) + 1


def test_ten_thousand_calls_keep_their_order():
    with poolx.Executor(2) as ex:
        log = ex.actor(Log)
        futures = [log.add.remote(i) for i in range(10_000)]
        assert [f.result(timeout=120) for f in futures] == list(range(1, 10_001))
        for i in range(10_000, 12_000):
            if i % 3:
                assert log.add.remote(i).result(timeout=60) == i + 1
            else:
                futures = [log.add.remote(i)]
                assert futures[0].result(timeout=60) == i + 1
        assert log.items.remote().result(timeout=60) == list(range(12_000))


def test_calls_held_back_run_when_nobody_waits_for_them(tmp_path):
    flag = tmp_path / "go"
    with poolx.Executor(2) as ex:
        log = ex.actor(Log)
        first = log.wait_for.remote(str(flag))
        rest = [log.add.remote(i) for i in range(200)]
        flag.touch()
        # as_completed and wait() never call result(): the results come back through
        # the scheduler, which sends what was held back as each batch returns.
        done = list(cf.as_completed([first, *rest], timeout=60))
        assert len(done) == 201
        assert [f.result() for f in rest] == list(range(1, 201))
        # Held back behind a running call, then the actor released: they run before it stops.
        flag2 = tmp_path / "go2"
        first = log.wait_for.remote(str(flag2))
        rest = [log.add.remote(i) for i in range(50)]
        _After(lambda: False, flag2.touch, timeout=0.2).join(30)
        log.release(wait=True, timeout=60)
        assert [f.result(timeout=30) for f in rest] == list(range(201, 251))


def test_a_concurrent_actor_gets_its_calls_at_once():
    with poolx.Executor(2) as ex:
        meeting = ex.options(max_concurrency=2).actor(Meeting)
        waiting = meeting.wait.remote()  # runs until arrive() runs beside it
        assert meeting.arrive.remote().result(timeout=60) is True
        assert waiting.result(timeout=60) is True


def test_call_timeout_while_the_caller_reads():
    with poolx.Executor(2) as ex:
        log = ex.options(call_timeout=0.5, max_restarts=1).actor(Log)
        log.add.remote(0).result(timeout=60)
        with pytest.raises(poolx.TaskTimeoutError, match="call_timeout"):
            log.sleep.remote(60).result(timeout=60)
        assert log.add.remote(1).result(timeout=60) == 1


def test_shutdown_while_a_caller_reads(tmp_path):
    flag = tmp_path / "go"
    ex = poolx.Executor(2)
    log = ex.actor(Log)
    log.add.remote(0).result(timeout=30)
    future = log.wait_for.remote(str(flag))
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(future.result(timeout=60)))
    reader.start()
    _until(lambda: _reading(ex, log))  # (the reader waits in poll now)
    flag.touch()
    ex.shutdown(wait=True)
    reader.join(60)
    assert outcome == [True]


def test_the_ray_style_api_reads_directly_too():
    poolx.init(num_cpus=2)
    try:
        @poolx.remote
        class Tally:
            def __init__(self):
                self.n = 0

            def add(self, k):
                self.n += k
                return self.n

        tally = Tally.remote()
        assert poolx.get([tally.add.remote(1) for _ in range(2000)]) == list(range(1, 2001))
        assert [poolx.get(tally.add.remote(1)) for _ in range(200)] == list(range(2001, 2201))
        ready, pending = poolx.wait([tally.add.remote(1) for _ in range(50)], num_returns=50, timeout=60)
        assert len(ready) == 50 and not pending
    finally:
        poolx.shutdown()
