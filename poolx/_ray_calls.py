"""What the Ray-style API checks and adds at a call: signatures, ``@method``, actor handles.

* ``signature_check(fn)``: a function with ``fn``'s parameters and no body,
  built once per remote function or actor method; calling it with a call's
  arguments raises Python's own ``TypeError`` for a call that does not fit, at
  ``.remote()``, as Ray does (with ``inspect.Signature.bind``).  Built with
  ``exec`` because calling it costs a plain call (~0.1 us) where ``bind``
  costs microseconds per call.
* ``method(num_returns=...)``: Ray's ``@ray.method`` for actor methods.
* ``RayActorHandle``: the handle ``Cls.remote()`` returns in the Ray-style
  API; its method calls check their arguments, split ``num_returns`` and
  return refs that print as Ray's do.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import keyword
from collections.abc import Callable, Sequence
from typing import Any

from ._futures import Future
from .actors.handle import ActorHandle, owner_of

#: The attribute ``@method(num_returns=n)`` sets on a function (Ray's name for it).
NUM_RETURNS_ATTR = "__ray_num_returns__"

Checker = Callable[..., None]


def signature_check(fn: Any, drop_first: bool = False) -> Checker | None:
    """A function that accepts exactly the calls ``fn`` accepts; None when its signature is unknown.

    ``drop_first``: ``fn`` is a method's function, called without its ``self``.
    """
    params = _parameters(fn, drop_first)
    return None if params is None else _compile(params)


def _parameters(fn: Any, drop_first: bool) -> list[inspect.Parameter] | None:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # (builtins and some C callables have none)
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if drop_first and params and params[0].kind in positional:
        params = params[1:]
    return params


def _compile(params: list[inspect.Parameter]) -> Checker | None:
    P = inspect.Parameter
    text: list[str] = []
    star = False
    for i, p in enumerate(params):
        if not p.name.isidentifier() or keyword.iskeyword(p.name):
            return None
        if p.kind is P.KEYWORD_ONLY and not star:
            text.append("*")
            star = True
        if p.kind is P.VAR_POSITIONAL:
            text.append(f"*{p.name}")
            star = True
        elif p.kind is P.VAR_KEYWORD:
            text.append(f"**{p.name}")
        else:
            text.append(p.name + ("=None" if p.default is not P.empty else ""))
        last_positional_only = i + 1 == len(params) or params[i + 1].kind is not P.POSITIONAL_ONLY
        if p.kind is P.POSITIONAL_ONLY and last_positional_only:
            text.append("/")
    namespace: dict[str, Any] = {}
    exec(f"def check({', '.join(text)}): pass", namespace)
    return namespace["check"]


def bad_call(exc: TypeError, where: str, fn: Any, drop_first: bool = False) -> TypeError:
    """The ``TypeError`` for a call a checker refused (``exc``): the call, the reason, the signature."""
    message = str(exc).replace("check() ", "", 1)
    shown = inspect.Signature(_parameters(fn, drop_first) or [], __validate_parameters__=False)
    return TypeError(f"{where}: {message}; the signature is {where.split('.remote')[0]}{shown}")


def method(*args: Any, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Ray's ``@ray.method(num_returns=n)``: an actor method's call returns ``n`` refs.

    ``num_returns`` is the one option poolx supports here; Ray's others
    (``concurrency_group``, ``max_task_retries``, ``retry_exceptions`` ...)
    are refused with a ``TypeError`` that names them.
    """
    if args:
        raise TypeError("@ray.method takes keyword options only: @ray.method(num_returns=2)")
    unknown = sorted(set(options) - {"num_returns"})
    if unknown:
        raise TypeError(f"@ray.method({', '.join(unknown)}=...): poolx supports num_returns only "
                        "(set the others on the actor class with .options(...))")
    n = options.get("num_returns", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"@ray.method(num_returns=...) must be an integer >= 1, got {n!r}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, NUM_RETURNS_ATTR, n)
        return fn

    return decorate


def mark_ref(future: Future[Any]) -> Future[Any]:
    """Make ``future`` a ref of the Ray-style API: it prints as ``ObjectRef(...)`` (see ``Future``)."""
    future._poolx_task = None  # type: ignore[attr-defined]
    return future


class RayActorHandle(ActorHandle[Any]):
    """The handle of an actor of the Ray-style API: ``handle.method`` is a ``RayActorMethod``.

    It pickles as a plain ``ActorHandle`` (in a task, calls are not checked).
    """

    def __getattr__(self, name: str) -> Any:
        plain = super().__getattr__(name)
        record = owner_of(self)
        cls = record.cls if record is not None else None
        bound = self.__dict__[name] = RayActorMethod(plain, *_method_rules(cls, name))
        return bound


class RayActorMethod:
    """``handle.method`` of a ``RayActorHandle``: ``.remote()`` checks, calls and splits."""

    __slots__ = ("_check", "_drop", "_fn", "_num_returns", "_plain", "_where")

    def __init__(self, plain: Any, check: Checker | None, fn: Any, drop: bool, num_returns: int,
                 where: str) -> None:
        self._plain = plain
        self._check = check
        self._fn = fn
        self._drop = drop  # (fn takes self)
        self._num_returns = num_returns
        self._where = where

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Call the method on the actor: its ref, or ``num_returns`` refs."""
        check = self._check
        if check is not None:
            try:
                check(*args, **kwargs)
            except TypeError as exc:
                raise bad_call(exc, self._where, self._fn, self._drop) from None
        ref = mark_ref(self._plain.remote(*args, **kwargs))
        if self._num_returns == 1:
            return ref
        return split(ref, self._num_returns, self._where)

    def options(self, *, num_returns: int | None = None, **others: Any) -> RayActorMethod:
        """This method with ``num_returns`` for the next call (Ray's ``handle.m.options(...)``)."""
        if others:
            raise TypeError(f"{self._where.replace('.remote()', '.options')}({', '.join(others)}=...): "
                            "poolx supports num_returns only")
        n = self._num_returns if num_returns is None else num_returns
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"num_returns must be an integer >= 1, got {n!r}")
        return RayActorMethod(self._plain, self._check, self._fn, self._drop, n, self._where)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._plain(*args, **kwargs)  # (raises: methods are called with .remote())

    def __repr__(self) -> str:
        return repr(self._plain)


def _method_rules(cls: type | None, name: str) -> tuple[Checker | None, Any, bool, int, str]:
    """For ``cls.name``: its checker, the function (and whether it takes self), its
    ``num_returns`` and its label."""
    where = f"{cls.__qualname__ if cls else 'actor'}.{name}.remote()"
    if cls is None:
        return None, None, False, 1, where
    static = inspect.getattr_static(cls, name, None)
    if isinstance(static, staticmethod):
        fn, drop = static.__func__, False
    elif isinstance(static, classmethod):
        fn, drop = getattr(cls, name), False
    else:
        fn, drop = static, True
    n = getattr(getattr(fn, "__func__", fn), NUM_RETURNS_ATTR, 1)
    return signature_check(fn, drop_first=drop), fn, drop, n, where


def split(future: cf.Future[Any], n: int, name: str) -> list[Future[Any]]:
    """``num_returns=n``: one ref per item of the call's result."""
    parts: list[Future[Any]] = [mark_ref(Future()) for _ in range(n)]

    def on_done(f: cf.Future[Any]) -> None:
        for part in parts:
            part.set_running_or_notify_cancel()
        try:
            values = f.result()
            if not isinstance(values, Sequence) or len(values) != n:
                raise ValueError(f"{name} has num_returns={n} but returned "
                                 f"{type(values).__name__} {_brief(values)}, not a sequence of {n} values")
        except BaseException as exc:
            for part in parts:
                part.set_exception(exc)
            return
        for part, value in zip(parts, values):
            part.set_result(value)

    future.add_done_callback(on_done)
    return parts


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."
