"""The "poolx" joblib backend: the behaviours joblib users and scikit-learn rely on.

joblib's own backend tests run against it in test_joblib_conformance.py; this
module tests what poolx promises beyond them (abort that spares other work,
warm workers, thread caps, nesting) and scikit-learn's results against loky's.
"""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

joblib = pytest.importorskip("joblib")
pytest.importorskip("sklearn")

import numpy as np  # noqa: E402
from _tasks import identity  # noqa: E402
from joblib import Parallel, delayed, parallel_backend, parallel_config  # noqa: E402

import poolx  # noqa: E402
import poolx.joblib  # noqa: E402
from poolx.joblib import PoolxBackend  # noqa: E402


@pytest.fixture(autouse=True)
def stop_warm_workers():
    """Each test starts with no warm pool and leaves none (the leak check looks)."""
    yield
    poolx.joblib.shutdown_workers()
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def square(x):
    return x * x


def pid_of(_):
    return os.getpid()


def slow_pid(_):
    time.sleep(0.05)
    return os.getpid()


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"item {x} is bad")
    time.sleep(0.05)
    return x


def env_and_threads(_):
    import threadpoolctl

    info = threadpoolctl.threadpool_info()
    return os.environ.get("OMP_NUM_THREADS"), sorted({lib["num_threads"] for lib in info})


def inner_parallel(n):
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    pids = Parallel(n_jobs=2)(delayed(pid_of)(i) for i in range(n))
    return type(backend).__name__, os.getpid(), pids


def explicit_inner_poolx(n):
    with parallel_config(backend="poolx", n_jobs=-1):
        pids = Parallel()(delayed(pid_of)(i) for i in range(n))
    return os.getpid(), pids, joblib.cpu_count()


# -- registration and configuration --------------------------------------------


def test_import_registers_the_backend():
    from joblib.parallel import BACKENDS

    assert BACKENDS["poolx"] is PoolxBackend
    poolx.joblib.register()  # again: harmless
    assert BACKENDS["poolx"] is PoolxBackend


@pytest.mark.parametrize("style", ["parallel_config", "parallel_backend"])
def test_both_context_managers_select_it(style):
    manager = parallel_config(backend="poolx", n_jobs=2) if style == "parallel_config" \
        else parallel_backend("poolx", n_jobs=2)
    with manager:
        results = Parallel()(delayed(pid_of)(i) for i in range(20))
        assert isinstance(Parallel()._backend, PoolxBackend)
    assert os.getpid() not in results  # ran in worker processes
    assert Parallel(n_jobs=2, backend="poolx")(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]


def test_n_jobs_one_runs_in_this_process():
    with parallel_config(backend="poolx", n_jobs=1):
        assert set(Parallel()(delayed(pid_of)(i) for i in range(5))) == {os.getpid()}


def test_effective_n_jobs_follows_joblib():
    b = PoolxBackend()
    cpus = joblib.cpu_count()
    assert b.effective_n_jobs(None) == 1
    assert b.effective_n_jobs(3) == 3
    assert b.effective_n_jobs(-1) == cpus
    assert b.effective_n_jobs(-2) == max(cpus - 1, 1)
    assert b.effective_n_jobs(-cpus - 5) == 1
    with pytest.raises(ValueError, match="n_jobs == 0"):
        b.effective_n_jobs(0)
    with parallel_config(backend="poolx"):
        assert joblib.effective_n_jobs(-1) == cpus


def test_bad_arguments_name_the_culprit():
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*max_workers.*it takes executor"):
        PoolxBackend(max_workers=3)
    with pytest.raises(TypeError, match=r"executor= must be a poolx\.Executor, got ThreadPoolExecutor"):
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(1) as tp:
            PoolxBackend(executor=tp)
    with pytest.raises(ValueError, match="idle_worker_timeout must be"):
        PoolxBackend(idle_worker_timeout=-1)


