"""``poolx profile run``: profile the user's own program, unchanged.

    poolx profile run [options] script.py [args...]
    poolx profile run [options] -m module [args...]

The command line splits in two at the program: the options before it are
``poolx profile run``'s, everything from the script (or ``-m module``) on is
the program's own, as with ``python -m cProfile``.  The program runs in a child
interpreter, ``python -m poolx.harness._boot`` (``_boot.py``), which reads its
setting from the environment variable ``POOLX_PROFILE_RUN`` (JSON), runs the
program as ``python`` would inside a ``Session`` (``session.py``) and exits
with the program's exit code.  This parent checks the command line, prepares
the ``--out`` folder, watches each run (``live.py``) and, with several
settings (``--backends`` x ``--workers``), puts them side by side
(``whatif.py``).

One interpreter per setting: a what-if setting must not inherit the imports,
the warm caches or the executors of the previous one, and the program's own
``sys.exit`` or crash ends its interpreter, not the command.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends import get_backend
from . import live, whatif
from ._args import positive_ints
from .profile import CLUSTER_BACKENDS, parse_list, prepare_out, require_engine, require_profiler

#: The environment variable that carries a run's setting to ``_boot.py``.
SETTING_VAR = "POOLX_PROFILE_RUN"
PROFILES = ("cpu", "mem", "none")
START_METHODS = ("fork", "forkserver", "spawn")
#: A what-if setting's folder in --out ("processes-x2", "serial", "x4"): a
#: rerun into the same --out replaces them, and they are not foreign files.
SETTING_FOLDER = re.compile(r"^(?:[a-z]+(?:-x\d+)?|x\d+)$")

USAGE = """\
poolx profile run [options] script.py [args...]
       poolx profile run [options] -m module [args...]"""

DESCRIPTION = """\
Run your own program, unchanged, and show where its time and memory went: every
poolx executor it makes (Executor, Pool, ThreadPool, the joblib backend, the
Ray-style API) is observed, each worker profiled, and report.html, results.json
and trace.json are written in --out.  The program keeps its own arguments,
sys.argv, __main__ and exit code: poolx profile run exits with it."""

EPILOG = """\
The options come before the program: everything after the script (or -m
module) is the program's own, even what looks like an option.

What if: --backends serial,processes --workers 1,2,4 runs the program once
per setting (serial once), each in a fresh interpreter, its files in
out/<backend>-x<workers>/, and puts the settings side by side in
out/report.html and out/results.json with verdicts: does parallelism pay for
this program, how much, and what eats the rest.

