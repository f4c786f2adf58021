"""The child interpreter of ``poolx profile run``: the program, as ``python`` would run it, in a Session.

``program.py`` starts ``python -m poolx.harness._boot`` with the run's setting
in the environment variable ``POOLX_PROFILE_RUN`` (JSON).  This module:

1. sets ``sys.argv`` and ``sys.path[0]`` as ``python script.py`` (the script's
   folder, symlinks resolved) or ``python -m module`` (the current folder) does;
2. installs the drop-in (``dropin.install``) when asked;
3. starts a ``Session`` (the observer of every executor the program makes);
4. runs the program as ``__main__``: a script in a fresh ``__main__`` module
   (``__file__`` absolute, ``__spec__`` None), a module with ``runpy``
   (``__spec__`` its spec);
5. on any way out (return, ``sys.exit``, an exception, Ctrl-C) leaves as
   python would: the traceback printed without this module's frames,
   ``sys.exit("message")`` printed and 1, ``KeyboardInterrupt`` 130 (python
   dies by SIGINT, which a shell reports as 130); the session stops at exit,
   in python's exit order (after the program's non-daemon threads, poolx's
   exit hook and the program's own atexit handlers), with the exit code, the
   traceback text and the drop-in's notes.

The script runs in a module of its own that stays ``sys.modules["__main__"]``
after it returns (as in ``python script.py``), so atexit handlers and pickles
by reference made late still find the program's ``__main__``.
"""

from __future__ import annotations

import atexit
import builtins
import importlib.machinery
import importlib.util
import io
import json
import multiprocessing
import os
import runpy
import signal
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any, NoReturn

SETTING_VAR = "POOLX_PROFILE_RUN"
# Frames of the boot itself, cut from the program's traceback.
_OWN_FILES = {__file__, runpy.__file__, "<frozen runpy>"}


def main() -> None:
    setting = json.loads(os.environ.pop(SETTING_VAR))  # (the program's own children do not see it)
    runner, source = _prepare(setting)
    try:
        if setting["start_method"]:
            # The start method of every pool the program makes without naming one: the drop-in's and
            # poolx.Pool's (they take multiprocessing's default context) as well as the stdlib's own.
            multiprocessing.set_start_method(setting["start_method"], force=True)
        dropin = _install_dropin(setting, source)
        session = _session(setting)
        session.start()
    except Exception as exc:  # (before any of the program ran: said as the command's own error)
        _fail(f"cannot start profiling the program: {type(exc).__name__}: {exc}")
    # The session stops at exit, in python's order: after the program's non-daemon threads
    # ended and poolx's own exit hook shut its executors down (threading's exit), and after
    # the program's atexit handlers (registered later, so run earlier).
    outcome: dict[str, Any] = {"code": 0, "error": None}
    atexit.register(_stop, session, setting, dropin, outcome)
    try:
        runner()
    except SystemExit as exc:
        outcome["code"] = _exit_code(exc)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)  # (as python does; then its exit status, 1)
            raise SystemExit(outcome["code"]) from None
        raise
    except KeyboardInterrupt as exc:
        # (python then dies by SIGINT, which a shell reports as 130: poolx profile run says 130)
        outcome.update(code=128 + signal.SIGINT, error=_report(exc))
        sys.exit(outcome["code"])
    except BaseException as exc:
        outcome.update(code=1, error=_report(exc))
        sys.exit(1)


def _prepare(setting: dict[str, Any]) -> tuple[Callable[[], None], str | None]:
    """Set argv and sys.path[0]; (the function that runs the program, its main source file);
    a bad target: exit 2 here."""
    module, script, args = setting["module"], setting["script"], setting["args"]
    if module:
        try:
            spec = importlib.util.find_spec(module)  # (imports the parent packages, as python -m does)
        except (ImportError, ValueError) as exc:
            spec, reason = None, f" ({type(exc).__name__}: {exc})"
        else:
            reason = ""
        if spec is None:
            _fail(f"-m {module}: no module named {module!r}{reason}; check the name")
        sys.argv = [module, *args]  # (runpy sets argv[0] to the module's file, as python -m does)
        return (lambda: _run_module(module)), spec.origin
    path = os.path.abspath(script)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.realpath(path)) if os.path.isfile(path) else path
    return (lambda: _run_script(path)), path if os.path.isfile(path) else None


def _run_module(module: str) -> None:
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _run_script(path: str) -> None:
    if os.path.isdir(path):  # a folder with a __main__.py, as python runs it
        runpy.run_path(path, run_name="__main__")
        return
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=path, __cached__=None, __spec__=None, __builtins__=builtins,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", path))
    with io.open_code(path) as f:
        code = compile(f.read(), path, "exec")
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def _install_dropin(setting: dict[str, Any], source: str | None) -> Any:
    """The drop-in, told the program's main file (scanned for private attributes of the pools)."""
    if not setting["drop_in"]:
        return None
    from .dropin import install

    return install(source)


def _session(setting: dict[str, Any]) -> Any:
    from .session import Session

    return Session(setting["out"], profile=setting["profile"], workers=setting["workers"],
                   start_method=setting["start_method"], title=setting["title"], argv=list(sys.argv),
                   live=setting["live"], drop_in=setting["drop_in"])


def _stop(session: Any, setting: dict[str, Any], dropin: Any, outcome: dict[str, Any]) -> None:
    notes = list(dropin.notes) if dropin is not None else []
    if dropin is not None:
        dropin.uninstall()
    try:
        session.stop(exit_code=outcome["code"], error=outcome["error"], notes=notes)
    except Exception as exc:  # (the program's own outcome must still come out)
        print(f"poolx profile run: cannot write the profile in {setting['out']}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return
    sys.stdout.flush()
    if setting["summary"]:
        print(session.summary(), file=sys.stderr)


def _exit_code(exc: SystemExit) -> int:
    """The status python exits with for ``exc`` (None: 0; a number; anything else: printed, 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    return 1


def _trimmed(tb: types.TracebackType | None) -> types.TracebackType | None:
    while tb is not None and tb.tb_frame.f_code.co_filename in _OWN_FILES:
        tb = tb.tb_next
    return tb


def _report(exc: BaseException) -> str:
    """Print the uncaught exception through sys.excepthook (the program may have its own), without
    the boot's frames; its text, for the report."""
    tb = _trimmed(exc.__traceback__)
    exc.__traceback__ = tb
    # (as python's own report of an uncaught exception does: poolx's exit hook reads
    # sys.last_type to cancel the pending work after a Ctrl-C)
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    try:
        sys.excepthook(type(exc), exc, tb)
    except Exception:  # (a broken hook: python then prints both)
        traceback.print_exception(type(exc), exc, tb)
    sys.stderr.flush()
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _fail(message: str) -> NoReturn:
    print(f"poolx profile run: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
