"""poolx.collective: allreduce, reduce, broadcast, allgather, reduce_scatter, barrier among actors."""

from __future__ import annotations

import time

import numpy as np
import pytest
from _collective_ranks import Rank, Trainer
from conftest import BACKENDS

import poolx
import poolx.collective as col
from poolx.backends import get_backend

pytestmark = pytest.mark.timeout(90)

RUNS = [b for b in BACKENDS if get_backend(b).supports_collectives]
REFUSES = [b for b in BACKENDS if not get_backend(b).supports_collectives]


@pytest.fixture(params=RUNS)
def group(request):
    """Three ranks in a group named "default", on a backend that runs collectives."""
    with poolx.Executor(3, backend=request.param) as ex:
        ranks = [ex.actor(Rank) for _ in range(3)]
        col.create_collective_group(ranks, timeout=20)
        try:
            yield ranks
        finally:
            if col.is_group_initialized():
                col.destroy_collective_group()


def each(ranks, method, *args):
    return [f.result(timeout=60) for f in [getattr(r, method).remote(*args) for r in ranks]]


def test_ranks_know_their_place(group):
    assert each(group, "info") == [(0, 3, True), (1, 3, True), (2, 3, True)]
    assert col.is_group_initialized() and col.get_rank() == -1  # the driver is not a rank


@pytest.mark.parametrize("op, expected", [
    ("sum", lambda base: 3 * base + 3),
    ("mean", lambda base: base + 1),
    ("max", lambda base: base + 2),
    ("min", lambda base: base),
    ("product", lambda base: base * (base + 1) * (base + 2)),
])
def test_allreduce_every_op(group, op, expected):
    base = np.arange(1001, dtype=np.float64)
    for result in each(group, "allreduce", 1001, op):
        np.testing.assert_array_equal(result, expected(base))


def test_allreduce_grows_its_shared_memory_and_keeps_integer_dtypes(group):
    small = each(group, "allreduce", 10, "sum", "int32")
    assert all(r.dtype == np.int32 and r.tolist() == [3 * i + 3 for i in range(10)] for r in small)
    n = 700_000  # 5.6 MB of float64: past the first segment (the segment grows)
    for result in each(group, "allreduce", n, "max"):
        assert result[0] == 2 and result[-1] == n + 1 and result.shape == (n,)
    assert [r[:3].tolist() for r in each(group, "allreduce", 3)] == [[3.0, 6.0, 9.0]] * 3  # small again


def test_reduce_writes_only_the_destination(group):
    results = each(group, "reduce", 5, 1)
    assert results[1].tolist() == [6.0] * 5
    assert results[0].tolist() == [1.0] * 5 and results[2].tolist() == [3.0] * 5


def test_broadcast_from_any_rank(group):
    for src in (0, 2):
        assert [r.tolist() for r in each(group, "broadcast", 4, src)] == [[src] * 4] * 3


def test_allgather_in_rank_order(group):
    for result in each(group, "allgather", (2, 3)):
        assert [a.tolist() for a in result] == [np.full((2, 3), i).tolist() for i in range(3)]


def test_reduce_scatter_gives_each_rank_its_part(group):
    # rank r contributes 10*r + j as part j: part j sums to 30 + 3*j
    assert [r.tolist() for r in each(group, "reduce_scatter", 4)] == [[30.0 + 3 * j] * 4 for j in range(3)]
    assert [r.tolist() for r in each(group, "reduce_scatter", 2, "max")] == [[20.0 + j] * 2 for j in range(3)]


def test_barrier_waits_for_the_slowest(group):
    each(group, "barrier_then_time", 0.0)
    start = time.monotonic()
    slow = [r.barrier_then_time.remote(d) for r, d in zip(group, (0.0, 0.0, 0.5))]
    times = [f.result(timeout=60) for f in slow]
    assert min(times) - start >= 0.5  # nobody left the barrier before the late rank arrived


