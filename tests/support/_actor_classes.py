"""Actor classes for the tests: importable, so every start method can pickle them."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time


class Counter:
    def __init__(self, start=0):
        self.n = start
        self.pid = os.getpid()

    def increment(self, k=1):
        self.n += k
        return self.n

    def get(self):
        return self.n

    def where(self):
        return os.getpid()

    def fail(self):
        raise KeyError("no such thing")

    def sleep(self, seconds):
        time.sleep(seconds)
        return self.n

    def crash(self, how="exit"):
        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)


class Clashing:
    """A constructor whose keyword arguments look like actor options."""

    def __init__(self, name, max_restarts=0, num_cpus=None):
        self.values = (name, max_restarts, num_cpus)

    def get(self):
        return self.values


class Rendezvous:
    """Calls that only finish when ``parties`` of them run at the same time."""

    def __init__(self, parties):
        self.barrier = threading.Barrier(parties, timeout=20)

    def meet(self, i):
        self.barrier.wait()
        return i


class Waiter:
    async def wait_for_signal(self):
        self.event = getattr(self, "event", None) or asyncio.Event()
        await self.event.wait()
        return "woken"

    async def signal(self):
        self.event = getattr(self, "event", None) or asyncio.Event()
        self.event.set()
        return "signalled"

    async def nap(self, seconds):
        self.napping = getattr(self, "napping", 0) + 1
        self.most = max(getattr(self, "most", 0), self.napping)
        await asyncio.sleep(seconds)
        self.napping -= 1
        return seconds

    async def peak(self):
        return getattr(self, "most", 0)


class Broken:
    def __init__(self):
        raise ValueError("cannot build this one")

    def ping(self):
        return "pong"


class Tracker:
    def __init__(self):
        self.count = 0

    def increment(self):
        self.count += 1

    def counts(self):
        return self.count


class Relay:
    """An actor that calls another actor through a handle."""

    def __init__(self, target):
        self.target = target

    def forward(self, k):
        return self.target.increment.remote(k).result(timeout=30)


class Doubler:
    def __init__(self, factor=2):
        self.factor = factor

    def __call__(self, x):
        time.sleep(0.05 if isinstance(x, int) and x < 0 else 0)
        return x * self.factor if not isinstance(x, list) else [v * self.factor for v in x]


class Slow:
    def __call__(self, x):
        time.sleep(0.1)
        return x


def track(item, tracker):
    """The lecture's task: do some work, then tell the tracker."""
    tracker.increment.remote()
    return item * 10


def call_twice(handle):
    """From a task: call ``handle`` twice (the first call's error must not stop the second's answer)."""
    outcomes = []
    for _ in range(2):
        try:
            outcomes.append(handle.increment.remote().result(timeout=30))
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


def call_named(name, k):
    import poolx

    return poolx.get_actor(name).increment.remote(k).result(timeout=30)


class Short:
    """A batch class that loses items: map_actors must notice."""

    def __call__(self, batch):
        return batch[:1]
