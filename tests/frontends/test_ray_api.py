"""The Ray-style API (poolx.remote, get, wait, put, cancel, kill, get_actor, init) on every backend,
futures as arguments (also through Executor.submit), and nested tasks."""

from __future__ import annotations

import concurrent.futures as cf
import random
import time

import pytest
from _helpers import run_script
from _ray_tasks import (
    Counter,
    Log,
    add,
    call_counter,
    crash_first_times,
    depth,
    divmod_remote,
    fail,
    fib,
    flaky,
    get_all,
    get_error,
    identity,
    is_writable,
    pid_after,
    qsort,
    total,
    wait_for_siblings,
    wrong_count,
)

import poolx

pytestmark = pytest.mark.timeout(60)

np = pytest.importorskip("numpy")

# For tests that need tasks to run while the caller goes on (not serial, which runs them at submit).
CONCURRENT = pytest.mark.parametrize("backend", ["threads", "processes"])


@pytest.fixture
def ray(backend):
    """poolx as Ray: the API's executor with 2 workers on each backend, shut down after the test."""
    poolx.init(num_cpus=2, backend=backend)
    yield poolx
    poolx.shutdown()


# -- init / shutdown ------------------------------------------------------------------


def test_init_accepts_rays_spelling_and_refuses_a_second_call():
    ex = poolx.init(num_cpus=3, backend="threads")
    try:
        assert poolx.is_initialized() and ex.max_workers == 3 and ex.backend == "threads"
        assert poolx.cluster_resources() == {"CPU": 3.0}
        with pytest.raises(RuntimeError, match="ignore_reinit_error"):
            poolx.init()
        assert poolx.init(ignore_reinit_error=True) is ex
    finally:
        poolx.shutdown()
    assert not poolx.is_initialized()


def test_init_names_what_it_does_not_accept():
    with pytest.raises(TypeError, match=r"'namespace'"):
        poolx.init(namespace="x")
    with pytest.raises(ValueError, match=r"address= is the cluster to run on, for backend='dask' or 'ray'"):
        poolx.init(address="auto", backend="processes")
    with pytest.raises(ValueError, match="give one of them"):
        poolx.init(num_workers=2, num_cpus=3)
    assert not poolx.is_initialized()


def test_the_first_remote_call_starts_the_executor():
    assert not poolx.is_initialized()
    try:
        assert poolx.get(add.remote(1, 2)) == 3
        assert poolx.is_initialized()
    finally:
        poolx.shutdown()


def test_local_mode_is_the_serial_backend():
    try:
        assert poolx.init(local_mode=True).backend == "serial"
    finally:
        poolx.shutdown()


# -- remote functions ---------------------------------------------------------------------


def test_remote_function_returns_a_future(ray):
    ref = add.remote(1, b=2)
    assert isinstance(ref, poolx.ObjectRef) and isinstance(ref, cf.Future)
    assert ray.get(ref) == 3
    assert ray.get([add.remote(i, i) for i in range(10)]) == [2 * i for i in range(10)]


def test_a_task_error_is_raised_by_get_as_itself(ray):
    with pytest.raises(ValueError, match="bad input"):
        ray.get(fail.remote("bad input"))
    # A list stops at the first failure in order, as Ray's get does.
    with pytest.raises(ValueError, match="second"):
        ray.get([add.remote(1, 1), fail.remote("second")])


def test_calling_remote_objects_directly_says_how(ray):
    with pytest.raises(TypeError, match=r"add\.remote\(\.\.\.\)"):
        add(1, 2)
    with pytest.raises(TypeError, match=r"Counter\.remote\(\.\.\.\)"):
        Counter()


def test_options_are_checked_and_named():
    with pytest.raises(TypeError, match=r"'scheduling_strategy'.*accepts: max_retries"):
        poolx.remote(scheduling_strategy="SPREAD")(lambda: 1)
    with pytest.raises(ValueError, match="num_gpus"):
        add.options(num_gpus=-1)
    with pytest.raises(ValueError, match="num_cpus= and num_gpus= instead of 'GPU'"):
        add.options(resources={"GPU": 1})
    with pytest.raises(ValueError, match="num_returns"):
        add.options(num_returns=0)
    with pytest.raises(TypeError, match="keyword options"):
        poolx.remote(1, 2)


def test_num_returns_splits_the_result(ray):
    q, r = divmod_remote.remote(17, 5)
    assert ray.get([q, r]) == [3, 2]
    q, r = add.options(num_returns=2).remote((1,), (2,))
    assert ray.get(q) == 1 and ray.get(r) == 2
    a, _ = wrong_count.remote()
    with pytest.raises(ValueError, match="num_returns=2"):
        ray.get(a)


