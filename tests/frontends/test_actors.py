"""Actors on every backend: calls, state, concurrency, handles in tasks, names, kill, crash, pools."""

from __future__ import annotations

import concurrent.futures as cf
import json
import pickle
import time

import pytest
from _actor_classes import (
    Broken,
    Clashing,
    Counter,
    Doubler,
    Relay,
    Rendezvous,
    Short,
    Slow,
    Tracker,
    Waiter,
    call_named,
    call_twice,
    track,
)

import poolx

pytestmark = pytest.mark.timeout(60)


def test_calls_run_in_order_and_keep_state(executor):
    counter = executor.actor(Counter, 10)
    futures = [counter.increment.remote() for _ in range(300)]
    assert [f.result(timeout=30) for f in futures] == list(range(11, 311))
    assert isinstance(futures[0], poolx.Future)
    assert counter.get.remote().result(timeout=30) == 310


def test_a_method_that_raises_fails_only_that_call(executor):
    counter = executor.actor(Counter)
    with pytest.raises(KeyError, match="no such thing") as info:
        counter.fail.remote().result(timeout=30)
    if executor.backend == "processes":
        assert isinstance(info.value.__cause__, poolx.RemoteTraceback)
        assert "in fail" in str(info.value.__cause__)
    assert counter.increment.remote().result(timeout=30) == 1


def test_processes_actor_is_its_own_process_outside_the_task_workers():
    with poolx.Executor(2) as ex:
        ex.submit(abs, 1).result(timeout=30)
        counter = ex.actor(Counter)
        pid = counter.where.remote().result(timeout=30)
        assert pid not in ex._backend.worker_pids()
        assert pid == ex._backend.actor_pid(ex._actors.by_id[counter._id])


def test_options_never_clash_with_the_constructors_keyword_arguments(executor):
    restarts = 1 if executor._backend.supports_actor_restarts else 0
    handle = executor.options(name="clash", max_restarts=restarts).actor(
        Clashing, name="inner", max_restarts=7, num_cpus=3)
    assert handle.get.remote().result(timeout=30) == ("inner", 7, 3)
    assert executor.get_actor("clash") == handle


def test_bad_options_are_named(executor):
    with pytest.raises(TypeError, match=r"unknown actor option 'max_restart'.*max_restarts"):
        executor.options(max_restart=1)
    with pytest.raises(ValueError, match="max_concurrency must be an integer >= 1"):
        executor.options(max_concurrency=0)
    with pytest.raises(ValueError, match="max_restarts must be"):
        executor.options(max_restarts=-2)
    with pytest.raises(TypeError, match="actor\\(\\) needs a class"):
        executor.actor(len)


def test_handle_errors_say_what_to_do(executor):
    counter = executor.actor(Counter)
    with pytest.raises(AttributeError, match=r"no method 'incremnt'; its methods: .*increment"):
        counter.incremnt.remote()
    with pytest.raises(TypeError, match=r"called with \.remote\(\)"):
        counter.increment()
    with pytest.raises(TypeError, match="cannot be sent to a task"):
        pickle.dumps(executor)


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_max_concurrency_runs_calls_at_the_same_time(backend):
    # Three calls that only return once all three are running at once.
    with poolx.Executor(2, backend=backend) as ex:
        actor = ex.options(max_concurrency=3).actor(Rendezvous, 3)
        futures = [actor.meet.remote(i) for i in range(3)]
        assert sorted(f.result(timeout=30) for f in futures) == [0, 1, 2]


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_async_methods_interleave_at_await(backend):
    with poolx.Executor(2, backend=backend) as ex:
        waiter = ex.actor(Waiter)
        woken = waiter.wait_for_signal.remote()  # parks at await until signal() runs
        assert waiter.signal.remote().result(timeout=30) == "signalled"
        assert woken.result(timeout=30) == "woken"
        naps = [waiter.nap.remote(0.3) for _ in range(5)]
        assert [f.result(timeout=30) for f in naps] == [0.3] * 5
        assert waiter.peak.remote().result(timeout=30) > 1  # naps overlapped


def test_async_methods_on_serial_run_one_at_a_time():
    with poolx.Executor(1, backend="serial") as ex:
        waiter = ex.actor(Waiter)
        assert waiter.nap.remote(0.01).result() == 0.01
        assert waiter.signal.remote().result() == "signalled"


