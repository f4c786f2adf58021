"""The drop-in (``poolx profile run --drop-in``): unchanged stdlib programs run on poolx.

Each program is written to tmp_path and run in its own interpreter; it calls
``install(__file__)`` at its top, as ``poolx profile run``'s boot does (or not,
with the argument ``stdlib``: the control), uses the stdlib's API unchanged,
and prints what it saw as one JSON line.  A task reports which process ran it:
poolx's workers are named ``poolx-worker-N``, the stdlib's ``ForkProcess-N``,
``SpawnPoolWorker-N``, loky's ``LokyProcess-N``; and how that process was
started, from its command line (a fork child has its parent's, a spawn child
runs ``spawn_main``, a forkserver child is a fork of the forkserver).
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process as cf_process
import json
import multiprocessing
import multiprocessing.pool as mp_pool
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import poolx
from poolx.harness import dropin

ROOT = Path(poolx.__file__).resolve().parent.parent
EXECUTOR, POOL, LOKY = dropin.EXECUTOR, dropin.POOL, dropin.LOKY

PRELUDE = '''\
import json, multiprocessing, os, sys
from poolx.harness import dropin
DROPIN = dropin.install(__file__) if sys.argv[1:2] != ["stdlib"] else None
METHOD = sys.argv[2] if len(sys.argv) > 2 else None


def where(_=None):
    """(this process's name, how it was started)."""
    with open("/proc/self/cmdline", "rb") as f:
        cmd = f.read()
    how = "spawn" if b"spawn_main" in cmd else "forkserver" if b"forkserver" in cmd else "fork"
    return multiprocessing.current_process().name, how


def pid(_=None):
    return os.getpid()


def setup(tag):  # an initializer that sets a global the tasks read
    global TAG
    TAG = tag


def tagged(_):
    return TAG, where()


def report(**facts):
    if DROPIN is not None:
        facts.update(substituted=DROPIN.substituted, notes=DROPIN.notes)
    print("RESULT " + json.dumps(facts))
'''


def run(tmp_path: Path, body: str, *args: str, check: bool = True,
        **env_vars: str) -> tuple[dict, subprocess.CompletedProcess[str]]:
    script = tmp_path / "program.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **env_vars)
    proc = subprocess.run([sys.executable, str(script), *(args or ("dropin",))], capture_output=True,
                          text=True, timeout=240, cwd=tmp_path, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return (json.loads(lines[-1][len("RESULT "):]) if lines else {}), proc


def line_of(body: str, text: str) -> int:
    """The line of the program (prelude included) where ``text`` first appears."""
    lines = (PRELUDE + textwrap.dedent(body)).splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def on_poolx(seen: list, method: str) -> bool:
    return bool(seen) and all(name.startswith("poolx-worker-") and how == method for name, how in seen)


def test_process_pool_executor_runs_on_poolx(tmp_path, start_method):
    """Both import paths; the start method, initializer, initargs and max_tasks_per_child kept."""
    facts, _ = run(tmp_path, '''
        import concurrent.futures
        import concurrent.futures.process

        if __name__ == "__main__":
            ctx = multiprocessing.get_context(METHOD)
            with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx, initializer=setup,
                                                        initargs=("hi",)) as ex:
                out = list(ex.map(tagged, range(4)))
                kind = (type(ex).__module__, isinstance(ex, concurrent.futures.Executor),
                        isinstance(ex, concurrent.futures.ProcessPoolExecutor))
                done = ex.statistics().tasks_completed if hasattr(ex, "statistics") else None
            pids = None
            if METHOD != "fork":  # (the stdlib refuses max_tasks_per_child under fork)
                with concurrent.futures.process.ProcessPoolExecutor(1, mp_context=ctx,
                                                                    max_tasks_per_child=1) as ex:
                    pids = [ex.submit(pid).result() for _ in range(3)]
                    second = [ex.submit(where).result()]
            else:
                with concurrent.futures.process.ProcessPoolExecutor(1, mp_context=ctx) as ex:
                    second = [ex.submit(where).result()]
            report(tags=[t for t, _ in out], seen=[w for _, w in out], kind=kind, done=done,
                   pids=pids, second=second)
    ''', "dropin", start_method)
    assert facts["kind"] == ["poolx._executor", True, True]
    assert on_poolx(facts["seen"], start_method), facts["seen"]
    assert on_poolx(facts["second"], start_method), facts["second"]
    assert facts["tags"] == ["hi"] * 4  # the initializer ran with its initargs
    assert facts["done"] == 4
    if start_method != "fork":
        assert len(set(facts["pids"])) == 3  # max_tasks_per_child=1: a new worker per task
    assert EXECUTOR in facts["substituted"] and facts["notes"] == []


def test_multiprocessing_pool_runs_on_poolx(tmp_path, start_method):
    """multiprocessing.Pool (the default context: set_start_method's), get_context(m).Pool
    and multiprocessing.pool.Pool(context=...), each keeping its start method."""
    facts, _ = run(tmp_path, '''
        import multiprocessing.pool

        if __name__ == "__main__":
            multiprocessing.set_start_method(METHOD)
            with multiprocessing.Pool(2, setup, ("hi",)) as pool:
                out = pool.map(tagged, range(4), chunksize=1)
                kind = (type(pool).__module__, isinstance(pool, multiprocessing.pool.Pool))
            with multiprocessing.get_context(METHOD).Pool(1, maxtasksperchild=1) as pool:
                pids = pool.map(pid, range(3), chunksize=1)
                by_context = [pool.apply(where)]
            with multiprocessing.pool.Pool(1, context=multiprocessing.get_context(METHOD)) as pool:
                direct = [pool.apply(where)]
            report(tags=[t for t, _ in out], seen=[w for _, w in out], kind=kind, pids=pids,
                   by_context=by_context, direct=direct)
    ''', "dropin", start_method)
    assert facts["kind"] == ["poolx._pool", True]
    assert on_poolx(facts["seen"], start_method), facts["seen"]
    assert on_poolx(facts["by_context"], start_method) and on_poolx(facts["direct"], start_method)
    assert facts["tags"] == ["hi"] * 4
    assert len(set(facts["pids"])) == 3  # maxtasksperchild=1
    assert POOL in facts["substituted"] and facts["notes"] == []


def test_defaults_are_the_stdlibs(tmp_path):
    """No max_workers: the stdlib's CPU count (poolx's own would read LOKY_MAX_CPU_COUNT, set to 1
    here); no mp_context: multiprocessing's default context (poolx's own is forkserver), or spawn
    with max_tasks_per_child, as ProcessPoolExecutor does."""
    facts, _ = run(tmp_path, '''
        import concurrent.futures

        if __name__ == "__main__":
            with concurrent.futures.ProcessPoolExecutor() as ex:
                size, seen = ex._max_workers, [ex.submit(where).result()]
            with concurrent.futures.ProcessPoolExecutor(1, max_tasks_per_child=2) as ex:
                spawned = [ex.submit(where).result()]
            with multiprocessing.Pool() as pool:
                pool_seen = [pool.apply(where)]
            report(size=size, seen=seen, spawned=spawned, pool_seen=pool_seen,
                   cpus=getattr(os, "process_cpu_count", os.cpu_count)(),
                   default=multiprocessing.get_start_method())
    ''', LOKY_MAX_CPU_COUNT="1")
    assert facts["size"] == facts["cpus"] and facts["substituted"][:2] == [EXECUTOR, POOL]
    assert on_poolx(facts["seen"], facts["default"]) and on_poolx(facts["pool_seen"], facts["default"])
    assert on_poolx(facts["spawned"], "spawn")


NO_GUARD = '''
import concurrent.futures

