"""Parallel iterators (poolx.iter, Ray's ray.util.iter): the shard split, the lazy transforms,
shards read in tasks and actors, gather_sync's round-robin order, gather_async, infinite
iterators with take(), the release of the shard actors on every way out, and the errors."""

from __future__ import annotations

import gc
import pickle
import time

import cloudpickle
import pytest
from conftest import BACKENDS

import poolx
from poolx import iter as pxiter

pytestmark = pytest.mark.timeout(60)

# Backends on which tasks and actors run apart from the caller (serial runs them inline).
CONCURRENT = pytest.mark.parametrize("backend", ["threads", "processes"])


@pytest.fixture
def ray(backend):
    """The Ray-style API's executor, 2 workers, on each backend; shut down after the test."""
    executor = poolx.init(num_cpus=2, backend=backend)
    yield executor
    poolx.shutdown()


def _alive(executor) -> int:
    return executor.statistics().actors_alive


def _fail_at(bad):
    def fn(x):
        if x == bad:
            raise ValueError(f"bad item {x}")
        return x
    return fn


@poolx.remote
def _total(shard):
    return sum(shard)


class _Consumer:
    """An actor that reads shards handed to its methods."""

    def __init__(self):
        self.seen = []

    def read(self, shard):
        self.seen.extend(shard)
        return len(self.seen)

    def items(self):
        return sorted(self.seen)


# -- constructors and the shard split (no executor) --------------------------------------------


@pytest.mark.timeout(10)
def test_from_range_splits_into_contiguous_slices_as_ray_does():
    it = pxiter.from_range(10, num_shards=4)
    assert it.num_shards() == 4
    assert [list(s) for s in it.shards()] == [[0, 1], [2, 3], [4, 5], [6, 7, 8, 9]]
    assert [list(s) for s in pxiter.from_range(3, num_shards=4).shards()] == [[], [], [], [0, 1, 2]]
    assert [list(s) for s in pxiter.from_range(0).shards()] == [[], []]
    assert repr(it) == "ParallelIterator[from_range[10, shards=4]]"


@pytest.mark.timeout(10)
def test_from_items_deals_items_round_robin():
    it = pxiter.from_items("abcdefg", num_shards=3)
    assert [list(s) for s in it.shards()] == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    assert list(pxiter.from_items(iter([1, 2, 3]), num_shards=1).get_shard(0)) == [1, 2, 3]


@pytest.mark.timeout(10)
def test_from_iterators_takes_iterables_and_functions_and_refuses_one_shot_iterators():
    def gen():
        yield from "xy"

    it = pxiter.from_iterators([range(3), [7, 8], gen, lambda: iter("ab")])
    assert [list(s) for s in it.shards()] == [[0, 1, 2], [7, 8], ["x", "y"], ["a", "b"]]
    with pytest.raises(TypeError, match=r"item 1 is a generator.*pass the function that makes it"):
        pxiter.from_iterators([range(2), gen()])
    with pytest.raises(TypeError, match=r"item 0 is a int 5, neither an iterable nor a function"):
        pxiter.from_iterators([5])
    with pytest.raises(ValueError, match="at least one iterable"):
        pxiter.from_iterators([])


@pytest.mark.timeout(10)
def test_repeat_cycles_each_shard_and_an_empty_shard_stays_empty():
    it = pxiter.from_range(5, num_shards=2, repeat=True)
    assert it.get_shard(0).take(5) == [0, 1, 0, 1, 0]
    assert it.get_shard(1).take(7) == [2, 3, 4, 2, 3, 4, 2]
    calls = []

    def make():
        calls.append(1)
        return [len(calls)]

    assert pxiter.from_iterators([make], repeat=True).get_shard(0).take(3) == [1, 2, 3]  # called per pass
    assert list(pxiter.from_range(1, num_shards=2, repeat=True).get_shard(0)) == []


