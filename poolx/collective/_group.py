"""How a collective group forms, and how an actor joins and leaves it.

Two ways, as in Ray: the driver forms a group of actors
(``create_collective_group``: it makes the control block and has each actor
join through ``runner.CALL_ON_INSTANCE``), or each actor asks for the group by
name (``init_collective_group``: the ranks meet at a ``Rendezvous``, in the
driver for the processes backend, reached through the actor's connection to
it, or in this process for the threads backend).  An actor's groups are kept
on its runner (``Runner.collective_groups``).

The shared memory and the barriers are in ``_block``; the operations in
``poolx.collective``.  The driver reads actor handles only through
``actors.handle``'s functions.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from .. import _context, _shm
from .._errors import ActorDiedError, CollectiveError
from ..actors.directory import ALIVE
from ..actors.handle import ActorHandle, call_method, owner_of
from ..actors.runner import CALL_ON_INSTANCE, current_runner
from ._block import (
    DEFAULT_TIMEOUT,
    HEADER,
    LEFT,
    MAGIC,
    PID,
    STRIDE,
    GroupSpec,
    Member,
    control_bytes,
    new_memfd,
)


class _Meeting:
    """A group's control block in the process that creates it (the driver, or for actors of the
    threads backend this process), while its ranks join."""

    def __init__(self, name: str, world_size: int, timeout: float | None) -> None:
        self.fd, self.mm = new_memfd(name, control_bytes(world_size))
        self.mm[0:16] = MAGIC.to_bytes(8, "little") + world_size.to_bytes(8, "little")
        self.spec = GroupSpec(name, world_size, os.getpid(), self.fd, timeout)
        self.ranks: set[int] = set()

    def complete(self) -> bool:
        return len(self.ranks) == self.spec.world_size

    def _pids(self) -> list[int]:
        return [int.from_bytes(self.mm[8 * (HEADER + STRIDE * r + PID):][:8], "little", signed=True)
                for r in range(self.spec.world_size)]

    def all_mapped(self) -> bool:
        """Whether every rank has mapped the control block (each writes its pid once it has)."""
        return all(self._pids())

    def abandoned(self) -> bool:
        """Whether a rank gave up waiting for the others (it writes LEFT as its pid)."""
        return LEFT in self._pids()

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


class Rendezvous:
    """Where ranks that know only a group's name meet (``init_collective_group``).

    It lives in the driver (one per processes backend, reached through the
    actors' connection to it) or, for actors of the threads backend, in this
    process.  The first rank to ask for a group creates its control block; the
    others get the same one; once every rank has asked, the next request for
    that name forms a new group.  A control block is closed here once every
    rank has mapped it, or at ``close()``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.meetings: dict[str, _Meeting] = {}
        self.formed: list[_Meeting] = []  # complete, waiting for every rank to map the block

    def join(self, name: str, world_size: int, rank: int, timeout: float | None) -> GroupSpec:
        with self.lock:
            self.sweep()
            meeting = self.meetings.get(name)  # (sweep() dropped it if it never formed)
            if meeting is not None and meeting.spec.world_size != world_size:
                raise ValueError(f"init_collective_group(world_size={world_size}, rank={rank}, "
                                 f"group_name={name!r}): another rank of this group gave world_size="
                                 f"{meeting.spec.world_size}; every rank must give the same")
            if meeting is not None and rank in meeting.ranks:
                raise ValueError(f"init_collective_group(world_size={world_size}, rank={rank}, "
                                 f"group_name={name!r}): rank {rank} has already joined this group, which "
                                 "is still waiting for its other ranks; give each actor its own rank")
            if meeting is None:
                meeting = self.meetings[name] = _Meeting(name, world_size, timeout)
            meeting.ranks.add(rank)
            if meeting.complete():
                del self.meetings[name]
                self.formed.append(meeting)
            return meeting.spec

    def sweep(self) -> None:
        """Close the control blocks that every rank of their group has mapped, and those of groups
        that will never form (a rank gave up)."""
        for meeting in [m for m in self.formed if m.all_mapped()]:
            self.formed.remove(meeting)
            meeting.close()
        for name, meeting in list(self.meetings.items()):
            if meeting.abandoned():
                del self.meetings[name]
                meeting.close()

    def close(self) -> None:
        with self.lock:
            for meeting in [*self.meetings.values(), *self.formed]:
                meeting.close()
            self.meetings.clear()
            self.formed.clear()


_local_rendezvous = Rendezvous()  # for actors that live in this process (threads backend)


def rank_arg(value: Any, size: int, what: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
        raise ValueError(f"{what}: {name}={value!r} is not a rank of this group (0 to {size - 1})")
    return value


def _membership(group_name: str) -> Member | None:
    """This actor's place in the group, or None (not in it, or not in an actor)."""
    runner = current_runner()
    return None if runner is None else runner.collective_groups.get(group_name)


def member_in(group_name: str, what: str) -> Member:
    """This actor's place in the group; ``CollectiveError`` saying why when it has none."""
    runner = current_runner()
    member = _membership(group_name)
    if member is None:
        where = ("this actor is not in a group of that name" if runner is not None
                 else "collectives run inside actors, in their methods")
        raise CollectiveError(
            f"{what}: no collective group {group_name!r} here ({where}); form it in the driver with "
            f"poolx.collective.create_collective_group(actors, group_name={group_name!r}), or in each "
            f"actor with init_collective_group(world_size, rank, group_name={group_name!r})")
    return member


# -- the group ------------------------------------------------------------------------


def get_rank(group_name: str = "default") -> int:
    """This actor's rank in the group, or -1 when it is not in it (Ray's convention)."""
    member = _membership(group_name)
    return -1 if member is None else member.rank


def get_collective_group_size(group_name: str = "default") -> int:
    """The number of ranks of the group, or -1 when this actor is not in it."""
    member = _membership(group_name)
    return -1 if member is None else member.size


def is_group_initialized(group_name: str = "default") -> bool:
    """Whether this actor is in the group (in the driver: whether the driver formed it)."""
    if current_runner() is None:
        return group_name in _formed
    return get_rank(group_name) >= 0


def init_collective_group(world_size: int, rank: int, backend: str = "shm", group_name: str = "default",
                          gloo_timeout: int = int(DEFAULT_TIMEOUT * 1000)) -> None:
    """Join the group ``group_name`` as ``rank`` of ``world_size``, from inside an actor (Ray's first way).

    Returns once every rank has joined (or raises ``CollectiveTimeoutError``
    after ``gloo_timeout`` milliseconds, Ray's name for the group's timeout).
    The ranks meet in the driver (processes backend) or in this process
    (threads backend): the group's actors must belong to one executor.
    """
    what = f"init_collective_group({world_size!r}, {rank!r}, group_name={group_name!r})"
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"{what}: world_size must be a positive int")
    rank_arg(rank, world_size, what, "rank")
    _check_backend_name(backend, what)
    if gloo_timeout is not None and not gloo_timeout > 0:
        raise ValueError(f"{what}: gloo_timeout={gloo_timeout!r} must be a positive number of milliseconds "
                         "(or None to wait for ever)")
    timeout = None if gloo_timeout is None else gloo_timeout / 1000

    client = _context.here.client
    meet = getattr(client, "rendezvous", None)
    if client is not None and meet is None:  # a worker of a cluster engine
        raise CollectiveError(f"{what}: the {getattr(client, 'engine', 'cluster')} backend does not run "
                              "collectives: use backend='processes' or 'threads'")
    runner = current_runner()
    if runner is None:
        raise CollectiveError(f"{what}: collectives run inside actors; call it from an actor's method, or "
                              "form the group here in the driver with create_collective_group(actors, ...)")
    _not_in(runner, group_name, what)
    if meet is not None:
        spec = meet(group_name, world_size, rank, timeout)
    elif getattr(runner, "collectives", False):
        spec = _local_rendezvous.join(group_name, world_size, rank, timeout)
    else:
        raise CollectiveError(f"{what}: this actor's backend does not run collectives (the serial backend "
                              "runs one call at a time): use backend='processes' or 'threads'")
    try:
        _enter(runner, spec, rank, "init_collective_group")
    finally:
        if meet is None:  # the control block is ours to close once every rank has mapped it
            with _local_rendezvous.lock:
                _local_rendezvous.sweep()


def _not_in(runner: Any, group_name: str, what: str) -> None:
    if group_name in runner.collective_groups:
        raise CollectiveError(f"{what}: this actor is already in a collective group named {group_name!r}: "
                              "destroy_collective_group() it first, or choose another group_name")


def _enter(runner: Any, spec: GroupSpec, rank: int, what: str) -> None:
    """Map the group's control block and wait there for every rank; then this actor is in the group.

    A rank that gives up marks itself as gone: the ranks waiting for it fail at
    once, and a rendezvous forgets the group, so that its name can form again.
    """
    member = Member(spec, rank)
    try:
        member.barrier(what)
    except BaseException:
        member.ranks[rank, PID] = LEFT
        member.close()
        raise
    runner.collective_groups[spec.name] = member


def _check_backend_name(backend: str, what: str) -> None:
    if str(backend).lower() not in ("shm", "gloo"):
        raise ValueError(f"{what}: backend={backend!r}: poolx moves arrays through shared memory on one "
                         "machine: use backend='shm' ('gloo' means the same; there is no GPU backend)")


_formed: dict[str, list[Any]] = {}  # in the driver: group name -> its actors, by rank


def _join(instance: Any, spec: GroupSpec, rank: int) -> int:
    runner = current_runner()
    if runner is None:  # pragma: no cover - __poolx_call__ always runs in an actor
        raise CollectiveError("joining a collective group happens inside an actor")
    _not_in(runner, spec.name, "create_collective_group()")
    _enter(runner, spec, rank, "create_collective_group")
    return os.getpid()


def _leave(instance: Any, group_name: str) -> bool:
    runner = current_runner()
    member = runner.collective_groups.pop(group_name, None) if runner is not None else None
    if member is not None:
        member.close()
    return member is not None


def create_collective_group(actors: Sequence[Any], world_size: int | None = None,
                            ranks: Sequence[int] | None = None, backend: str = "shm",
                            group_name: str = "default", timeout: float | None = DEFAULT_TIMEOUT) -> None:
    """Form a collective group of ``actors`` (in the driver); returns once every actor has joined.

    ``ranks[i]`` is ``actors[i]``'s rank (default: their order).  ``backend``:
    ``"shm"`` (shared memory on this machine, the only one); Ray's ``"gloo"``
    is accepted and means the same.  ``timeout``: the seconds a rank waits for
    the others at each step of an operation (None: for ever; a dead rank is
    noticed either way).  The actors must belong to one executor whose backend
    runs collectives (``processes`` or ``threads``, on Linux).
    """
    actors = list(actors)
    if not actors:
        raise ValueError("create_collective_group(): give the actors of the group (a list of handles)")
    bad = [a for a in actors if not isinstance(a, ActorHandle)]
    if bad:
        raise TypeError(f"create_collective_group(): {bad[0]!r} is not an actor handle; pass the handles "
                        "that Executor.actor() or Class.remote() returned")
    world_size = len(actors) if world_size is None else world_size
    if world_size != len(actors):
        raise ValueError(f"create_collective_group(): world_size={world_size} but {len(actors)} actors "
                         "were given; poolx groups hold exactly the actors given")
    ranks = list(range(world_size)) if ranks is None else list(ranks)
    if sorted(ranks) != list(range(world_size)):
        raise ValueError(f"create_collective_group(): ranks={ranks} must hold each of 0..{world_size - 1} "
                         "once")
    if len(set(actors)) != len(actors):
        raise ValueError("create_collective_group(): an actor appears twice; each rank is its own actor")
    _check_backend_name(backend, "create_collective_group()")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"create_collective_group(timeout={timeout!r}): give a positive number of "
                         "seconds, or None to wait for ever")
    if group_name in _formed and not any(_alive_actor(a) for a in _formed[group_name]):
        del _formed[group_name]  # its actors are gone (their executor shut down)
    if group_name in _formed:
        raise ValueError(f"a collective group named {group_name!r} exists: destroy_collective_group("
                         f"{group_name!r}) first, or choose another group_name")
    backends = {id(_backend_of(a)): _backend_of(a) for a in actors}
    if len(backends) > 1:
        raise ValueError("create_collective_group(): the actors belong to different executors; a group's "
                         "actors must share one")
    engine = next(iter(backends.values()))
    if not getattr(engine, "supports_collectives", False):
        why = ("shared memory needs Linux (memfd)" if not _shm.AVAILABLE else
               "its actors' calls do not run at the same time, or not on one machine")
        raise CollectiveError(
            f"the {engine.name} backend does not run collectives ({why}): use backend='processes' or "
            "'threads'" + ("; on Ray, ray.util.collective does this natively" if engine.name == "ray"
                           else ""))

    meeting = _Meeting(group_name, world_size, timeout)
    try:
        spec = meeting.spec
        by_rank: list[Any] = [None] * world_size
        for actor, rank in zip(actors, ranks):
            by_rank[rank] = actor
        calls = [call_method(actor, CALL_ON_INSTANCE, (_join, spec, rank), {})
                 for rank, actor in enumerate(by_rank)]
        wait = None if timeout is None else timeout + 30.0
        errors: list[tuple[int, BaseException]] = []
        for rank, call in enumerate(calls):
            try:
                call.result(wait)
            except BaseException as failure:
                errors.append((rank, failure))
    finally:
        meeting.close()  # the actors have their own maps of it now
    if errors:
        _leave_all(by_rank, group_name)
        rank, first = errors[0]
        raise CollectiveError(
            f"create_collective_group({group_name!r}): rank {rank} ({by_rank[rank]!r}) could not join: "
            f"{type(first).__name__}: {first}") from first
    _formed[group_name] = by_rank