with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(METHOD)) as ex:
    seen = list(ex.map(where, range(4)))
report(seen=seen)
'''


@pytest.mark.timeout(300)
def test_script_without_main_guard_runs(tmp_path, start_method):
    """No ``if __name__ == "__main__":``: the stdlib's spawn and forkserver workers run the
    script again and break the pool; poolx's never run it."""
    facts, _ = run(tmp_path, NO_GUARD, "dropin", start_method)
    assert on_poolx(facts["seen"], start_method), facts["seen"]
    if start_method != "fork":  # the control: the stdlib fails on this script
        control, proc = run(tmp_path, NO_GUARD, "stdlib", start_method, check=False)
        assert proc.returncode != 0 and not control, proc.stdout
        assert "bootstrapping phase" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_subclass_runs_on_the_original(tmp_path, method):
    facts, _ = run(tmp_path, '''
        import concurrent.futures
        import multiprocessing.pool

        class MyExecutor(concurrent.futures.ProcessPoolExecutor):
            pass

        class MyPool(multiprocessing.pool.Pool):
            pass

        if __name__ == "__main__":
            ctx = multiprocessing.get_context(METHOD)
            with MyExecutor(1, mp_context=ctx) as ex:
                sub_ex = (type(ex).__name__, ex.submit(where).result())
            with MyPool(1, context=ctx) as pool:
                sub_pool = (type(pool).__name__, pool.apply(where))
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
                plain = ex.submit(where).result()
            report(sub_ex=sub_ex, sub_pool=sub_pool, plain=plain)
    ''', "dropin", method)
    assert facts["sub_ex"][0] == "MyExecutor" and not facts["sub_ex"][1][0].startswith("poolx")
    assert facts["sub_pool"][0] == "MyPool" and not facts["sub_pool"][1][0].startswith("poolx")
    assert on_poolx([facts["plain"]], method)  # the class itself still runs on poolx
    notes = "\n".join(facts["notes"])
    assert "MyExecutor (program.py) ran on the stdlib, not poolx: it subclasses concurrent.futures." in notes
    assert "MyPool (program.py) ran on the stdlib, not poolx: it subclasses multiprocessing." in notes
    assert len(facts["notes"]) == 2


def test_private_attribute_leaves_the_class(tmp_path):
    """A program that reads ``executor._processes`` (through getattr) and ``pool._pool`` (poolx has
    neither) gets the stdlib's classes, noted with the line; one that reads ``_state`` and
    ``_max_workers`` (poolx has both) still runs on poolx."""
    body = '''
        import concurrent.futures

        if __name__ == "__main__":
            with concurrent.futures.ProcessPoolExecutor(1) as ex:
                seen = [ex.submit(where).result()]
                processes = len(getattr(ex, "_processes"))
            with multiprocessing.Pool(1) as pool:
                seen.append(pool.apply(where))
                workers = len(pool._pool)
            report(seen=seen, counts=[processes, workers])
    '''
    facts, _ = run(tmp_path, body)
    assert not any(name.startswith("poolx") for name, _ in facts["seen"]), facts["seen"]
    assert facts["counts"] == [1, 1]
    assert EXECUTOR not in facts["substituted"] and POOL not in facts["substituted"]
    notes = "\n".join(facts["notes"])
    assert "ProcessPoolExecutor ran on the stdlib" in notes
    assert f"reads its private attribute _processes (line {line_of(body, 'getattr(ex')})" in notes
    assert "multiprocessing.Pool ran on the stdlib" in notes
    assert f"reads its private attribute _pool (line {line_of(body, 'pool._pool')})" in notes

    facts, _ = run(tmp_path, '''
        import concurrent.futures

        if __name__ == "__main__":
            with concurrent.futures.ProcessPoolExecutor(1) as ex:
                seen = [ex.submit(where).result()]
                size = ex._max_workers
            with multiprocessing.Pool(1) as pool:
                seen.append(pool.apply(where))
                state = pool._state
            report(seen=seen, size=size, state=state)
    ''')
    assert on_poolx(facts["seen"], "fork") and [facts["size"], facts["state"]] == [1, "RUN"]
    assert {EXECUTOR, POOL} <= set(facts["substituted"]) and facts["notes"] == []


JOBLIB = '''
assert "joblib" not in sys.modules  # imported below, after install(), by scikit-learn