def test_ranks_making_different_calls_all_fail_and_the_group_goes_on(group):
    calls = [group[0].allreduce.remote(4), group[1].allreduce.remote(5), group[2].allreduce.remote(5)]
    for call in calls:
        with pytest.raises(ValueError, match=r"did not make the same call.*rank 0: allreduce\(float64\[4\]"):
            call.result(timeout=60)
    calls = [group[0].broadcast.remote(3, 0), group[1].allreduce.remote(3), group[2].allreduce.remote(3)]
    for call in calls:
        with pytest.raises(ValueError, match="rank 0: broadcast"):
            call.result(timeout=60)
    assert [r.tolist() for r in each(group, "allreduce", 2)] == [[3.0, 6.0]] * 3  # still usable


def test_a_rank_that_rejects_its_arguments_tells_the_others(group):
    def read_only():
        a = np.zeros(3)
        a.flags.writeable = False
        col.allreduce(a)

    calls = [group[0].call.remote(read_only), group[1].allreduce.remote(3), group[2].allreduce.remote(3)]
    with pytest.raises(ValueError, match=r"is read-only.*array\.copy"):
        calls[0].result(timeout=60)
    for call in calls[1:]:
        with pytest.raises(col.CollectiveError,
                           match="rank 0 failed in allreduce: ValueError: allreduce: tensor is read-only"):
            call.result(timeout=60)
    assert [r.tolist() for r in each(group, "allreduce", 2)] == [[3.0, 6.0]] * 3


@pytest.mark.parametrize("fn, error, match", [
    (lambda: col.allreduce([1.0, 2.0]), TypeError, "must be a numpy array, not list"),
    (lambda: col.allreduce(np.zeros((4, 4))[:, 0]), ValueError, "C-contiguous"),
    (lambda: col.allreduce(np.zeros(3, dtype=np.int64), op="mean"), TypeError, "op=mean needs a floating"),
    (lambda: col.allreduce(np.zeros(3), op="median"), ValueError, "op='median' is not a reduction"),
    (lambda: col.broadcast(np.zeros(3), src_rank=3), ValueError,
     r"src_rank=3 is not a rank of this group \(0 to 2\)"),
    (lambda: col.allgather([np.zeros(3)], np.zeros(3)), ValueError, "a list of 3 arrays, one per rank"),
    (lambda: col.allreduce(np.zeros(3), group_name="other"), col.CollectiveError,
     "no collective group 'other' here"),
])
def test_bad_arguments_name_the_culprit(group, fn, error, match):
    # every rank makes the same bad call: each fails with the same clear error
    for call in [r.call.remote(fn) for r in group]:
        with pytest.raises(error, match=match):
            call.result(timeout=60)


def test_a_rank_that_never_comes_times_out_and_breaks_the_group():
    with poolx.Executor(3, backend="threads") as ex:
        ranks = [ex.actor(Rank) for _ in range(3)]
        col.create_collective_group(ranks, timeout=0.5)
        try:
            calls = [ranks[0].allreduce.remote(3), ranks[1].allreduce.remote(3)]
            for call in calls:
                with pytest.raises(col.CollectiveTimeoutError,
                                   match=r"waited 0.5 s in allreduce for rank 2") as info:
                    call.result(timeout=30)
                assert isinstance(info.value, TimeoutError)
            with pytest.raises(col.CollectiveError, match="is broken"):
                ranks[0].allreduce.remote(3).result(timeout=30)
        finally:
            col.destroy_collective_group()


@pytest.mark.skipif("processes" not in RUNS, reason="needs the processes backend's collectives")
def test_a_rank_that_dies_is_noticed_long_before_the_timeout():
    with poolx.Executor(3) as ex:
        ranks = [ex.actor(Rank) for _ in range(3)]
        col.create_collective_group(ranks, timeout=60)
        try:
            pid = ranks[2].call.remote(__import__("os").getpid).result(timeout=30)
            calls = [ranks[0].allreduce.remote(3), ranks[1].allreduce.remote(3)]
            start = time.monotonic()
            ex.kill(ranks[2])
            for call in calls:
                with pytest.raises(col.CollectiveError, match=rf"rank 2 \(pid {pid}\) died"):
                    call.result(timeout=30)
            assert time.monotonic() - start < 20
        finally:
            col.destroy_collective_group()


