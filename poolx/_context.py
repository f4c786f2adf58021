"""What kind of process this is: the driver, a task worker, or an actor process.

One object per process, :data:`here`, set once by the entry point of a
worker or actor process (``enter``) and read through this module only.  In
the driver it stays as it starts: ``kind == "driver"``, no client, no worker.

- ``client`` is the child's connection back to the driver (the processes
  backend's ``ChildClient``, or a cluster backend's ``ClusterClient``): actor
  handles unpickled in a child call through it, a ref inside a container is
  fetched through it, and the Ray-style API's nested tasks are submitted
  through it.
- ``worker`` is the task worker running in this process (processes backend
  only; None in actor processes and in the driver): a task that waits lends
  its slot through it, and a map chunk marks which item it is running.

Nothing here imports the rest of poolx, so any module may import it at the
top without creating an import cycle (this is what keeps the
actors/objects/serialization and worker/client modules apart).
"""

from __future__ import annotations

import os
from typing import Any, Literal, Protocol

Kind = Literal["driver", "worker", "actor"]


class Client(Protocol):
    """What a child's connection to the driver offers the front ends."""

    sent: int

    def call(self, actor_id: int, label: str, method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any: ...

    def get_actor(self, name: str) -> Any: ...

    def fetch(self, ref: Any) -> None: ...

    # (processes backend) a ref made here leaves unfinished: its key for the driver
    def share(self, future: Any) -> Any: ...


class ProcessContext:
    """This process's kind, its client (children only) and its task worker (if any)."""

    __slots__ = ("client", "kind", "worker")

    def __init__(self) -> None:
        self.kind: Kind = "driver"
        self.client: Any = None
        self.worker: Any = None

    def __repr__(self) -> str:
        return f"<ProcessContext {self.kind} pid={os.getpid()}>"


here = ProcessContext()


def enter(kind: Kind, client: Any, worker: Any = None) -> None:
    """Called once by a child's entry point: what this process is from now on."""
    here.kind, here.client, here.worker = kind, client, worker


def set_worker(worker: Any) -> None:
    """The task worker of this process, once it is built (after ``enter``)."""
    here.worker = worker


def in_child() -> bool:
    """Whether this process is a poolx worker or actor process (of any backend)."""
    return here.client is not None