examples:
  poolx profile run train.py --epochs 3
  poolx profile run --profile mem -m mypackage.job input.csv
  poolx profile run --drop-in --backends serial,processes --workers 1,2 train.py"""


@dataclass(frozen=True)
class Setting:
    """One run of the program: the backend (POOLX_BACKEND) and worker count it runs with."""

    backend: str | None
    workers: int | None

    @property
    def label(self) -> str:
        parts = [self.backend or "", f"x{self.workers}" if self.workers else ""]
        return "-".join(p for p in parts if p) or "program"


@dataclass
class Plan:
    """What the command line asks for, checked."""

    program: list[str]  # the program's argv as given: [script, *args] or ["-m", module, *args]
    module: str | None
    script: str | None
    args: list[str]
    profile: str
    drop_in: bool
    settings: list[Setting]
    start_method: str | None
    out: Path
    live: bool

    @property
    def title(self) -> str:
        return "poolx profile run " + " ".join(self.program)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="poolx profile run", usage=USAGE, description=DESCRIPTION,
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", dest="module", metavar="module",
                   help="run a module as 'python -m module' would (the rest is its arguments)")
    p.add_argument("--profile", default="cpu", choices=PROFILES,
                   help="cpu: a sampling CPU profiler in the driver and every worker (default); mem: memray; "
                   "none: timings and the timeline only")
    p.add_argument("--drop-in", action="store_true",
                   help="the program's concurrent.futures.ProcessPoolExecutor, multiprocessing.Pool and "
                   "joblib's default process backend run on poolx for this run")
    p.add_argument("--backends", default=None,
                   help="what-if: comma-separated backends to run the program on, e.g. serial,threads,"
                   "processes (sets POOLX_BACKEND: executors that name no backend take it)")
    p.add_argument("--workers", type=positive_ints, default=None,
                   help="what-if: comma-separated worker counts, e.g. 1,2,4 (every executor's max_workers)")
    p.add_argument("--start-method", default=None, choices=START_METHODS,
                   help="the start method of every executor and pool the program makes without naming "
                   "one (multiprocessing's default is set to it too; default: poolx's, and the stdlib's "
                   "for the stdlib's pools)")
    p.add_argument("--out", default=None,
                   help="folder for the files (default: ./poolx-profile-<script stem or module>)")
    p.add_argument("--no-live", action="store_true",
                   help="no live view: the program's output passes through untouched, with a status "
                   "line on stderr every few seconds")
    return p


def split(argv: list[str], p: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(our options, the program: [script, *args] or ["-m", module, *args]).

    The program starts at the first word that is neither an option nor an
    option's value, or at ``-m``; a ``--`` ends the options explicitly."""
    takes_value = {s for a in p._actions for s in a.option_strings if a.nargs != 0}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return argv[:i], argv[i + 1:]
        if word == "-m" or (word.startswith("-m") and not word.startswith("--")):
            module = [word[2:]] if len(word) > 2 else argv[i + 1:i + 2]
            rest = argv[i + 1:] if len(word) > 2 else argv[i + 2:]
            return argv[:i], ["-m", *module, *rest]
        if not word.startswith("-") or word == "-":
            return argv[:i], argv[i:]
        i += 2 if word in takes_value else 1
    return argv, []


def plan(argv: list[str]) -> Plan:
    """The checked plan; argparse's error (exit 2) for a bad option, ValueError/ImportError/
    FileNotFoundError naming the culprit for a bad program, backend or profiler."""
    p = parser()
    options, program = split(argv, p)
    args = p.parse_args(options)
    if not program or program == ["-m"]:
        p.error("give the program to run: a script (poolx profile run train.py) or a module "
                "(poolx profile run -m package.module), after the options")
    module = program[1] if program[0] == "-m" else None
    script = None if module else program[0]
    args_ = program[2:] if module else program[1:]
    if module:
        _check_module(module)
    else:
        _check_script(program[0])
    if args.profile != "none":
        require_profiler(args.profile)
    backends = _backends(args.backends)
    return Plan(program=program, module=module, script=script, args=args_, profile=args.profile,
                drop_in=args.drop_in, settings=settings(backends, args.workers),
                start_method=args.start_method, out=out_folder(args.out, module or script or ""),
                live=live.wanted(args.no_live))


def _check_script(path: str) -> None:
    target = Path(path)
    if target.is_dir():
        if not (target / "__main__.py").is_file():
            raise FileNotFoundError(f"{path} is a folder without a __main__.py: give the script to run "
                                    "(a .py file), or -m for a module")
        return
    if not target.is_file():
        hint = f" (to run the module {path!r}, use -m {path})" if not path.endswith(".py") else ""
        raise FileNotFoundError(f"cannot find the script {path!r} in {os.getcwd()}{hint}: give the "
                                "path of the program to profile")


def _check_module(name: str) -> None:
    """As ``python -m`` looks (the current folder first), without running any of the program:
    only the top-level package is looked up here; the child reports a missing submodule."""
    top = name.split(".")[0]
    sys.path.insert(0, os.getcwd())
    try:
        found = bool(top) and importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    finally:
        sys.path.pop(0)
    if not found:
        raise ImportError(f"-m {name}: no module named {top!r} in {os.getcwd()} or on sys.path: check "
                          "the name, or install the package (or give a script's path without -m)")


