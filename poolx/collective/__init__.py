"""Collective communication among actors: allreduce, broadcast, allgather, reduce_scatter, barrier.

Ray's ``ray.util.collective`` API (``import poolx.collective as col``), for
numpy arrays, through shared memory on one machine::

    col.create_collective_group(workers, world_size=4, ranks=[0, 1, 2, 3])  # in the driver
    col.allreduce(self.grads)                                               # in each actor

A group is formed either by the driver (``create_collective_group(actors)``)
or by the actors themselves, each calling ``init_collective_group(world_size,
rank, group_name=...)`` in a method (Ray's two ways); each actor then calls
the operations from its methods, every rank the same operations in the same
order, as with MPI or Gloo.  Each operation works in place on the arrays it is
given and returns when this rank's part is done.

The layers: ``_block`` (the shared memory and the barrier protocol the ranks
meet at), ``_group`` (forming a group, joining and leaving it) and this
module (the operations, and the public names).  Each operation checks its
arguments, publishes them (``Member.begin``), moves data through the group's
segment and meets the other ranks at barriers.  Linux only (``memfd``); the
``processes`` and ``threads`` backends (``Backend.supports_collectives``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._errors import CollectiveError, CollectiveTimeoutError
from ._block import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from ._block import REDUCE_CODES, ReduceOp, aligned, reduce_into
from ._group import (
    Rendezvous as Rendezvous,
)
from ._group import (
    create_collective_group,
    destroy_collective_group,
    get_collective_group_size,
    get_rank,
    init_collective_group,
    is_group_initialized,
    member_in,
    rank_arg,
)

__all__ = [
    "CollectiveError",
    "CollectiveTimeoutError",
    "ReduceOp",
    "allgather",
    "allreduce",
    "barrier",
    "broadcast",
    "create_collective_group",
    "destroy_collective_group",
    "get_collective_group_size",
    "get_rank",
    "init_collective_group",
    "is_group_initialized",
    "reduce",
    "reduce_scatter",
]


# -- checking the arguments ---------------------------------------------------------


def _array(np: Any, value: Any, what: str, name: str, writable: bool) -> Any:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{what}: {name} must be a numpy array, not {type(value).__name__}"
                        + (" (wrap it: numpy.asarray(...))" if not writable else ""))
    if not value.flags.c_contiguous:
        raise ValueError(f"{what}: {name} must be C-contiguous (numpy.ascontiguousarray(...) makes a "
                         "contiguous copy)")
    if writable and not value.flags.writeable:
        raise ValueError(f"{what}: {name} is read-only (an array from poolx.get or put is): the result "
                         "is written into it in place; pass a copy (array.copy())")
    if value.dtype.hasobject:
        raise TypeError(f"{what}: {name} has dtype object; collectives move numeric arrays")
    return value


def _reduce_op(np: Any, op: Any, dtype: Any, what: str) -> ReduceOp:
    try:
        rop = op if isinstance(op, ReduceOp) else ReduceOp(str(op).lower())
    except ValueError:
        raise ValueError(f"{what}: op={op!r} is not a reduction; use one of "
                         f"{', '.join(o.value for o in ReduceOp)} (or poolx.collective.ReduceOp)") from None
    if rop is ReduceOp.MEAN and not np.issubdtype(dtype, np.inexact):
        raise TypeError(f"{what}: op=mean needs a floating or complex array, not {dtype} (the mean of "
                        "integers is written back in place); use a float array, or op=sum and divide")
    return rop


def _same_arrays(np: Any, arrays: Any, like: Any, size: int, what: str, name: str,
                 writable: bool) -> list[Any]:
    if not isinstance(arrays, Sequence) or len(arrays) != size:
        got = len(arrays) if isinstance(arrays, Sequence) else type(arrays).__name__
        raise ValueError(f"{what}: {name} must be a list of {size} arrays, one per rank (got {got})")
    out = []
    for i, a in enumerate(arrays):
        a = _array(np, a, what, f"{name}[{i}]", writable)
        if a.shape != like.shape or a.dtype != like.dtype:
            raise ValueError(f"{what}: {name}[{i}] is {a.dtype}{list(a.shape)}; every array must be "
                             f"{like.dtype}{list(like.shape)}, as the tensor's")
        out.append(a)
    return out


# -- the operations ----------------------------------------------------------------


def allreduce(tensor: Any, group_name: str = "default", op: ReduceOp | str = ReduceOp.SUM) -> None:
    """Combine ``tensor`` across the group with ``op``; every rank gets the result, in place."""
    _reduce_op_call("allreduce", tensor, group_name, op, None)


def reduce(tensor: Any, dst_rank: int = 0, group_name: str = "default",
           op: ReduceOp | str = ReduceOp.SUM) -> None:
    """Combine ``tensor`` across the group; only rank ``dst_rank``'s array receives the result."""
    _reduce_op_call("reduce", tensor, group_name, op, dst_rank)