# -- transforms ------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_each_transform_applies_per_shard():
    it = pxiter.from_range(12, num_shards=2)
    assert [list(s) for s in it.for_each(lambda x: x * 10).shards()] == [
        [0, 10, 20, 30, 40, 50], [60, 70, 80, 90, 100, 110]]
    assert [list(s) for s in it.filter(lambda x: x % 3 == 0).shards()] == [[0, 3], [6, 9]]
    assert [list(s) for s in it.batch(4).shards()] == [[[0, 1, 2, 3], [4, 5]], [[6, 7, 8, 9], [10, 11]]]
    assert [list(s) for s in it.batch(4).flatten().shards()] == [list(range(6)), list(range(6, 12))]
    assert list(it.batch(5).filter(lambda b: len(b) < 5).flatten().get_shard(1)) == [11]
    shuffled = [list(s) for s in it.local_shuffle(3, seed=1).shards()]
    assert [sorted(s) for s in shuffled] == [list(range(6)), list(range(6, 12))]
    assert shuffled == [list(s) for s in it.local_shuffle(3, seed=1).shards()]  # seeded: the same
    assert [list(s) for s in it.local_shuffle(100, seed=0).shards()] != [list(range(6)), list(range(6, 12))]
    # Ray's draws: from_range(12, 1).local_shuffle(3, seed=1) gives this order in Ray 2.60 too.
    assert list(pxiter.from_range(12, 1).local_shuffle(3, seed=1).get_shard(0)) == [
        0, 3, 1, 4, 2, 6, 7, 8, 10, 9, 5, 11]
    both = it.union(pxiter.from_items(["a"], num_shards=1))
    assert both.num_shards() == 3 and list(both.get_shard(2)) == ["a"]


@pytest.mark.timeout(10)
def test_local_iterator_transforms_and_take_consume():
    shard = pxiter.from_range(10, num_shards=1).get_shard(0)
    assert shard.take(3) == [0, 1, 2]
    rest = shard.for_each(lambda x: -x)  # goes on from where the shard is
    assert rest.filter(lambda x: x % 2).batch(2).take(5) == [[-3, -5], [-7, -9]]
    assert shard.take(1) == []
    fresh = pxiter.from_range(4, num_shards=1).get_shard(0)
    assert fresh.batch(3).flatten().take(10) == [0, 1, 2, 3]
    assert fresh.take(0) == []


@pytest.mark.timeout(10)
def test_flatten_of_items_that_are_not_iterable_says_so():
    with pytest.raises(TypeError, match=r"flatten\(\) needs items that are iterables.*got int 0"):
        list(pxiter.from_range(3, num_shards=1).flatten().get_shard(0))


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda: pxiter.from_range(10, num_shards=0), ValueError,
     r"num_shards .* must be an integer >= 1, got 0"),
    (lambda: pxiter.from_range(-1), ValueError, r"from_range\(-1\): n must be an integer >= 0"),
    (lambda: pxiter.from_range(2.5), ValueError, r"n must be an integer >= 0, got 2.5"),
    (lambda: pxiter.from_items([1], num_shards=True), ValueError, r"num_shards .* got True"),
    (lambda: pxiter.from_items(7), TypeError, r"from_items\(\) takes an iterable of items.*got int 7"),
    (lambda: pxiter.from_range(4).batch(0), ValueError, r"batch\(0\): n \(items per list\) must be an "),
    (lambda: pxiter.from_range(4).for_each(5), TypeError, r"for_each\(fn\) needs a function of one item, "
                                                          r"got int 5; e.g. for_each\(lambda x: ...\)"),
    (lambda: pxiter.from_range(4).filter(None), TypeError, r"filter\(fn\) needs a function"),
    (lambda: pxiter.from_range(4).local_shuffle(0), ValueError, r"shuffle_buffer_size must be"),
    (lambda: pxiter.from_range(4).take(-1), ValueError, r"take\(-1\): n must be an integer >= 0"),
    (lambda: pxiter.from_range(4).gather_sync(batch_size=0), ValueError, r"batch_size must be an integer"),
    (lambda: pxiter.from_range(4).gather_async(batch_ms=-1), ValueError, r"batch_ms must be a number"),
    (lambda: pxiter.from_range(4).get_shard(2), IndexError,
     r"get_shard\(2\): this iterator has shards 0 to 1"),
    (lambda: pxiter.from_range(4).union([1]), TypeError, r"union\(\) takes a ParallelIterator, got list"),
    (lambda: pxiter.from_range(4).get_shard(0).batch(-3), ValueError, r"batch\(-3\)"),
    (lambda: iter(pxiter.from_range(4)), TypeError, r"read with \.gather_sync\(\) or \.gather_async\(\)"),
])
def test_a_bad_argument_raises_at_once_naming_it(make, error, message):
    with pytest.raises(error, match=message):
        make()
    assert not poolx.is_initialized()  # checked before anything started