def _backend_of(actor: Any) -> Any:
    found = owner_of(actor)
    if found is None:
        raise CollectiveError(f"create_collective_group(): {actor!r} is not an actor of this process's "
                              "executors (groups are formed in the driver)")
    return found.directory.backend


def _alive_actor(handle: Any) -> bool:
    actor = owner_of(handle)
    return actor is not None and actor.status == ALIVE


def _leave_all(actors: list[Any], group_name: str) -> None:
    calls = []
    for actor in actors:
        if actor is None:
            continue
        try:
            calls.append(call_method(actor, CALL_ON_INSTANCE, (_leave, group_name), {}))
        except Exception:  # the actor is gone: nothing to leave
            pass
    for call in calls:
        try:
            call.result(DEFAULT_TIMEOUT)
        except (ActorDiedError, CollectiveError, TimeoutError):
            pass


def destroy_collective_group(group_name: str = "default") -> None:
    """Dissolve the group and free its shared memory.

    In the driver: every member actor leaves it (after the calls made on it so
    far).  In an actor: this actor leaves it.
    """
    if current_runner() is not None:
        _leave(None, group_name)
        return
    actors = _formed.pop(group_name, None)
    if actors is None:
        raise ValueError(f"destroy_collective_group({group_name!r}): no group of that name was formed here")
    _leave_all(actors, group_name)