def _reduce_op_call(what: str, tensor: Any, group_name: str, op: Any, dst: int | None) -> None:
    m = member_in(group_name, what)
    np = m.np

    def prepare() -> Any:
        arr = _array(np, tensor, what, "tensor", writable=True)
        rop = _reduce_op(np, op, arr.dtype, what)
        root = -1 if dst is None else rank_arg(dst, m.size, what, "dst_rank")
        desc = f"{what}({arr.dtype}{list(arr.shape)}, op={rop.value}"
        desc += ")" if dst is None else f", dst={dst})"
        return (arr, rop), (arr.nbytes, arr.dtype, root, REDUCE_CODES[rop], 1, desc)

    arr, rop = m.begin(what, prepare)
    n, slot = arr.nbytes, aligned(arr.nbytes)
    data = m.ensure((m.size + 1) * slot, what)
    flat = arr.reshape(-1)
    data[m.rank * slot:m.rank * slot + n] = flat.view(np.uint8)
    m.barrier(what)
    count = flat.size
    lo, hi = count * m.rank // m.size, count * (m.rank + 1) // m.size
    result = data[m.size * slot:m.size * slot + n].view(arr.dtype)
    if hi > lo:
        parts = [data[i * slot:i * slot + n].view(arr.dtype)[lo:hi] for i in range(m.size)]
        reduce_into(np, rop, parts, result[lo:hi])
    m.barrier(what)
    if dst is None or dst == m.rank:
        np.copyto(flat, result)


def broadcast(tensor: Any, src_rank: int = 0, group_name: str = "default") -> None:
    """Copy rank ``src_rank``'s ``tensor`` into every other rank's, in place."""
    what = "broadcast"
    m = member_in(group_name, what)
    np = m.np

    def prepare() -> Any:
        arr = _array(np, tensor, what, "tensor", writable=True)
        src = rank_arg(src_rank, m.size, what, "src_rank")
        return arr, (arr.nbytes, arr.dtype, src, 0, 1, f"broadcast({arr.dtype}{list(arr.shape)}, src={src})")

    arr = m.begin(what, prepare)
    n = arr.nbytes
    data = m.ensure(aligned(n), what)
    flat = arr.reshape(-1).view(np.uint8)
    if m.rank == src_rank:
        data[:n] = flat
    m.barrier(what)
    if m.rank != src_rank:
        flat[:] = data[:n]


def allgather(tensor_list: list[Any], tensor: Any, group_name: str = "default") -> None:
    """Every rank's ``tensor``, gathered into ``tensor_list`` (one array per rank, in rank order)."""
    what = "allgather"
    m = member_in(group_name, what)
    np = m.np

    def prepare() -> Any:
        arr = _array(np, tensor, what, "tensor", writable=False)
        outs = _same_arrays(np, tensor_list, arr, m.size, what, "tensor_list", writable=True)
        return (arr, outs), (arr.nbytes, arr.dtype, -1, 0, m.size,
                             f"allgather({arr.dtype}{list(arr.shape)})")

    arr, outs = m.begin(what, prepare)
    n, slot = arr.nbytes, aligned(arr.nbytes)
    data = m.ensure(m.size * slot, what)
    data[m.rank * slot:m.rank * slot + n] = arr.reshape(-1).view(np.uint8)
    m.barrier(what)
    for i, out in enumerate(outs):
        out.reshape(-1).view(np.uint8)[:] = data[i * slot:i * slot + n]


def reduce_scatter(tensor: Any, tensor_list: list[Any], group_name: str = "default",
                   op: ReduceOp | str = ReduceOp.SUM) -> None:
    """Combine the ranks' ``tensor_list`` element-wise; rank *i* gets part *i* in ``tensor``."""
    what = "reduce_scatter"
    m = member_in(group_name, what)
    np = m.np

    def prepare() -> Any:
        arr = _array(np, tensor, what, "tensor", writable=True)
        ins = _same_arrays(np, tensor_list, arr, m.size, what, "tensor_list", writable=False)
        rop = _reduce_op(np, op, arr.dtype, what)
        return (arr, ins, rop), (arr.nbytes, arr.dtype, -1, REDUCE_CODES[rop], m.size,
                                 f"reduce_scatter({arr.dtype}{list(arr.shape)}, op={rop.value})")

    arr, ins, rop = m.begin(what, prepare)
    n = arr.nbytes
    slot = aligned(m.size * n)
    data = m.ensure(m.size * slot, what)
    base = m.rank * slot
    for j, part in enumerate(ins):
        data[base + j * n:base + (j + 1) * n] = part.reshape(-1).view(np.uint8)
    m.barrier(what)
    parts = [data[i * slot + m.rank * n:i * slot + (m.rank + 1) * n].view(arr.dtype) for i in range(m.size)]
    reduce_into(np, rop, parts, arr.reshape(-1))


def barrier(group_name: str = "default") -> None:
    """Return once every rank of the group has called ``barrier``."""
    m = member_in(group_name, "barrier")
    m.begin("barrier", lambda: (None, (0, None, -1, 0, 0, "barrier()")))
