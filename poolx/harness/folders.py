"""Where the harness finds the repository's top-level folders, and how it loads a file from one.

The example workloads (``profiling/``) and the benchmark suite
(``benchmarks/``) live once, at the top of the repository, beside ``poolx/``.
They are not packages: a checkout uses them where they are, and the wheel
carries them as data files (``share/poolx/profiling``,
``share/poolx/benchmarks``: see pyproject.toml), so ``poolx profile pi`` and
``poolx bench`` work after a plain ``pip install`` too.  This module finds the
folder (the checkout's first, else the installed copy, through the
distribution's own list of files, whatever the install scheme) and loads a
``.py`` file from it by path.  It neither puts a folder on ``sys.path`` nor
knows what the files contain: ``scenario.py`` and ``bench.py`` do.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

# The folder holding poolx/ in a checkout (in an installed wheel: site-packages).
_ROOT = Path(__file__).resolve().parent.parent.parent


def folder(name: str, marker: str) -> Path | None:
    """The top-level folder ``name`` (``profiling`` or ``benchmarks``) holding ``marker``, or None.

    A checkout's folder, beside the ``poolx`` this module belongs to, comes
    first; else the wheel's data files, found through the ``poolx``
    distribution's RECORD.
    """
    checkout = _ROOT / name
    if (checkout / marker).is_file():
        return checkout
    try:
        dist = importlib.metadata.distribution("poolx")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == marker and file.parent.name == name and file.parent.parent.name == "poolx":
            path = Path(str(dist.locate_file(file))).resolve()
            if path.is_file():
                return path.parent
    return None


def load_file(path: Path, name: str) -> ModuleType:
    """The module in the file ``path``, imported as ``name`` (once: a second call returns the same one)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as the import system does: a dataclass or a
    # pickle by reference looks its module up by name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
