"""Logical resources of the Ray-style API: ``init(num_gpus=..., resources=...)`` and their limits.

As in Ray on one machine, a resource is a count, nothing more: a task that
asks for ``num_gpus=1`` when ``init(num_gpus=2)`` declared two runs at most
two at a time, whether or not the machine has a GPU (poolx assigns no
device: ``CUDA_VISIBLE_DEVICES`` is left alone).  A task that asks for a
resource waits, in the driver, until it is free, then is submitted; its ref
exists at once.  A request beyond what ``init`` declared can never run: Ray
leaves such a task pending for ever, poolx refuses it at ``.remote()``.

Only tasks submitted by the driver are counted (a task submitted inside a
task runs without waiting); an actor's request is checked against the
totals but not held for its lifetime.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ._futures import Future
from ._ray_calls import mark_ref

Need = dict[str, float]


def declared(num_gpus: float | None, resources: dict[str, float] | None) -> Need:
    """The totals ``init`` declares (``GPU`` and custom names), checked."""
    totals = dict(_custom(resources, "init(resources=...)"))
    if num_gpus is not None:
        totals["GPU"] = _amount(num_gpus, "init(num_gpus=...)")
    return {k: v for k, v in totals.items() if v > 0}


def requested(options: dict[str, Any], what: str) -> Need:
    """What a task or actor's options ask for (``num_gpus``, ``resources``); {} for nothing."""
    need = dict(_custom(options.get("resources"), f"{what}: resources"))
    gpus = options.get("num_gpus")
    if gpus:
        need["GPU"] = _amount(gpus, f"{what}: num_gpus")
    return {k: v for k, v in need.items() if v > 0}


def _custom(resources: Any, where: str) -> Need:
    if resources is None:
        return {}
    if not isinstance(resources, dict):
        raise TypeError(f"{where} must be a dict of resource name -> amount, got {type(resources).__name__}")
    for name in resources:
        if name in ("CPU", "GPU"):
            raise ValueError(f"{where}: use num_cpus= and num_gpus= instead of {name!r} in resources "
                             "(as in Ray)")
        if not isinstance(name, str):
            raise TypeError(f"{where}: resource names are strings, got {name!r}")
    return {name: _amount(amount, f"{where}[{name!r}]") for name, amount in resources.items()}


def _amount(value: Any, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{where} must be a number >= 0, got {value!r}")
    return float(value)


class Resources:
    """The declared totals, what running tasks hold, and the tasks waiting for them (oldest first)."""

    def __init__(self, totals: Need) -> None:
        self.totals = totals
        self._used: Need = dict.fromkeys(totals, 0.0)
        self._lock = threading.Lock()
        self._waiting: deque[tuple[Need, Callable[[], cf.Future[Any]], Future[Any]]] = deque()

    def check(self, need: Need, what: str) -> None:
        """Refuse a request that can never be met (more than declared)."""
        for name, amount in need.items():
            total = self.totals.get(name, 0.0)
            if amount > total:
                declare = "num_gpus" if name == "GPU" else f"resources={{{name!r}: ...}}"
                raise ValueError(
                    f"{what} asks for {amount:g} {name} but poolx.init() declared {total:g}: it could never "
                    f"run (Ray would leave it pending for ever).  Declare them: poolx.init({declare}) "
                    "(resources are counts: no device is needed), or ask for less")

    def available(self) -> Need:
        with self._lock:
            return {k: self.totals[k] - self._used[k] for k in self.totals}

    def run(self, need: Need, launch: Callable[[], cf.Future[Any]]) -> Future[Any]:
        """A ref that ``launch()`` completes once ``need`` is free (at once if it is).

        The ref completes after the resources are given back, so a caller that
        saw it done sees them available.
        """
        proxy: Future[Any] = mark_ref(Future())
        with self._lock:
            if not self._fits(need):
                self._waiting.append((need, launch, proxy))
                return proxy
            self._take(need)
        self._start(need, launch, proxy, at_call=True)
        return proxy

    def _fits(self, need: Need) -> bool:
        return all(self._used[k] + v <= self.totals[k] + 1e-9 for k, v in need.items())

    def _take(self, need: Need) -> None:
        for k, v in need.items():
            self._used[k] += v

    def _release(self, need: Need) -> None:
        with self._lock:
            for k, v in need.items():
                self._used[k] -= v
            ready, still = [], deque[tuple[Need, Callable[[], cf.Future[Any]], Future[Any]]]()
            for item in self._waiting:  # oldest first; one that does not fit yet lets others by
                if self._fits(item[0]):
                    self._take(item[0])
                    ready.append(item)
                else:
                    still.append(item)
            self._waiting = still
        for item in ready:
            self._start(*item)

    def _start(self, need: Need, launch: Callable[[], cf.Future[Any]], proxy: Future[Any],
               at_call: bool = False) -> None:
        """Run ``launch()`` for ``proxy``; an error at the call is raised there (``at_call``)."""
        if not proxy.set_running_or_notify_cancel():  # cancelled while it waited
            self._release(need)
            return
        try:
            future = launch()
        except BaseException as exc:
            self._release(need)
            if at_call:
                raise
            proxy.set_exception(exc)
            return
        # cancel() reaches the task through its ref (poolx._api.cancel).
        proxy._poolx_task = future.__dict__.get("_poolx_task")  # type: ignore[attr-defined]
        proxy._poolx_inner = future  # type: ignore[attr-defined]

        def copy(f: cf.Future[Any]) -> None:
            self._release(need)
            if f.cancelled():
                proxy.set_exception(cf.CancelledError())
            elif f.exception() is not None:
                proxy.set_exception(f.exception())
            else:
                proxy.set_result(f.result())

        future.add_done_callback(copy)

    def cancel_waiting(self) -> None:
        """At shutdown: the tasks still waiting for resources are cancelled."""
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for _, _, proxy in waiting:
            proxy.cancel()
