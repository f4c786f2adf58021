"""Tasks and actors for test_ray_engine_dropin: refs made inside tasks and actors, handles used by
workers of other executors (importable by workers)."""

from __future__ import annotations

import poolx


@poolx.remote
def times_ten(x):
    return x * 10


@poolx.remote
def wait_for_file(path, x):
    """Returns once `path` exists: a ref to it stays unfinished until the test says so."""
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.01)
    return x * 10


@poolx.remote
def raise_key_error():
    raise KeyError("made inside")


@poolx.remote
def returns_ref(x):
    """Returns the ref of a task it started (done by then or not)."""
    return times_ten.remote(x)


@poolx.remote
def returns_waiting_ref(path, x):
    """Returns the ref of a task that cannot finish before the test creates `path`."""
    return wait_for_file.remote(path, x)


@poolx.remote
def returns_put(x):
    return poolx.put(x + 1)


@poolx.remote
def returns_failed_ref_in_list():
    return [raise_key_error.remote()]


@poolx.remote
def passes_ref_to_actor(actor, x):
    return poolx.get(actor.take.remote(times_ten.remote(x)))


@poolx.remote
def passes_put_to_actor(actor, x):
    return poolx.get(actor.take.remote(poolx.put(x)))


@poolx.remote
def calls_in_order(actor, path):
    """A call held for a ref that is not ready, then one with a plain value: they arrive in order."""
    first = actor.take.remote(wait_for_file.remote(path, 1))
    second = actor.take.remote(2)
    return poolx.get([first, second])


@poolx.remote
class Keeper:
    def __init__(self):
        self.seen = []

    def take(self, value):
        self.seen.append(value)
        return value

    def log(self):
        return self.seen

    def total(self, refs):
        return sum(poolx.get(refs))

    def make_ref(self, x):
        return times_ten.remote(x)

    def pass_on(self, other, x):
        return poolx.get(other.take.remote(times_ten.remote(x)))

    def hold(self, path):
        """Runs until `path` exists: calls made meanwhile queue behind it."""
        import os
        import time

        while not os.path.exists(path):
            time.sleep(0.01)
        self.seen.append("held")
        return "held"


def call_take(args):
    """A Pool or Executor task: call the actor through the handle it was given."""
    handle, value = args
    return poolx.get(handle.take.remote(value))


def call_take_in_list(args):
    handles, value = args
    return poolx.get(handles[0].take.remote(value))


def call_take_in_dict(args):
    handles, value = args
    return poolx.get(handles["keeper"].take.remote(value))


def call_take_no_wait(args):
    """Calls and returns at once: the driver's next call must still queue behind this one."""
    handle, value = args
    handle.take.remote(value)
    return value


class PlainKeeper:
    """An actor class for Executor.actor()."""

    def take(self, value):
        return value


def pool_returns_waiting_ref(path):
    """A Pool task returning the ref of a task it started, which waits for `path`."""
    return wait_for_file.remote(path, 1)


@poolx.remote
def total(refs):
    return sum(poolx.get(refs))


@poolx.remote
def sums_refs_in_a_list(keeper, n):
    """Refs made here, inside a list, to a task and to an actor: each gets them as refs."""
    by_task = poolx.get(total.remote([times_ten.remote(i) for i in range(n)]))
    by_actor = poolx.get(keeper.total.remote([times_ten.remote(i) for i in range(n)]))
    return by_task, by_actor