def _backends(text: str | None) -> list[str | None]:
    if text is None:
        return [None]
    names = parse_list(text, "backends")
    for name in names:
        if name in CLUSTER_BACKENDS:
            require_engine(name)
        try:
            get_backend(name)
        except ValueError as exc:
            raise ValueError(f"--backends: {exc}") from None
    return list(dict.fromkeys(names))


def settings(backends: list[str | None], workers: list[int] | None) -> list[Setting]:
    """Every backend with every worker count; serial once, as x1 (it runs every task in the
    program's own thread, whatever the count)."""
    counts: list[int | None] = list(workers) if workers else [None]
    out: list[Setting] = []
    for backend in backends:
        for count in ([1] if workers else [None]) if backend == "serial" else counts:
            out.append(Setting(backend, count))
    return out


def out_folder(given: str | None, program: str) -> Path:
    """The folder for the files (``--out``), made ready (``profile.prepare_out``: a rerun's
    old profiles and settings are replaced)."""
    stem = Path(program).stem if program.endswith(".py") else Path(program).name
    out = Path(given or f"poolx-profile-{stem}")
    prepare_out(out, f"--out {out}", SETTING_FOLDER)
    return out


def run(argv: list[str]) -> int:
    """``poolx profile run``: the program's exit code (several settings: the first non-zero one)."""
    try:
        the_plan = plan(argv)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"poolx profile run: error: {exc}", file=sys.stderr)
        return 2
    if len(the_plan.settings) == 1:
        code, _ = run_setting(the_plan, the_plan.settings[0], the_plan.out, summary=True)
        return code
    return whatif.run_all(the_plan, run_setting)


def run_setting(the_plan: Plan, setting: Setting, out: Path, *,
                summary: bool) -> tuple[int, dict[str, Any] | None]:
    """Run the program once in a child interpreter: (its exit code, its results.json or None)."""
    out.mkdir(parents=True, exist_ok=True)
    status_dir = tempfile.mkdtemp(prefix="poolx-live-")
    status = Path(status_dir) / "status.json"
    env = dict(os.environ)
    env[SETTING_VAR] = json.dumps(_setting_json(the_plan, setting, out, status, summary))
    if setting.backend is not None:
        env["POOLX_BACKEND"] = setting.backend
    if the_plan.live:
        env["PYTHONUNBUFFERED"] = "1"  # (relayed through pipes: line by line, not in 8 KB blocks)
    command = [sys.executable, "-m", "poolx.harness._boot"]
    title = the_plan.title + ("" if len(the_plan.settings) == 1 else f"  [{setting.label}]")
    interrupted = signal.getsignal(signal.SIGINT)
    # Ctrl-C reaches the program (same process group): it stops as python would and the
    # session writes what ran; this process waits for that instead of dying first.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        code = live.watch(command, env, status, title, live=the_plan.live)
    finally:
        signal.signal(signal.SIGINT, interrupted)
        shutil.rmtree(status_dir, ignore_errors=True)
    if code < 0:  # killed by a signal: as a shell says it
        code = 128 - code
    results = _read_results(out)
    if results is None:
        print(f"poolx profile run: no profile in {out}: the program's interpreter ended (exit code "
              f"{code}) before its session wrote results.json (an error above, os._exit, or a kill)",
              file=sys.stderr)
    return code, results


def _setting_json(the_plan: Plan, setting: Setting, out: Path, status: Path, summary: bool) -> dict[str, Any]:
    return {
        "module": the_plan.module,
        "script": the_plan.script,
        "args": the_plan.args,
        "out": str(out.resolve()),
        "profile": the_plan.profile,
        "workers": setting.workers,
        "start_method": the_plan.start_method,
        "drop_in": the_plan.drop_in,
        "live": str(status),
        "title": the_plan.title,
        "summary": summary,
    }


def _read_results(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
