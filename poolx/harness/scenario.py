"""What a scenario is: one workload written three ways.

A scenario is a module (or any object with these attributes):

``SIZE``
    the default input size (an int: points, items, ...); ``--size`` overrides it.
``serial(size)``
    computes the result in the calling process.
``tasks(executor, size)``
    computes it with tasks on ``executor`` (a ``poolx.Executor``).
``actors(executor, size)``
    computes it with actors started on ``executor``.

Optional: ``WORKERS`` (default worker counts, e.g. ``(1, 3, 6)``) and
``check(result, expected) -> bool`` (default: ``==``), which compares each
mode's result with the serial one.  Any of the three forms may be missing;
``--modes`` must then leave its mode out (the command says which).

``poolx profile`` accepts a built-in name (``pi``, ``retrieve``), a path to a
``.py`` file, or ``module`` / ``module:attr``.  This module is the one place
that finds and loads them (``poolx profile`` and ``poolx demo`` alike); it does
not run them (``measure.py`` does).

The built-in ones live once, in the repository's top-level ``profiling/``
folder, and are loaded from it by path (``folders.py`` finds it in a checkout
or in an installed wheel's data files).  Every scenario is pickled by value
(cloudpickle), so workers need not be able to import it: a worker started in a
checkout imports the checkout's ``poolx``, and no worker has ``profiling/`` or
a user's scenario file on its path.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle

from . import folders

BUILTIN = ("pi", "retrieve")
MODES = ("serial", "task", "actor")
_FORM = {"serial": "serial", "task": "tasks", "actor": "actors"}
_POOLX = Path(__file__).resolve().parent.parent  # the poolx package


@dataclass
class Scenario:
    name: str
    obj: Any
    size: int
    workers: tuple[int, ...] | None
    doc: str

    def has(self, mode: str) -> bool:
        return callable(getattr(self.obj, _FORM[mode], None))

    def form(self, mode: str) -> Callable[..., Any]:
        fn = getattr(self.obj, _FORM[mode], None)
        if not callable(fn):
            raise AttributeError(f"scenario {self.name!r} has no {_FORM[mode]}() form")
        return fn

    def run(self, mode: str, executor: Any, size: int) -> Any:
        fn = self.form(mode)
        return fn(size) if mode == "serial" else fn(executor, size)

    def check(self, result: Any, expected: Any) -> bool:
        check = getattr(self.obj, "check", None)
        return bool(check(result, expected)) if callable(check) else bool(result == expected)


def load(spec: str) -> Scenario:
    """Load a scenario by built-in name, ``.py`` path, ``module`` or ``module:attr``."""
    module_spec, _, attr = spec.partition(":")
    if attr and not Path(spec).exists():
        try:
            module = _loading(spec, importlib.import_module, module_spec)
        except ModuleNotFoundError as exc:
            raise ValueError(f"scenario {spec!r}: cannot import module {module_spec!r} ({exc})") from exc
        try:
            obj = getattr(module, attr)
        except AttributeError:
            raise ValueError(f"scenario {spec!r}: module {module_spec!r} has no attribute {attr!r}") from None
        cloudpickle.register_pickle_by_value(module)
        name = spec
    else:
        obj = load_module(spec)
        name = Path(spec).stem if spec.endswith(".py") else spec
    present = [m for m in MODES if callable(getattr(obj, _FORM[m], None))]
    if not present:
        raise ValueError(
            f"scenario {spec!r} defines none of serial(size), tasks(executor, size), "
            "actors(executor, size): see 'poolx profile --help' for the convention"
        )
    size = getattr(obj, "SIZE", None)
    if not isinstance(size, int):
        raise ValueError(f"scenario {spec!r} needs an integer SIZE (its default input size)")
    workers = getattr(obj, "WORKERS", None)
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return Scenario(name, obj, size, tuple(workers) if workers else None, doc[0] if doc else "")


def load_module(spec: str) -> ModuleType:
    """A built-in scenario name, a path to a ``.py`` file, or an importable module name: its module."""
    if spec in BUILTIN:
        where = folders.folder("profiling", f"{spec}.py")
        if where is None:
            raise RuntimeError(f"the built-in scenario {spec!r} is not installed (no profiling/{spec}.py "
                               "in a checkout nor among poolx's installed files); reinstall poolx")
        return _by_value(folders.load_file(where / f"{spec}.py", f"poolx_builtin_scenario_{spec}"))
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"scenario file {spec!r} does not exist")
        return _by_value(_loading(spec, folders.load_file, path, f"poolx_scenario_{path.stem}"))
    try:
        return _by_value(_loading(spec, importlib.import_module, spec))
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"unknown scenario {spec!r}: give a built-in name ({', '.join(BUILTIN)}), "
            "a path to a .py file, or an importable module"
        ) from exc


class ScenarioError(ValueError):
    """The scenario's own code failed while it was loaded: a syntax error, or an exception
    at its top level.  The command prints it as one line (no traceback: the
    fault is in the user's file, and the line says where)."""


def _loading(spec: str, load_: Callable[..., ModuleType], *args: Any) -> ModuleType:
    """``load_(*args)``, with the scenario's own failures turned into a ScenarioError naming the
    file and line.  A module that is not there at all (ModuleNotFoundError for
    ``spec`` itself) passes through: the callers say which names are valid."""
    try:
        return load_(*args)
    except SyntaxError as exc:
        where = f"{exc.filename or spec}, line {exc.lineno}" if exc.lineno else (exc.filename or spec)
        raise ScenarioError(
            f"scenario {spec!r} has a syntax error ({where}): {exc.msg}; fix the file "
            f"('python -m py_compile {exc.filename or spec}' shows it)"
        ) from None
    except ModuleNotFoundError as exc:
        module = spec.partition(":")[0]
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise
        raise ScenarioError(
            f"scenario {spec!r} imports {exc.name!r}, which is not installed here: install the "
            "package that provides it (or fix the import)"
        ) from None
    except Exception as exc:
        # The scenario's fault when its top-level code (or a module it imports) was running:
        # a module-level frame outside poolx.  Otherwise poolx failed: its traceback stays.
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if f.name == "<module>" and not Path(f.filename).resolve().is_relative_to(_POOLX)]
        if not frames:
            raise
        raise ScenarioError(
            f"scenario {spec!r} raised {type(exc).__name__} while loading, at {frames[0].filename}, "
            f"line {frames[0].lineno}: {exc}; fix the scenario's top-level code"
        ) from None


def _by_value(module: ModuleType) -> ModuleType:
    cloudpickle.register_pickle_by_value(module)
    return module