@pytest.mark.parametrize("backend", ["processes", "threads"])
def test_runs_on_a_given_executor_and_leaves_it_running(backend):
    with poolx.Executor(3, backend=backend) as ex:
        with parallel_config(backend="poolx", executor=ex):
            assert joblib.effective_n_jobs(-1) == 3
            assert joblib.effective_n_jobs(8) == 3  # no more than the executor has
            results = Parallel()(delayed(square)(i) for i in range(200))
        assert results == [i * i for i in range(200)]
        assert ex.statistics().tasks_completed >= 1
        assert ex.submit(square, 7).result(timeout=10) == 49  # still open
        if backend == "threads":  # joblib's sharedmem rules see threads
            with parallel_config(backend="poolx", executor=ex):
                assert Parallel(require="sharedmem")._backend.uses_threads


# -- batching, generators, callbacks ----------------------------------------------


def test_auto_batching_groups_tiny_calls():
    with poolx.Executor(2) as ex, parallel_config(backend="poolx", executor=ex):
        n = 20_000
        assert sum(Parallel()(delayed(square)(i) for i in range(n))) == sum(i * i for i in range(n))
        batches = ex.statistics().tasks_completed
    assert batches < n / 10, f"{batches} batches for {n} tiny calls: auto-batching did not batch"


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_generator_output(return_as):
    with parallel_config(backend="poolx", n_jobs=2):
        # Both workers up first: on a loaded machine the second one may start
        # after the first has finished the slow item, which then is not last.
        deadline = time.monotonic() + 20
        while len(set(Parallel(batch_size=1)(delayed(slow_pid)(i) for i in range(4)))) < 2:
            assert time.monotonic() < deadline, "the second worker never ran a task"
        gen = Parallel(return_as=return_as)(
            delayed(sleep_then)(i, 0.3 if i == 0 else 0.0) for i in range(8))
        assert not isinstance(gen, list)
        got = list(gen)
    if return_as == "generator":
        assert got == list(range(8))
    else:
        assert sorted(got) == list(range(8))
        assert got[-1] == 0, f"the slow item should come last unordered, got {got}"


def test_batch_size_and_pre_dispatch_are_honoured():
    with poolx.Executor(2) as ex, parallel_config(backend="poolx", executor=ex):
        assert Parallel(batch_size=10, pre_dispatch="all")(delayed(square)(i) for i in range(100)) \
            == [i * i for i in range(100)]
        assert ex.statistics().tasks_completed == 10


# -- errors, abort, timeout ---------------------------------------------------------


def test_first_error_aborts_the_call_and_the_backend_stays_usable():
    with parallel_config(backend="poolx", n_jobs=2):
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="item 1 is bad"):
            Parallel(batch_size=1)(delayed(fail_on)(i, 1) if i == 1 else delayed(sleep_then)(i, 30)
                                   for i in range(10))
        assert time.monotonic() - t0 < 20, "the 30 s tasks were not stopped"
        assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]


def test_abort_stops_only_this_calls_work_on_a_shared_executor():
    with poolx.Executor(3) as ex:
        other = ex.submit(sleep_then, "other", 1.5)  # someone else's task on the same executor
        time.sleep(0.2)
        t0 = time.monotonic()
        with parallel_config(backend="poolx", executor=ex), pytest.raises(ValueError):
            Parallel(batch_size=1)(delayed(fail_on)(i, 1) if i == 1 else delayed(sleep_then)(i, 30)
                                   for i in range(6))
        assert other.result(timeout=10) == "other"
        assert ex.submit(square, 3).result(timeout=10) == 9
        assert time.monotonic() - t0 < 20, "the 30 s batches were not stopped"
        stats = ex.statistics()
        # 6 batches: 1 raised, the 30 s ones that were running were stopped
        # (failed with TaskCancelledError), the rest cancelled before they ran.
        assert stats.tasks_failed >= 2 and stats.tasks_cancelled >= 1, stats


