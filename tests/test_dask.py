"""The dask backend against a real cluster: a scheduler and two workers started
as separate processes with the ``dask`` command, on loopback (issue 9)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from _tasks import raise_value_error, square

import poolx

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def dask_address(tmp_path_factory):
    dask = shutil.which("dask") or os.path.join(os.path.dirname(sys.executable), "dask")
    scheduler_file = tmp_path_factory.mktemp("dask") / "scheduler.json"
    common = ["--no-dashboard"]
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--scheduler-file", str(scheduler_file), *common],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        # The workers import the tests' task modules, as a cluster's workers import
        # the user's code (installed there, or on their PYTHONPATH).
        path = [os.path.dirname(__file__), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        for _ in range(2):
            procs.append(subprocess.Popen(
                [dask, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                 "--host", "127.0.0.1", *common], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield json.loads(scheduler_file.read_text())["address"]
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_tasks_map_and_futures_as_arguments_run_on_the_cluster(dask_address):
    with poolx.Executor(backend="dask", address=dask_address) as ex:
        assert ex.submit(square, 7).result(timeout=60) == 49
        assert list(ex.map(square, range(100))) == [i * i for i in range(100)]
        assert ex.submit(square, ex.submit(square, 3)).result(timeout=60) == 81
        assert ex.submit(lambda: "lambdas travel").result(timeout=60) == "lambdas travel"
        with pytest.raises(ValueError, match="boom") as info:
            ex.submit(raise_value_error, "boom").result(timeout=60)
        assert "raise_value_error" in str(info.value.__cause__)
        assert ex.submit(square, 2).result(timeout=60) == 4
        stats = ex.statistics()
    assert stats.tasks_completed >= 4 and stats.tasks_failed == 1


def test_pool_and_the_environment_variable_move_an_unchanged_program(dask_address, monkeypatch):
    monkeypatch.setenv("POOLX_BACKEND", "dask")
    monkeypatch.setenv("POOLX_DASK_ADDRESS", dask_address)
    with poolx.Executor() as ex:
        assert ex.backend == "dask"
        assert ex.submit(square, 5).result(timeout=60) == 25


def test_what_the_dask_backend_cannot_do_is_refused_clearly(dask_address):
    with pytest.raises(ValueError, match="task_timeout needs backend='processes'"):
        poolx.Executor(backend="dask", address=dask_address, task_timeout=1)
    with poolx.Executor(backend="dask", address=dask_address) as ex:
        with pytest.raises(ValueError, match="does not run actors"):
            ex.actor(dict)
    with pytest.raises(ValueError, match="address= is the cluster"):
        poolx.Executor(backend="threads", address=dask_address)