def test_handle_passed_to_tasks_lecture_pattern(executor):
    tracker = executor.actor(Tracker)
    futures = [executor.submit(track, i, tracker) for i in range(6)]
    assert [f.result(timeout=30) for f in futures] == [i * 10 for i in range(6)]
    assert tracker.counts.remote().result(timeout=30) == 6
    # ... and through map
    assert list(executor.map(track, range(6), [tracker] * 6)) == [i * 10 for i in range(6)]
    assert tracker.counts.remote().result(timeout=30) == 12


def test_handle_passed_to_another_actor(executor):
    counter = executor.actor(Counter)
    relay = executor.actor(Relay, counter)
    assert relay.forward.remote(5).result(timeout=30) == 5
    assert counter.increment.remote().result(timeout=30) == 6


def test_named_actor_reachable_from_the_driver_and_from_tasks(executor):
    counter = executor.options(name="hits").actor(Counter)
    assert executor.get_actor("hits") == counter
    assert executor.submit(call_named, "hits", 3).result(timeout=30) == 3
    assert poolx.get_actor("hits").get.remote().result(timeout=30) == 3
    with pytest.raises(ValueError, match=r"already exists.*get_if_exists=True"):
        executor.options(name="hits").actor(Counter)
    again = executor.options(name="hits", get_if_exists=True).actor(Counter)
    assert again == counter
    with pytest.raises(ValueError, match=r"no live actor named 'miss'.*'hits'"):
        executor.get_actor("miss")
    with pytest.raises(ValueError, match="no live actor named 'miss'"):
        executor.submit(call_named, "miss", 1).result(timeout=30)


def test_kill_fails_pending_and_later_calls(executor):
    counter = executor.actor(Counter)
    assert counter.increment.remote().result(timeout=30) == 1
    if executor.backend != "serial":
        busy = counter.sleep.remote(2)  # on threads it runs on after the kill: keep it short
        queued = [counter.increment.remote() for _ in range(3)]
        time.sleep(0.2)
    executor.kill(counter)
    if executor.backend != "serial":
        for future in [busy, *queued]:
            with pytest.raises(poolx.ActorDiedError, match="killed"):
                future.result(timeout=30)
    with pytest.raises(poolx.ActorDiedError):
        counter.increment.remote().result(timeout=30)
    executor.kill(counter)  # a second kill is a no-op


def test_a_task_calling_a_dead_actor_gets_actor_died_each_time(executor):
    # The processes backend once sent a dead actor's answer to a task in a record
    # the task's process could not read: the task then lost every later answer.
    counter = executor.actor(Counter)
    executor.kill(counter)
    assert executor.submit(call_twice, counter).result(timeout=60) == ["ActorDiedError"] * 2


def test_kill_with_restart_starts_a_fresh_instance(executor):
    if not executor._backend.supports_actor_restarts:
        with pytest.raises(ValueError, match="cannot restart an actor: max_restarts"):
            executor.options(max_restarts=1).actor(Counter, 100)
        return
    counter = executor.options(max_restarts=1).actor(Counter, 100)
    assert counter.increment.remote().result(timeout=30) == 101
    executor.kill(counter, no_restart=False)
    assert counter.increment.remote().result(timeout=30) == 101  # state was lost, __init__ ran again
    executor.kill(counter, no_restart=False)  # no restart left
    with pytest.raises(poolx.ActorDiedError):
        counter.increment.remote().result(timeout=30)
    assert executor.statistics().actors_restarted == 1


def test_constructor_error_kills_the_actor_and_is_its_cause(executor):
    broken = executor.actor(Broken)
    with pytest.raises(poolx.ActorDiedError, match=r"could not be created.*ValueError") as info:
        broken.ping.remote().result(timeout=30)
    assert isinstance(info.value.__cause__, ValueError)
    assert "cannot build this one" in str(info.value.__cause__)


def test_release_runs_the_calls_made_then_stops(executor):
    with executor.actor(Counter) as counter:
        futures = [counter.increment.remote() for _ in range(20)]
    assert [f.result(timeout=30) for f in futures] == list(range(1, 21))
    with pytest.raises(poolx.ActorDiedError, match="released"):
        counter.increment.remote().result(timeout=30)