def test_parallel_timeout_stops_the_late_task():
    with parallel_config(backend="poolx", n_jobs=2):
        t0 = time.monotonic()
        # joblib raises multiprocessing.TimeoutError for every backend (loky too)
        with pytest.raises(multiprocessing.TimeoutError):
            Parallel(timeout=0.5)(delayed(sleep_then)(i, 30 if i == 0 else 0) for i in range(4))
        assert time.monotonic() - t0 < 20
        pids_after = set(Parallel()(delayed(pid_of)(i) for i in range(20)))
        assert len(pids_after) >= 1  # usable again


def test_error_keeps_the_remote_traceback():
    with parallel_config(backend="poolx", n_jobs=2), pytest.raises(ValueError) as info:
        Parallel()(delayed(fail_on)(i, 3) for i in range(5))
    text = "".join(__import__("traceback").format_exception(info.value))
    assert "fail_on" in text


# -- warm workers ---------------------------------------------------------------------


def test_workers_stay_warm_across_calls():
    with parallel_config(backend="poolx", n_jobs=2):
        first = set(Parallel(batch_size=1)(delayed(slow_pid)(i) for i in range(10)))
        second = set(Parallel(batch_size=1)(delayed(slow_pid)(i) for i in range(10)))
    assert len(first) == 2 and second == first, (first, second)


def test_idle_workers_stop_after_the_timeout():
    import psutil

    with parallel_config(backend="poolx", n_jobs=2, idle_worker_timeout=0.3):
        pids = set(Parallel()(delayed(pid_of)(i) for i in range(20)))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.05)
    assert not any(psutil.pid_exists(p) for p in pids), "idle workers still alive after the timeout"


def test_another_n_jobs_replaces_the_warm_pool():
    with parallel_config(backend="poolx", n_jobs=2):
        Parallel()(delayed(square)(i) for i in range(4))
    with parallel_config(backend="poolx", n_jobs=3):
        pids = set(Parallel(batch_size=1)(delayed(slow_pid)(i) for i in range(12)))
    assert len(pids) == 3
    assert poolx.joblib._shared.executor.max_workers == 3


# -- thread caps and nesting -----------------------------------------------------------