@pytest.mark.timeout(10)
def test_only_unread_shards_can_be_sent():
    it = pxiter.from_range(6).for_each(lambda x: x + 1)
    shard = it.get_shard(0)
    copy = pickle.loads(cloudpickle.dumps(shard))
    assert list(copy) == [1, 2, 3] and list(shard) == [1, 2, 3]
    with pytest.raises(TypeError, match="has already been read from"):
        cloudpickle.dumps(shard)
    with pytest.raises(TypeError, match="has already been read from"):
        cloudpickle.dumps(shard.for_each(str))
    with pytest.raises(TypeError, match="reads from actors of this driver"):
        cloudpickle.dumps(it.gather_sync())
    with pytest.raises(TypeError, match="reads from actors of this driver"):
        cloudpickle.dumps(it.gather_async().batch(2))
    assert not poolx.is_initialized()


# -- laziness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["threads"])
def test_transforms_and_gathers_run_nothing_until_read(ray):
    calls = []  # the threads backend's actors share this list
    it = pxiter.from_range(8, num_shards=2).for_each(lambda x: calls.append(x) or x).filter(lambda x: True)
    gathered = it.batch(2).gather_sync()
    it.gather_async()
    it.shards()
    time.sleep(0.05)
    assert calls == [] and ray.statistics().actors_started == 0
    assert list(gathered) == [[0, 1], [4, 5], [2, 3], [6, 7]]
    assert sorted(calls) == list(range(8)) and ray.statistics().actors_started == 2
    assert _alive(ray) == 0  # released at the end


# -- gather_sync and gather_async ------------------------------------------------------------------


@CONCURRENT
def test_gather_sync_is_round_robin_whatever_the_timing(ray):
    def slow_first(x):
        if x[0] == 0:
            time.sleep(0.01)
        return x

    it = pxiter.from_iterators([[(0, i) for i in range(3)], [(1, i) for i in range(5)], [(2, 0)]])
    expected = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (0, 2), (1, 2), (1, 3), (1, 4)]
    assert list(it.for_each(slow_first).gather_sync()) == expected
    assert list(it.gather_sync(batch_size=1, batch_ms=0)) == expected  # one item per call
    assert list(pxiter.from_range(2000, num_shards=3).gather_sync()) == [
        x for triple in zip(range(0, 666), range(666, 1332), range(1332, 1998)) for x in triple
    ] + [1998, 1999]
    assert _alive(ray) == 0