from joblib import Parallel, delayed, parallel_config
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score


def on_poolx(estimator, X, y):  # a scorer: 1.0 when this fold was fitted in a poolx worker
    return float(multiprocessing.current_process().name.startswith("poolx-worker-"))


if __name__ == "__main__":
    X, y = load_iris(return_X_y=True)
    scores = cross_val_score(LogisticRegression(max_iter=200), X, y, cv=3, n_jobs=2, scoring=on_poolx)
    default = Parallel(n_jobs=2)(delayed(where)() for _ in range(2))
    named = Parallel(n_jobs=2, backend="loky")(delayed(where)() for _ in range(2))
    try:
        with parallel_config(backend="loky", prewarm=False):  # an option of loky's only
            foreign = Parallel(n_jobs=2)(delayed(where)() for _ in range(2))
    except TypeError:  # joblib before 1.5 takes no backend options at all
        foreign = None
    report(scores=list(scores), default=default, named=named, foreign=foreign)
'''


def joblib_takes_backend_options() -> bool:
    import joblib

    return tuple(int(part) for part in joblib.__version__.split(".")[:2]) >= (1, 5)


@pytest.mark.timeout(300)
def test_joblib_imported_after_install_runs_on_poolx(tmp_path):
    pytest.importorskip("sklearn")
    facts, _ = run(tmp_path, JOBLIB)
    assert facts["scores"] == [1.0, 1.0, 1.0]
    names = [name for name, _ in facts["default"] + facts["named"]]
    assert all(name.startswith("poolx-worker-") for name in names), names
    assert LOKY in facts["substituted"]
    if joblib_takes_backend_options():
        assert all(name.startswith("LokyProcess") for name, _ in facts["foreign"]), facts["foreign"]
        assert facts["notes"] == ["A joblib Parallel ran on loky, not poolx: loky was given prewarm, "
                                  "which poolx's joblib backend does not take."]
    else:  # loky refuses the option (a TypeError), as it does without the drop-in; nothing ran
        assert facts["foreign"] is None and facts["notes"] == []
    control, _ = run(tmp_path, JOBLIB, "stdlib")  # the control: loky's own workers
    assert control["scores"] == [0.0, 0.0, 0.0]


def test_uninstall_restores_every_original_and_install_twice_is_refused():
    joblib_parallel = pytest.importorskip("joblib.parallel")
    missing = object()
    before = (cf.__dict__.get("ProcessPoolExecutor", missing), cf_process.ProcessPoolExecutor,
              mp_pool.Pool, multiprocessing.Pool, joblib_parallel.BACKENDS["loky"], list(sys.meta_path))
    installed = dropin.install()
    try:
        assert cf_process.ProcessPoolExecutor is not before[1] and mp_pool.Pool is not before[2]
        assert cf.ProcessPoolExecutor is cf_process.ProcessPoolExecutor
        assert joblib_parallel.BACKENDS["loky"] is not before[4]
        assert issubclass(cf_process.ProcessPoolExecutor, before[1])
        with pytest.raises(RuntimeError, match="already installed"):
            dropin.install()
    finally:
        installed.uninstall()
    after = (cf.__dict__.get("ProcessPoolExecutor", missing), cf_process.ProcessPoolExecutor,
             mp_pool.Pool, multiprocessing.Pool, joblib_parallel.BACKENDS["loky"], list(sys.meta_path))
    assert all(a is b for a, b in zip(after[:5], before[:5], strict=True))
    assert after[5] == before[5]
    installed.uninstall()  # idempotent
    again = dropin.install()  # and a new one may be installed
    again.uninstall()
    assert cf_process.ProcessPoolExecutor is before[1]


def test_uninstall_before_joblib_is_imported_leaves_joblib_alone(tmp_path):
    """The import hook that waits for joblib goes with uninstall(): joblib imported later is loky's."""
    facts, _ = run(tmp_path, '''
        hooked = len(sys.meta_path)
        DROPIN.uninstall()
        import joblib.parallel
        from joblib._parallel_backends import LokyBackend
        report(hooked=hooked, now=len(sys.meta_path),
               loky=joblib.parallel.BACKENDS["loky"] is LokyBackend)
    ''')
    assert facts["hooked"] == facts["now"] + 1 and facts["loky"] is True
    assert LOKY in facts["substituted"]