def test_blas_and_openmp_threads_are_capped_in_workers():
    np.ones(3) @ np.ones(3)  # BLAS loaded in the driver (and so in a forkserver importing __main__)
    cpus = joblib.cpu_count()
    with parallel_config(backend="poolx", n_jobs=2):
        results = Parallel()(delayed(env_and_threads)(i) for i in range(2))
    share = str(max(cpus // 2, 1)) if "OMP_NUM_THREADS" not in os.environ else os.environ["OMP_NUM_THREADS"]
    for omp, counts in results:
        assert omp == share
        assert counts == [int(share)], f"thread pools not capped at {share}: {counts}"
    with parallel_config(backend="poolx", n_jobs=2, inner_max_num_threads=1):
        for omp, counts in Parallel()(delayed(env_and_threads)(i) for i in range(2)):
            assert omp == "1" and counts == [1]


def test_nested_parallel_uses_threads_in_the_worker():
    with parallel_config(backend="poolx", n_jobs=2):
        results = Parallel()(delayed(inner_parallel)(4) for _ in range(2))
    for backend_name, worker_pid, inner_pids in results:
        assert backend_name == "ThreadingBackend"
        assert set(inner_pids) == {worker_pid}, "the nested Parallel started processes"


def test_explicit_poolx_inside_a_worker_falls_back_to_threads():
    with parallel_config(backend="poolx", n_jobs=2):
        results = Parallel()(delayed(explicit_inner_poolx)(4) for _ in range(2))
    for worker_pid, inner_pids, cpus_seen in results:
        assert set(inner_pids) == {worker_pid}
        assert cpus_seen == max(joblib.cpu_count() // 2, 1)  # n_jobs=-1 in a worker: its share


def test_parallel_inside_a_poolx_task_does_not_deadlock():
    with poolx.Executor(2) as ex:
        futures = [ex.submit(explicit_inner_poolx, 3) for _ in range(4)]  # more than the workers
        for f in futures:
            worker_pid, inner_pids, _ = f.result(timeout=30)
            assert set(inner_pids) == {worker_pid}


# -- scikit-learn: same results as loky ------------------------------------------------


def _fit_all(backend):
    from sklearn.datasets import load_breast_cancer, load_digits, load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.inspection import permutation_importance
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_val_score
    from sklearn.svm import SVC

    Xd, yd = load_digits(return_X_y=True)
    Xi, yi = load_iris(return_X_y=True)
    Xb, yb = load_breast_cancer(return_X_y=True)
    out = {}
    with parallel_config(backend=backend, n_jobs=2):
        grid = GridSearchCV(SVC(), {"C": [1, 10], "gamma": [1e-3, 1e-4]}, cv=3).fit(Xd[:600], yd[:600])
        out["grid"] = (grid.best_params_, grid.cv_results_["mean_test_score"])
        rand = RandomizedSearchCV(SVC(), {"C": [0.1, 1, 10, 100], "gamma": [1e-2, 1e-3, 1e-4]},
                                  n_iter=5, cv=3, random_state=0).fit(Xi, yi)
        out["random"] = (rand.best_params_, rand.cv_results_["mean_test_score"])
        out["cv"] = cross_val_score(LogisticRegression(max_iter=2000), Xb, yb, cv=4)
        forest = RandomForestClassifier(n_estimators=40, random_state=0).fit(Xb, yb)
        out["forest"] = forest.predict_proba(Xb)
        perm = permutation_importance(forest, Xb[:200], yb[:200], n_repeats=3, random_state=0)
        out["perm"] = perm.importances
    return out


def test_scikit_learn_gives_the_same_results_as_loky():
    ours = _fit_all("poolx")
    theirs = _fit_all("loky")
    assert ours["grid"][0] == theirs["grid"][0]
    assert ours["random"][0] == theirs["random"][0]
    for key in ("grid", "random"):
        np.testing.assert_array_equal(ours[key][1], theirs[key][1])
    for key in ("cv", "forest", "perm"):
        np.testing.assert_array_equal(ours[key], theirs[key])


def test_random_forest_n_jobs_runs_on_the_backend():
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    X, y = load_iris(return_X_y=True)
    with poolx.Executor(2) as ex, parallel_config(backend="poolx", executor=ex):
        forest = RandomForestClassifier(n_estimators=20, n_jobs=2, random_state=0).fit(X, y)
        # RandomForest asks for threads (prefer="threads"); with an explicit
        # backend joblib keeps it, so the trees were built by the executor.
        assert ex.statistics().tasks_completed >= 1
    assert forest.score(X, y) > 0.9


def test_identity_helper_is_importable_in_workers():
    # The test module itself is importable by workers (used by every test above).
    with parallel_config(backend="poolx", n_jobs=2):
        assert Parallel()(delayed(identity)(i) for i in range(3)) == [0, 1, 2]


def test_ctrl_c_during_a_parallel_call_stops_everything(tmp_path):
    import signal
    import subprocess
    import sys

    import psutil

    script = tmp_path / "interrupted.py"
    script.write_text(
        "import time, joblib, poolx.joblib\n"
        "from joblib import Parallel, delayed\n"
        "def slow(i):\n"
        "    time.sleep(30)\n"
        "if __name__ == '__main__':\n"
        "    with joblib.parallel_config(backend='poolx', n_jobs=2):\n"
        "        print('started', flush=True)\n"
        "        Parallel()(delayed(slow)(i) for i in range(10))\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 20
        while len(psutil.Process(proc.pid).children(recursive=True)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the forkserver and both workers
        kids = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "KeyboardInterrupt" in err
    _, alive = psutil.wait_procs(kids, timeout=5)
    assert not alive, f"left running after Ctrl-C: {alive}"
