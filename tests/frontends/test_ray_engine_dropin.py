"""What a Ray user hits next, in the engine (issue 21, item 9): refs made inside tasks and actors
leave them as in Ray (returned, or passed to an actor call), and a handle made by one executor
reaches its actor from the workers of another (a Pool, a second Executor).  Real Ray was the
control for the Ray-style programs here (the same results, run by hand: Ray is too slow to start
for the suite); the Pool and Executor ones have no Ray counterpart but Ray's rule, any worker
can call any handle."""

from __future__ import annotations

import concurrent.futures as cf
import os

import pytest
from _ray_refs import (
    Keeper,
    PlainKeeper,
    call_take,
    call_take_in_dict,
    call_take_in_list,
    call_take_no_wait,
    calls_in_order,
    passes_put_to_actor,
    passes_ref_to_actor,
    pool_returns_waiting_ref,
    returns_failed_ref_in_list,
    returns_put,
    returns_ref,
    returns_waiting_ref,
    sums_refs_in_a_list,
)

import poolx

pytestmark = pytest.mark.timeout(180)

IN_PROCESS = pytest.mark.parametrize("backend", ["threads", "serial"])


@pytest.fixture
def ray(start_method):
    """poolx as Ray on its default backend (processes), under each start method."""
    poolx.init(num_cpus=2, mp_context=start_method)
    yield poolx
    poolx.shutdown()


@pytest.fixture
def gate(tmp_path):
    """A file that tasks and actor methods wait for; created at the latest when the test ends
    (before the executor's shutdown, which waits for them, when requested after its fixture)."""
    path = tmp_path / "gate"
    yield path
    path.touch()


def _ref_round_trips(ray, gate, inline=False):
    """The ref programs: each result is what Ray gives for the same program (``inline``: the
    serial backend runs a task when it is submitted, so no ref is still running when returned)."""
    # A ref returned by a task is a ref in the driver: get() of it gives the inner task's value.
    inner = ray.get(returns_ref.remote(3))
    assert isinstance(inner, cf.Future) and ray.get(inner) == 30
    # ... also when the inner task is still running when the outer one returns.
    if inline:
        gate.touch()
    inner = ray.get(returns_waiting_ref.remote(str(gate), 4))
    assert isinstance(inner, cf.Future)
    gate.touch()
    assert ray.get(inner, timeout=60) == 40
    # A put() made in a task, returned.
    assert ray.get(ray.get(returns_put.remote(5))) == 6
    # An inner task's error comes out of get() of its ref, itself (inside a list here).
    [failed] = ray.get(returns_failed_ref_in_list.remote())
    with pytest.raises(KeyError, match="made inside"):
        ray.get(failed)
    # A ref made in a task, passed to an actor method: the method gets its value.
    keeper, other = Keeper.remote(), Keeper.remote()
    assert ray.get(passes_ref_to_actor.remote(keeper, 7)) == 70
    assert ray.get(passes_put_to_actor.remote(keeper, 8)) == 8
    # An actor method that makes a ref returns the ref, or passes it on to another actor.
    made = ray.get(keeper.make_ref.remote(9))
    assert isinstance(made, cf.Future) and ray.get(made) == 90
    assert ray.get(keeper.pass_on.remote(other, 11)) == 110
    assert ray.get(keeper.log.remote()) == [70, 8]
    assert ray.get(other.log.remote()) == [110]
    # Refs made in a task, inside a list, to a task and to an actor: they get them as refs.
    assert ray.get(sums_refs_in_a_list.remote(keeper, 3)) == (30, 30)


def test_refs_made_inside_tasks_and_actors_leave_them(ray, gate):
    _ref_round_trips(ray, gate)


@IN_PROCESS
def test_refs_made_inside_tasks_and_actors_leave_them_in_process(api, backend, gate):
    _ref_round_trips(api, gate, inline=backend == "serial")


def test_calls_waiting_for_a_ref_keep_their_order(ray, gate):
    """A task calls an actor with a ref still running, then with a plain value: the actor gets the
    calls in the order made (Ray's order for one caller), the first with the ref's value."""
    keeper = Keeper.remote()
    both = calls_in_order.remote(keeper, str(gate))
    done, _ = ray.wait([both], timeout=1.0)
    assert not done  # the first call waits for its ref, and the second behind it
    gate.touch()
    assert ray.get(both, timeout=60) == [10, 2]
    assert ray.get(keeper.log.remote()) == [10, 2]


def test_a_ref_whose_maker_exits_before_its_value_fails_instead_of_hanging(start_method, gate):
    """Ray: OwnerDiedError.  poolx: the ref fails, saying its maker is gone, and get() returns."""
    with poolx.Pool(1, maxtasksperchild=1, context=start_method) as pool:
        try:
            inner = pool.apply(pool_returns_waiting_ref, (str(gate),))
            with pytest.raises(poolx.exceptions.ObjectLostError, match="exited before the value was ready"):
                poolx.get(inner, timeout=60)
        finally:
            gate.touch()


# -- a handle used by the workers of another executor ------------------------------------


def test_a_pool_worker_calls_an_actor_of_the_ray_executor(ray, start_method):
    keeper = Keeper.remote()
    with poolx.Pool(2, context=start_method) as pool:
        assert sorted(pool.map(call_take, [(keeper, i) for i in range(4)])) == [0, 1, 2, 3]
        assert pool.apply(call_take_in_list, (([keeper], 4),)) == 4
        assert pool.apply(call_take_in_dict, (({"keeper": keeper}, 5),)) == 5
    with poolx.Executor(1, mp_context=start_method) as ex:
        assert ex.submit(call_take, (keeper, 6)).result() == 6
    assert sorted(ray.get(keeper.log.remote())) == [0, 1, 2, 3, 4, 5, 6]


def test_a_call_from_another_executor_queues_behind_the_running_call(ray, start_method, gate):
    """The actor runs a long call; a Pool task calls it and returns without waiting; a call the
    driver makes after the task's result queues behind the task's call (as for the actor's own
    executor's tasks)."""
    keeper = Keeper.remote()
    held = keeper.hold.remote(str(gate))
    with poolx.Pool(1, context=start_method) as pool:
        assert pool.apply(call_take_no_wait, ((keeper, "from the pool"),)) == "from the pool"
        log = keeper.log.remote()
        gate.touch()
        assert ray.get(held, timeout=60) == "held"
        assert ray.get(log, timeout=60) == ["held", "from the pool"]


def test_a_handle_whose_executor_was_shut_down_says_so(start_method):
    poolx.init(num_cpus=1, mp_context=start_method)
    keeper = Keeper.remote()
    assert poolx.get(keeper.take.remote(1)) == 1
    poolx.shutdown()  # kills the API's actors, as Ray's does
    with poolx.Pool(1, context=start_method) as pool:
        with pytest.raises(poolx.ActorDiedError, match=r"was killed|was shut down"):
            pool.apply(call_take, ((keeper, 2),))


def test_a_handle_made_by_an_executor_reaches_its_actor_from_a_second_executor(start_method):
    with poolx.Executor(1, mp_context=start_method) as owner, \
            poolx.Executor(1, mp_context=start_method) as other:
        keeper = owner.actor(PlainKeeper)
        assert other.submit(call_take, (keeper, os.getpid())).result() == os.getpid()