def test_max_retries_reruns_a_task_whose_worker_died(tmp_path):
    poolx.init(num_cpus=2, backend="processes")
    try:
        path = str(tmp_path / "runs")
        assert poolx.get(crash_first_times.remote(path, 2)) == 2
        # One death more than the retries allow: the task fails with WorkerDiedError.
        path2 = str(tmp_path / "runs2")
        with pytest.raises(poolx.WorkerDiedError, match="exited with code 3"):
            poolx.get(crash_first_times.options(max_retries=1).remote(path2, 5))
    finally:
        poolx.shutdown()


def test_retry_exceptions_reruns_on_the_chosen_errors(ray, tmp_path):
    assert ray.get(flaky.remote(str(tmp_path / "a"), 2)) == 2
    with pytest.raises(KeyError):
        ray.get(flaky.options(max_retries=1).remote(str(tmp_path / "b"), 5))
    with pytest.raises(TypeError, match="retry_exceptions"):
        flaky.options(retry_exceptions="KeyError").remote("x", 1)


# -- get / wait ----------------------------------------------------------------------------


@CONCURRENT
def test_get_timeout_raises_a_timeout_error_and_the_task_goes_on(ray):
    ref = pid_after.remote(0.5)
    with pytest.raises(poolx.GetTimeoutError, match="1 of 1 refs not ready") as info:
        ray.get(ref, timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert ray.get(ref, timeout=30) > 0


def test_get_rejects_what_is_not_a_ref(ray):
    with pytest.raises(TypeError, match="item 1 is a int"):
        ray.get([add.remote(1, 1), 3])
    with pytest.raises(TypeError, match="list of refs"):
        ray.get("abc")


@CONCURRENT
def test_wait_keeps_input_order_and_returns_at_most_num_returns(ray):
    refs = [pid_after.remote(t) for t in (0.6, 0.0, 0.0, 0.6)]
    ready, not_ready = ray.wait(refs, num_returns=2, timeout=30)
    assert ready == [refs[1], refs[2]] and not_ready == [refs[0], refs[3]]
    ready, not_ready = ray.wait(refs, num_returns=4)
    assert ready == refs and not_ready == []
    # More ready than asked for: the first in input order.
    ready, not_ready = ray.wait(refs, num_returns=1)
    assert ready == [refs[0]] and not_ready == refs[1:]


@CONCURRENT
def test_wait_with_a_timeout_returns_what_is_ready(ray):
    slow = pid_after.remote(1.0)
    fast = add.remote(1, 1)
    ray.get(fast)
    ready, not_ready = ray.wait([slow, fast], num_returns=2, timeout=0.1)
    assert ready == [fast] and not_ready == [slow]
    ready, not_ready = ray.wait([slow], timeout=0)
    assert (ready, not_ready) == ([], [slow])
    ray.get(slow)


def test_wait_checks_its_arguments(ray):
    ref = add.remote(1, 1)
    with pytest.raises(TypeError, match=r"wait\(\[ref\]\)"):
        ray.wait(ref)
    with pytest.raises(ValueError, match="more than once"):
        ray.wait([ref, ref])
    with pytest.raises(ValueError, match="num_returns=2 is more than the 1"):
        ray.wait([ref], num_returns=2)
    assert ray.wait([]) == ([], [])


def test_a_failed_task_counts_as_ready(ray):
    bad = fail.remote("x")
    ready, _ = ray.wait([bad], timeout=30)
    assert ready == [bad]


# -- put ------------------------------------------------------------------------------------------


def test_put_is_a_snapshot_and_arrays_come_back_read_only(ray):
    data = np.arange(100_000, dtype=np.float64)
    ref = ray.put(data)
    data[:] = 0  # changing the original afterwards changes nothing
    value = ray.get(ref)
    assert value.sum() == sum(range(100_000))
    assert not value.flags.writeable
    assert ray.get(total.remote(ref)) == sum(range(100_000))


def test_put_refs_are_passed_to_tasks_and_actors(ray):
    words = ray.put(["a", "b", "c"])
    assert ray.get(add.remote(words, ["d"])) == ["a", "b", "c", "d"]
    log = Log.remote()
    log.append.remote(words)
    assert ray.get(log.read.remote()) == [["a", "b", "c"]]


def test_put_refuses_a_ref_and_what_cannot_be_pickled(ray):
    with pytest.raises(TypeError, match="put"):
        ray.put(add.remote(1, 1))
    with pytest.raises(poolx.SerializationError, match=r"put\(\) cannot pickle the builtins.list"):
        ray.put([__import__("threading").Lock()])


# -- futures as arguments --------------------------------------------------------------------------


def test_a_chain_runs_without_the_driver_waiting(ray):
    zeros = ray.remote(np.zeros)
    dot = ray.remote(np.dot)
    ref = dot.remote(zeros.remote((5, 5)), zeros.remote((5, 5)))
    assert ray.get(ref).shape == (5, 5)
    # A long chain: each link depends on the one before.
    ref = add.remote(0, 1)
    for _ in range(20):
        ref = add.remote(ref, 1)
    assert ray.get(ref) == 21


def test_a_failed_dependency_fails_the_dependent(ray):
    ref = add.remote(fail.remote("upstream"), 1)
    with pytest.raises(ValueError, match="upstream"):
        ray.get(ref)


@CONCURRENT
def test_a_cancelled_dependency_fails_the_dependent(ray):
    blocker = [pid_after.remote(0.3) for _ in range(2)]
    queued = pid_after.remote(0.0)
    assert queued.cancel()  # both workers are busy: it has not started
    with pytest.raises(poolx.TaskCancelledError, match="cancelled"):
        ray.get(add.remote(queued, 1))
    ray.get(blocker)


@pytest.mark.parametrize("backend", ["serial", "threads"])
def test_refs_inside_containers_stay_refs_in_process(ray):
    inner = add.remote(1, 1)
    (out,) = ray.get(add.remote([inner], []))
    assert out is inner


def test_refs_inside_containers_reach_a_worker_process_as_refs():
    poolx.init(num_cpus=1, backend="processes")
    try:
        inner = add.remote(1, 1)
        shared = poolx.put([1, 2, 3])
        assert poolx.get(get_all.remote([inner, shared])) == [2, [1, 2, 3]]
        # A failed ref raises its error where get() is called.
        assert "boom" in poolx.get(get_error.remote([fail.remote("boom")]))
        # Sent back out, a ref is the driver's own future again.
        out = poolx.get(identity.remote({"ref": inner}))
        assert out["ref"] is inner
    finally:
        poolx.shutdown()


def test_executor_submit_resolves_futures_too(executor):
    first = executor.submit(pow, 2, 10)
    second = executor.submit(divmod, first, 7)
    assert second.result(timeout=30) == divmod(1024, 7)
    both = executor.submit(max, executor.submit(abs, -3), executor.submit(abs, -5))
    assert both.result(timeout=30) == 5
    ref = executor.put([1, 2, 3])
    assert executor.submit(sum, ref).result(timeout=30) == 6


def test_executor_shutdown_waits_for_held_tasks(backend):
    ex = poolx.Executor(2, backend=backend)
    slow = ex.submit(time.sleep, 0.3)
    after = ex.submit(str, slow)
    ex.shutdown(wait=True)
    assert after.result(timeout=0) == "None"


def test_executor_shutdown_cancel_futures_cancels_held_tasks():
    ex = poolx.Executor(1, backend="processes")
    slow = ex.submit(time.sleep, 0.5)
    after = ex.submit(str, slow)
    ex.shutdown(wait=True, cancel_futures=True)
    assert after.cancelled()


def test_actor_calls_wait_for_their_arguments_and_keep_their_order(ray):
    log = Log.remote()
    slow = pid_after.remote(0.3)
    first = log.append.remote(slow)  # held until slow is done
    second = log.append.remote("after")  # made later: must run later
    assert ray.get([first, second]) == [1, 2]
    items = ray.get(log.read.remote())
    assert items[1] == "after" and isinstance(items[0], int)


# -- actors --------------------------------------------------------------------------------------


def test_actor_class_options_get_actor_and_kill(ray):
    counter = Counter.options(name="hits").remote(5)
    assert ray.get(counter.increment.remote()) == 6
    same = ray.get_actor("hits")
    assert ray.get(same.increment.remote(2)) == 8
    ray.kill(counter)
    with pytest.raises(poolx.ActorDiedError, match="killed"):
        ray.get(counter.value.remote())
    with pytest.raises(ValueError, match="no live actor named 'hits'"):
        ray.get_actor("hits")


def test_an_actor_handle_passed_to_tasks(ray):
    counter = Counter.remote()
    assert ray.get(call_counter.remote(counter, 5)) == 5


def test_actor_creation_is_refused_inside_a_task_with_the_reason():
    poolx.init(num_cpus=1, backend="processes")
    try:
        make = poolx.remote(lambda: Counter.remote())
        with pytest.raises(poolx.PoolxError, match="created by the driver"):
            poolx.get(make.remote())
    finally:
        poolx.shutdown()


# -- cancel ------------------------------------------------------------------------------------


def test_cancel_a_queued_task(ray):
    busy = [pid_after.remote(0.3) for _ in range(2)]
    queued = pid_after.remote(0.0)
    ray.cancel(queued)
    if queued.cancelled():  # (on serial, it had already run)
        with pytest.raises(poolx.TaskCancelledError):
            ray.get(queued)
    ray.get(busy)


def test_cancel_force_stops_a_running_task_and_the_rest_goes_on():
    poolx.init(num_cpus=2, backend="processes")
    try:
        running = pid_after.remote(60)
        other = pid_after.remote(0.2)
        time.sleep(0.5)
        poolx.cancel(running, force=True)
        with pytest.raises(poolx.TaskCancelledError, match="was stopped"):
            poolx.get(running, timeout=30)
        assert poolx.get(other) > 0
        assert poolx.get(add.remote(1, 1)) == 2
    finally:
        poolx.shutdown()


def test_cancel_force_on_a_backend_that_cannot_stop_a_task_says_so():
    poolx.init(num_cpus=1, backend="threads")
    try:
        running = pid_after.remote(0.5)
        time.sleep(0.1)
        with pytest.raises(ValueError, match="cannot stop a running task"):
            poolx.cancel(running, force=True)
        poolx.get(running)
    finally:
        poolx.shutdown()


# -- nested tasks ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_nested_tasks_deeper_than_the_workers_do_not_deadlock(backend):
    poolx.init(num_cpus=1, backend=backend)
    try:
        assert poolx.get(depth.remote(5), timeout=60) == 5
        assert poolx.get(fib.remote(6), timeout=60) == 8
        xs = [random.random() for _ in range(40)]
        assert poolx.get(qsort.remote(xs), timeout=60) == sorted(xs)
        assert poolx.get(wait_for_siblings.remote(4), timeout=60) == [1, 2, 3, 4]
    finally:
        poolx.shutdown()


def test_nested_tasks_on_serial_run_inline():
    poolx.init(backend="serial")
    try:
        assert poolx.get(fib.remote(6)) == 8
    finally:
        poolx.shutdown()


def test_borrowed_workers_are_given_back():
    ex = poolx.init(num_cpus=1, backend="processes")
    try:
        assert poolx.get(depth.remote(4), timeout=60) == 4
        # The chain borrowed 4 extra workers; once done, the extra ones retire.
        deadline = time.monotonic() + 10
        while ex.statistics().workers_alive > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ex.statistics().workers_alive <= 1
        assert poolx.get(add.remote(2, 3)) == 5
    finally:
        poolx.shutdown()


def test_a_nested_task_error_reaches_the_parent_task():
    nested = poolx.remote(lambda: poolx.get(fail.remote("deep")))
    poolx.init(num_cpus=1, backend="processes")
    try:
        with pytest.raises(ValueError, match="deep"):
            poolx.get(nested.remote())
    finally:
        poolx.shutdown()


def test_large_arrays_reach_remote_tasks_read_only_as_in_ray(ray, backend):
    small, large = np.ones(1000), np.ones(200_000)  # 8 KB, 1.6 MB
    assert ray.get(is_writable.remote(small)) is True
    # Through shared memory (processes backend) or a cluster's out-of-band buffers,
    # a large one is a read-only view, as with Ray.
    assert ray.get(is_writable.remote(large)) is (backend in ("serial", "threads"))
    assert large.sum() == 200_000


def test_no_worker_is_left_after_shutdown():
    ex = poolx.init(num_cpus=2, backend="processes")
    assert len(set(poolx.get([pid_after.remote(0.1) for _ in range(4)]))) >= 1
    poolx.shutdown()
    assert not ex._backend.worker_pids()  # (and the autouse fixture checks no process is left)


def test_init_at_the_top_of_a_script_starts_workers_once():
    # Ray scripts call init() at their top level; poolx workers import the script again
    # (spawn, forkserver), where init() must do nothing instead of starting workers of its own.
    result = run_script("""
        import os
        import psutil
        import poolx as ray

        ray.init(num_cpus=2)

        @ray.remote
        def pid():
            return os.getpid()

        if __name__ == "__main__":
            ray.get([pid.remote() for _ in range(4)])
            me = psutil.Process()
            helpers = ("forkserver", "resource_tracker")  # the stdlib's, not workers
            workers = [c for c in me.children(recursive=True)  # (nor poolx's own forkserver)
                       if c.ppid() != me.pid or not (any(h in " ".join(c.cmdline()) for h in helpers)
                                                     or c.name() == "poolx-zygote")]
            print(len(workers), ray.is_initialized())
            ray.shutdown()
    """, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "True"]


def test_a_waiting_task_stopped_with_force_gives_its_loan_back():
    ex = poolx.init(num_cpus=1, backend="processes")
    try:
        waiting = depth.remote(3)  # each level waits in get() for the next: loans
        deadline = time.monotonic() + 30
        while ex._backend._scheduler.borrowed == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        poolx.cancel(waiting, force=True)
        with pytest.raises(poolx.TaskCancelledError):
            poolx.get(waiting, timeout=30)
        # The children it left waiting finish or fail; every loan ends with them.
        deadline = time.monotonic() + 30
        while ex._backend._scheduler.borrowed and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ex._backend._scheduler.borrowed == 0
        assert poolx.get(add.remote(1, 2), timeout=30) == 3
    finally:
        poolx.shutdown()