def test_statistics_and_trace_include_actors(executor, tmp_path):
    counter = executor.actor(Counter)
    for _ in range(5):
        counter.increment.remote().result(timeout=30)
    with pytest.raises(KeyError):
        counter.fail.remote().result(timeout=30)
    stats = executor.statistics()
    assert (stats.actors_started, stats.actors_alive) == (1, 1)
    assert (stats.actor_calls_submitted, stats.actor_calls_completed, stats.actor_calls_failed) == (6, 5, 1)
    assert stats.actor_calls_pending == 0
    assert stats.tasks_submitted == 0
    assert list(stats.actor_busy_time) == [next(iter(stats.actor_busy_time))]
    assert next(iter(stats.actor_busy_time)).startswith("Counter#")
    path = tmp_path / "trace.json"
    executor.export_trace(path)
    events = json.loads(path.read_text())["traceEvents"]
    lanes = [e for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    assert any(e["args"]["name"].startswith("actor Counter#") for e in lanes)
    calls = [e for e in events if e["ph"] == "X"]
    assert sorted(e["name"] for e in calls) == ["Counter.fail"] + ["Counter.increment"] * 5
    assert {e["tid"] for e in calls} == {lanes[0]["tid"]}


def test_shutdown_waits_for_actor_calls(backend):
    ex = poolx.Executor(2, backend=backend)
    counter = ex.actor(Counter)
    futures = [counter.increment.remote() for _ in range(50)]
    ex.shutdown(wait=True)
    assert [f.result(timeout=1) for f in futures] == list(range(1, 51))
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.actor(Counter)
    with pytest.raises(poolx.ActorDiedError, match="shut down"):
        counter.increment.remote().result(timeout=30)


def test_a_handle_cannot_be_used_where_its_executor_is_unknown():
    handle = poolx.ActorHandle(10**9, "Ghost#1", None, frozenset({"boo"}))
    with pytest.raises(poolx.PoolxError, match="cannot be used in this process"):
        handle.boo.remote()


# -- crashes (processes: an actor is a process that can die) -----------------------


@pytest.mark.parametrize("how, code", [("exit", "code 3"), ("kill", "SIGKILL")])
def test_crash_without_restart_fails_calls_and_names_the_exit(how, code):
    with poolx.Executor(1) as ex:
        counter = ex.actor(Counter)
        counter.increment.remote().result(timeout=30)
        crash = counter.crash.remote(how)
        behind = counter.increment.remote()
        for future in (crash, behind):
            with pytest.raises(poolx.ActorDiedError, match=code) as info:
                future.result(timeout=30)
        assert "while running Counter.crash()" in str(info.value) or future is behind
        with pytest.raises(poolx.ActorDiedError, match=code):
            counter.increment.remote().result(timeout=30)
        stats = ex.statistics()
        assert (stats.actors_died, stats.actors_alive, stats.actors_restarted) == (1, 0, 0)


def test_crash_with_restart_reruns_init_and_serves_later_calls():
    with poolx.Executor(1) as ex:
        counter = ex.options(max_restarts=1).actor(Counter, 5)
        first_pid = counter.where.remote().result(timeout=30)
        assert counter.increment.remote().result(timeout=30) == 6
        with pytest.raises(poolx.ActorDiedError, match="code 3"):
            counter.crash.remote().result(timeout=30)
        assert counter.increment.remote().result(timeout=30) == 6  # fresh state
        assert counter.where.remote().result(timeout=30) != first_pid
        with pytest.raises(poolx.ActorDiedError):
            counter.crash.remote().result(timeout=30)
        with pytest.raises(poolx.ActorDiedError):  # no restart left
            counter.increment.remote().result(timeout=30)
        assert ex.statistics().actors_restarted == 1


def test_max_task_retries_resends_the_calls_caught_in_a_crash():
    with poolx.Executor(1) as ex:
        counter = ex.options(max_restarts=1, max_task_retries=1).actor(Counter)
        crash = counter.crash.remote("kill")
        behind = [counter.increment.remote() for _ in range(3)]
        # The crashing call is retried too, and kills the restarted actor.
        with pytest.raises(poolx.ActorDiedError):
            crash.result(timeout=30)
        for future in behind:
            with pytest.raises(poolx.ActorDiedError):
                future.result(timeout=30)


def test_retries_deliver_queued_calls_to_the_restarted_actor():
    with poolx.Executor(1) as ex:
        counter = ex.options(max_restarts=1, max_task_retries=1).actor(Counter)
        slow = counter.sleep.remote(5)
        behind = [counter.increment.remote() for _ in range(3)]
        time.sleep(0.3)
        ex.kill(counter, no_restart=False)
        # A kill fails what was in flight unless retries allow: these were retried.
        assert slow.result(timeout=30) == 0
        assert [f.result(timeout=30) for f in behind] == [1, 2, 3]


def test_unpicklable_constructor_argument_is_named():
    with poolx.Executor(1) as ex:
        with pytest.raises(poolx.SerializationError, match=r"argument 0 \(builtins\.generator\).*picklable"):
            ex.actor(Counter, (i for i in range(3)))
        counter = ex.actor(Counter)
        with pytest.raises(poolx.SerializationError, match=r"Counter\.increment"):
            counter.increment.remote(i for i in range(3))
        assert ex.statistics().actor_calls_pending == 0


# -- ActorPool (Ray's API) -------------------------------------------------------------


def test_actor_pool_map_and_map_unordered(executor):
    pool = poolx.ActorPool([executor.actor(Doubler, f) for f in (2, 2)])
    assert list(pool.map(lambda a, v: a.__call__.remote(v), range(8))) == [v * 2 for v in range(8)]
    unordered = pool.map_unordered(lambda a, v: a.__call__.remote(v), range(8))
    assert sorted(unordered) == [v * 2 for v in range(8)]


def test_actor_pool_submit_get_next_and_idle_bookkeeping(executor):
    a, b = executor.actor(Counter), executor.actor(Counter)
    pool = poolx.ActorPool([a, b])
    assert pool.has_free() and not pool.has_next()
    for k in (1, 2, 3):
        pool.submit(lambda actor, v: actor.increment.remote(v), k)
    assert not pool.has_free()  # two busy, one value waiting
    results = [pool.get_next(timeout=30) for _ in range(3)]
    assert results[:2] == [1, 2] and results[2] in (4, 5)
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    idle = pool.pop_idle()
    assert idle in (a, b)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a if idle is b else b)
    pool.push(idle)
    with pytest.raises(TypeError, match="must return the future"):
        pool.submit(lambda actor, v: v, 1)