@CONCURRENT
def test_gather_async_yields_every_item_once_in_shard_order(ray):
    def jitter(x):
        if x % 7 == 0:
            time.sleep(0.002)
        return x

    items = list(pxiter.from_range(400, num_shards=4).for_each(jitter).gather_async(batch_size=8))
    assert sorted(items) == list(range(400))
    for k in range(4):
        mine = [x for x in items if x // 100 == k]
        assert mine == sorted(mine)  # within one shard, order kept
    assert _alive(ray) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_works_on_every_backend(ray):
    it = pxiter.from_items(list(range(6)), num_shards=2).for_each(lambda x: x * x)
    assert list(it.gather_sync()) == [0, 1, 4, 9, 16, 25]
    assert sorted(it.gather_async()) == [0, 1, 4, 9, 16, 25]
    assert it.take(3) == [0, 1, 4]
    assert _alive(ray) == 0
    assert poolx.get([poolx.remote(lambda shard: sum(shard)).remote(s) for s in it.shards()]) == [20, 35]


# -- shards read in tasks and actors ----------------------------------------------------------------


@CONCURRENT
def test_shards_are_read_in_tasks_and_in_actors(ray):
    it = pxiter.from_range(100, num_shards=4).filter(lambda x: x % 2 == 0)
    sums = poolx.get([_total.remote(shard) for shard in it.shards()])
    assert sums == [sum(x for x in range(k * 25, k * 25 + 25) if x % 2 == 0) for k in range(4)]
    assert ray.submit(sum, it.get_shard(1)).result() == sums[1]
    consumer = poolx.remote(_Consumer).remote()
    counts = poolx.get([consumer.read.remote(shard) for shard in it.batch(3).flatten().shards()])
    assert counts == [13, 25, 38, 50]
    assert poolx.get(consumer.items.remote()) == list(range(0, 100, 2))
    assert ray.statistics().actors_started == 1  # reading a shard in a task starts no actor


@CONCURRENT
def test_an_error_in_a_shard_read_by_a_task_is_raised_by_get(ray):
    shard = pxiter.from_range(10, num_shards=1).for_each(_fail_at(4)).get_shard(0)
    with pytest.raises(ValueError, match="bad item 4"):
        poolx.get(_total.remote(shard))


@pytest.mark.parametrize("backend", ["processes"])
def test_a_task_cannot_gather_and_is_told_what_to_do(ray):
    @poolx.remote
    def gather_inside(it):
        return it.take(2)

    with pytest.raises(poolx.PoolxError, match=r"only the driver can start.*read a shard of .*shards\(\)"):
        poolx.get(gather_inside.remote(pxiter.from_range(4)))


# -- infinite iterators and the release of the actors ---------------------------------------------


@CONCURRENT
def test_an_infinite_iterator_with_take_stops_and_releases_its_actors(ray):
    it = pxiter.from_range(6, num_shards=3, repeat=True).for_each(lambda x: x * 2)
    assert it.take(9) == [0, 4, 8, 2, 6, 10, 0, 4, 8]
    assert _alive(ray) == 0  # take() released them before returning
    assert len(it.gather_async().take(50)) == 50  # an abandoned gather: released when collected
    gc.collect()
    assert _alive(ray) == 0
    with it.gather_sync() as gathered:
        assert gathered.take(4) == [0, 4, 8, 2]
        assert _alive(ray) == 3
    assert _alive(ray) == 0 and next(gathered, "ended") == "ended"


@CONCURRENT
def test_every_way_to_stop_early_releases_the_actors(ray):
    it = pxiter.from_range(10_000, num_shards=2, repeat=True)
    gathered = it.gather_sync()
    assert next(gathered) == 0 and _alive(ray) == 2
    gathered.close()
    assert _alive(ray) == 0

    derived = it.gather_async().for_each(str)  # closing a derived iterator closes the gather
    assert isinstance(next(derived), str) and _alive(ray) == 2
    derived.close()
    assert _alive(ray) == 0

    def consume():
        for x in it.gather_sync():
            if x > 3:
                return x
        return None

    assert consume() == 5000  # the for loop's iterator is dropped at return
    assert _alive(ray) == 0

    dropped = it.batch(3).gather_sync()
    next(dropped)
    del dropped
    assert _alive(ray) == 0
    assert list(pxiter.from_range(4).gather_sync()) == [0, 2, 1, 3] and _alive(ray) == 0  # ended


@CONCURRENT
def test_a_filter_that_drops_everything_does_not_block_the_release(ray):
    # Shard 1 never passes the filter: its calls return empty batches every batch_ms.
    it = pxiter.from_range(1000, num_shards=2, repeat=True).filter(lambda x: x == 3)
    assert it.gather_async().take(3) == [3, 3, 3]
    gc.collect()
    assert _alive(ray) == 0
    gathered = it.gather_sync()
    assert next(gathered) == 3
    time.sleep(0.3)  # shard 1 keeps answering with empty batches meanwhile
    gathered.close()  # shard 1's call in flight ends within batch_ms (else this test times out)
    assert _alive(ray) == 0


@CONCURRENT
def test_closing_after_shutdown_is_quiet(ray):
    gathered = pxiter.from_range(100, repeat=True).gather_sync()
    next(gathered)
    poolx.shutdown()
    gathered.close()
    del gathered


# -- errors from the user's functions ---------------------------------------------------------------


@CONCURRENT
def test_an_error_in_for_each_surfaces_at_its_item_as_itself(ray):
    it = pxiter.from_range(20, num_shards=2).for_each(_fail_at(13))
    gathered = it.gather_sync(batch_size=4)
    seen = []
    with pytest.raises(ValueError, match="bad item 13") as info:
        for x in gathered:
            seen.append(x)
    # Round-robin: shard 1's item 13 comes after shard 0's item 3.
    assert seen == [0, 10, 1, 11, 2, 12, 3]
    if ray.backend == "processes":
        assert isinstance(info.value.__cause__, poolx.RemoteTraceback)
    assert _alive(ray) == 0 and list(gathered) == []

    seen = []
    with pytest.raises(ValueError, match="bad item 13"):
        for x in it.gather_async(batch_size=4):
            seen.append(x)
    assert [x for x in seen if x >= 10] == [10, 11, 12]  # shard 1's items before the error, in order
    assert _alive(ray) == 0
