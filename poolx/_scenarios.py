"""Finding scenarios: the example workloads the ``poolx`` command runs.

The built-in ones (``pi``, ``retrieve``) live once, in the repository's
``profiling/`` folder; the wheel installs that folder as ``poolx.scenarios``.
From a source checkout that is not installed as a wheel, they are loaded from
the folder itself.  Every scenario is pickled by value (cloudpickle), so
workers need not be able to import it: a worker started in a checkout imports
the checkout's ``poolx`` (the current directory comes first on its path),
which has no ``poolx.scenarios``, even when the driver runs an installed wheel.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import cloudpickle

BUILTIN = ("pi", "retrieve")
_CHECKOUT = Path(__file__).resolve().parent.parent / "profiling"


def load(spec: str) -> ModuleType:
    """A built-in scenario name, a path to a ``.py`` file, or an importable module name."""
    if spec in BUILTIN:
        try:
            return _by_value(importlib.import_module(f"poolx.scenarios.{spec}"))
        except ModuleNotFoundError:
            return _load_file(_CHECKOUT / f"{spec}.py", f"poolx.scenarios.{spec}")
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"scenario file {spec!r} does not exist")
        return _load_file(path, f"poolx_scenario_{path.stem}")
    try:
        return _by_value(importlib.import_module(spec))
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"unknown scenario {spec!r}: give a built-in name ({', '.join(BUILTIN)}), "
            "a path to a .py file, or an importable module"
        ) from exc


def _load_file(path: Path, name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load a scenario from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return _by_value(module)


def _by_value(module: ModuleType) -> ModuleType:
    cloudpickle.register_pickle_by_value(module)
    return module