def test_destroy_and_form_again_with_other_ranks():
    with poolx.Executor(2, backend="threads") as ex:
        a, b = ex.actor(Rank), ex.actor(Rank)
        col.create_collective_group([a, b])
        with pytest.raises(ValueError, match="a collective group named 'default' exists"):
            col.create_collective_group([a, b])
        col.destroy_collective_group()
        assert not col.is_group_initialized()
        assert [a.info.remote().result(10), b.info.remote().result(10)] == [(-1, -1, False)] * 2
        col.create_collective_group([a, b], ranks=[1, 0], group_name="swapped")
        assert a.call.remote(col.get_rank, "swapped").result(10) == 1
        assert b.call.remote(col.get_rank, "swapped").result(10) == 0
        # in an actor, destroy_collective_group leaves the group
        assert a.call.remote(col.destroy_collective_group, "swapped").result(10) is None
        col.destroy_collective_group("swapped")


def test_two_groups_at_once_on_the_same_actors():
    with poolx.Executor(2, backend="threads") as ex:
        r = [ex.actor(Rank, "g1"), ex.actor(Rank, "g1")]
        col.create_collective_group(r, group_name="g1")
        col.create_collective_group(r, group_name="g2", ranks=[1, 0])
        try:
            assert each(r, "info") == [(0, 2, True), (1, 2, True)]
            assert [x.call.remote(col.get_rank, "g2").result(10) for x in r] == [1, 0]
            assert [x.tolist() for x in each(r, "allreduce", 2)] == [[1.0, 3.0]] * 2
        finally:
            col.destroy_collective_group("g1")
            col.destroy_collective_group("g2")


def test_the_ray_style_api_forms_groups_too():
    poolx.init(2, backend="threads")
    try:
        RemoteRank = poolx.remote(Rank)
        ranks = [RemoteRank.remote() for _ in range(2)]
        col.create_collective_group(ranks, 2, [0, 1], backend="gloo", group_name="default")
        out = poolx.get([r.allreduce.remote(3) for r in ranks])
        assert [o.tolist() for o in out] == [[1.0, 3.0, 5.0]] * 2
        col.destroy_collective_group()
    finally:
        poolx.shutdown()


@pytest.mark.parametrize("backend", REFUSES)
def test_backends_without_collectives_refuse_clearly(backend):
    with poolx.Executor(2, backend=backend) as ex:
        ranks = [ex.actor(Rank) for _ in range(2)]
        with pytest.raises(col.CollectiveError, match=f"the {backend} backend does not run collectives"):
            col.create_collective_group(ranks)
        assert not col.is_group_initialized()


def test_forming_a_group_checks_its_arguments():
    with poolx.Executor(2, backend="threads") as ex, poolx.Executor(1, backend="threads") as other:
        a, b, c = ex.actor(Rank), ex.actor(Rank), other.actor(Rank)
        cases = [
            (([],), ValueError, "give the actors"),
            (([a, "b"],), TypeError, "'b' is not an actor handle"),
            (([a, b], 3), ValueError, "world_size=3 but 2 actors"),
            (([a, b], 2, [0, 0]), ValueError, r"ranks=\[0, 0\] must hold each of 0..1 once"),
            (([a, a],), ValueError, "an actor appears twice"),
            (([a, b], 2, None, "nccl"), ValueError, "backend='nccl'"),
            (([a, c],), ValueError, "different executors"),
        ]
        for args, error, match in cases:
            with pytest.raises(error, match=match):
                col.create_collective_group(*args)
        with pytest.raises(ValueError, match="timeout=0"):
            col.create_collective_group([a, b], timeout=0)
    with pytest.raises(col.CollectiveError, match="collectives run inside actors"):
        col.allreduce(np.zeros(2))
    with pytest.raises(col.CollectiveError, match="collectives run inside actors"):
        col.init_collective_group(2, 0)
    with pytest.raises(ValueError, match="no group of that name"):
        col.destroy_collective_group("never")