def test_actor_pool_get_next_times_out():
    with poolx.Executor(1, backend="threads") as ex:
        pool = poolx.ActorPool([ex.actor(Counter)])
        pool.submit(lambda a, v: a.sleep.remote(v), 0.5)
        with pytest.raises(TimeoutError):
            pool.get_next(timeout=0.01)
        assert pool.get_next(timeout=30) == 0


def test_actor_pool_drops_a_dead_actor():
    with poolx.Executor(1) as ex:
        good, bad = ex.actor(Counter), ex.actor(Counter)
        pool = poolx.ActorPool([good, bad])
        pool.submit(lambda a, v: a.crash.remote(), None)  # goes to the last idle actor: bad
        with pytest.raises(poolx.ActorDiedError):
            pool.get_next(timeout=30)
        assert pool.pop_idle() == good
        assert pool.pop_idle() is None


# -- map_actors: an autoscaling pool ------------------------------------------------------


def test_map_actors_maps_a_callable_class_in_order(executor):
    assert list(executor.map_actors(Doubler, range(20), args=(3,))) == [3 * v for v in range(20)]
    out = executor.options(max_concurrency=1).map_actors(Doubler, range(7), batch_size=3, ordered=False)
    assert sorted(out) == [2 * v for v in range(7)]
    assert executor.statistics().actors_alive == 0  # released at the end


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_map_actors_grows_with_the_backlog(backend):
    with poolx.Executor(2, backend=backend) as ex:
        out = list(ex.map_actors(Slow, range(24), min_size=1, max_size=3))
        assert out == list(range(24))
        stats = ex.statistics()
        assert 2 <= stats.actors_started <= 3
        assert stats.actors_alive == 0


def test_map_actors_shrinks_when_idle():
    def slow_source():
        yield from range(6)
        time.sleep(1.5)  # the pool sits idle here
        yield from range(6, 8)

    with poolx.Executor(2, backend="threads") as ex:
        alive_after_pause = []
        for value in ex.map_actors(Slow, slow_source(), min_size=1, max_size=3, idle_timeout=0.3):
            if value == 6:
                alive_after_pause.append(ex.statistics().actors_alive)
        assert ex.statistics().actors_started >= 2
        assert alive_after_pause and alive_after_pause[0] < ex.statistics().actors_started


def test_map_actors_errors(executor):
    with pytest.raises(TypeError, match="define __call__"):
        executor.map_actors(Counter, range(3))
    with pytest.raises(ValueError, match="max_size"):
        executor.map_actors(Doubler, range(3), min_size=2, max_size=1)
    with pytest.raises(ValueError, match="one result per item"):
        list(executor.map_actors(Short, range(4), batch_size=2))


def test_stdlib_helpers_accept_actor_futures(executor):
    counter = executor.actor(Counter)
    futures = [counter.increment.remote() for _ in range(10)]
    done, _ = cf.wait(futures, timeout=30)
    assert len(done) == 10
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == list(range(1, 11))