# -- Ray's first way: each actor joins by name ---------------------------------------------


@pytest.mark.parametrize("backend", RUNS)
def test_actors_join_a_group_by_name_as_in_ray(backend):
    poolx.init(3, backend=backend)
    try:
        RemoteTrainer = poolx.remote(Trainer)
        workers = [RemoteTrainer.remote() for _ in range(3)]
        # ranks given out of order, and joins arriving in any order: each waits for all
        assert poolx.get([w.setup.remote(3, r) for w, r in zip(workers, [2, 0, 1])]) == [2, 0, 1]
        assert [b.tolist() for b in poolx.get([w.compute.remote() for w in workers])] == [[3.0] * 10] * 3
        # two groups at once: a second one among two of them
        assert poolx.get([w.setup.remote(2, r, "pair") for w, r in zip(workers[:2], [0, 1])]) == [0, 1]
        assert [b[0] for b in poolx.get([w.compute.remote("pair") for w in workers[:2]])] == [6.0, 6.0]
        poolx.get([w.leave.remote(g) for w in workers for g in ("default", "pair")])
        assert poolx.get([w.setup.remote(1, 0, "solo") for w in workers[:1]]) == [0]  # a group of one
        assert poolx.get(workers[0].compute.remote("solo"))[0] == 6.0  # (after the pair's allreduce)
    finally:
        poolx.shutdown()


def _outcomes(calls):
    kinds = []
    for call in calls:
        try:
            call.result(timeout=60)
            kinds.append("ok")
        except Exception as exc:
            kinds.append(f"{type(exc).__name__}: {exc}")
    return sorted(kinds)


@pytest.mark.parametrize("backend", RUNS)
def test_joining_by_name_checks_the_ranks_agree(backend):
    poolx.init(3, backend=backend)
    try:
        a, b, c = (poolx.remote(Trainer).remote() for _ in range(3))
        # Which of two disagreeing ranks the rendezvous hears first is a race: that one waits for
        # a group that will never form and times out; the other is told why at once.
        late, refused = _outcomes([a.setup.remote(3, 0, "g", 1000), b.setup.remote(2, 1, "g", 1000)])
        assert late.startswith("CollectiveTimeoutError") or "left" in late, late
        assert refused.startswith("ValueError") and "another rank of this group gave world_size=" in refused
        late, refused = _outcomes([a.setup.remote(3, 0, "h", 1000), b.setup.remote(3, 0, "h", 1000)])
        assert refused.startswith("ValueError") and "rank 0 has already joined this group" in refused
        with pytest.raises(ValueError, match=r"rank=3 is not a rank of this group \(0 to 2\)"):
            poolx.get(b.setup.remote(3, 3, "g"))
        # the groups that never formed are forgotten: the same names form now
        for name in ("g", "h"):
            assert poolx.get([w.setup.remote(3, r, name) for r, w in enumerate((a, b, c))]) == [0, 1, 2]
        with pytest.raises(col.CollectiveError, match="already in a collective group named 'g'"):
            poolx.get(a.setup.remote(3, 0, "g"))
    finally:
        poolx.shutdown()


@pytest.mark.parametrize("backend", RUNS)
def test_a_rank_that_never_joins_times_out_the_others(backend):
    poolx.init(2, backend=backend)
    try:
        a = poolx.remote(Trainer).remote()
        with pytest.raises(col.CollectiveTimeoutError,
                           match=r"waited 0\.5 s in init_collective_group for rank 1"):
            poolx.get(a.setup.remote(2, 0, "lonely", 500))
    finally:
        poolx.shutdown()


@pytest.mark.parametrize("backend", REFUSES)
def test_joining_by_name_is_refused_where_collectives_do_not_run(backend):
    with poolx.Executor(1, backend=backend) as ex:
        t = ex.actor(Trainer)
        with pytest.raises(col.CollectiveError, match="does not run collectives"):
            t.setup.remote(1, 0).result(timeout=60)
