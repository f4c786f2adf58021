"""poolx profile on the cluster backends (issue 9): the profiler hook started
around every task and actor call of a long-lived worker process, the files of
one process combined and attributed to its worker, and the command line of
``--backend dask|ray`` and ``--address``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import cloudpickle
import psutil
import pytest

from poolx import cli
from poolx.harness import measure, profile, profiles
from poolx.harness._hook import ProfilerHook

pytest.importorskip("numpy")

ROOT = Path(__file__).resolve().parents[2]
PI_SIZE = "2000000"
#: An environment variable that marks every process a command started (its
#: children inherit it, daemons and a local cluster's workers included).
MARK = "POOLX_TEST_PROFILE_RUN"


def _work(n: int) -> int:
    return sum(i * i for i in range(n))


# -- the hook, started and stopped many times in one process ---------------------------


@pytest.mark.timeout(60)
def test_the_hook_writes_one_cpu_session_per_call_and_the_reader_combines_them(tmp_path):
    pytest.importorskip("pyinstrument")
    import multiprocessing.util

    finalizers = len(multiprocessing.util._finalizer_registry)
    # As on a cluster's worker: the hook arrives pickled with cloudpickle.
    hook = cloudpickle.loads(cloudpickle.dumps(ProfilerHook("cpu", str(tmp_path))))
    for _ in range(3):
        hook.start("task")
        try:
            _work(2_000_000)  # (long enough for the sampler to see it every time: ~100 ms)
        finally:
            hook.stop()
    hook.start("actor Sampler#7")  # a nested start (a call inside a call) is covered by the outer one
    hook.start("actor Sampler#7")
    _work(1000)
    hook.stop()
    hook.stop()
    hook.stop()  # unmatched: does nothing
    thread = threading.Thread(target=lambda: (hook.start("task"), _work(200_000), hook.stop()))
    thread.start()
    thread.join()
    pid = os.getpid()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"task-p{pid}.pyisession", f"task-p{pid}-1.pyisession",
                            f"task-p{pid}-2.pyisession", f"actor-Sampler-7-p{pid}-3.pyisession",
                            f"task-p{pid}-4.pyisession"])
    # No multiprocessing finalizer is left behind per call (a worker runs many).
    assert len(multiprocessing.util._finalizer_registry) == finalizers

    info = profiles.cpu_reports(tmp_path, "t", ["actor Sampler#7"], {pid: "worker 0"})
    by_label = {p["label"]: p for p in info["processes"]}
    assert set(by_label) == {f"worker 0 (pid {pid})", f"actor Sampler#7 (pid {pid})"}
    assert by_label[f"worker 0 (pid {pid})"]["captures"] == 4
    # (the sampler charges a generator's time to the generator, on _work's line of this file)
    assert any(h["where"].startswith(os.path.basename(__file__) + ":") for h in info["hot"]), info["hot"]
    # Without the pid among the run's workers, the captures are still shown, unattributed.
    info = profiles.cpu_reports(tmp_path, "t", ["actor Sampler#7"], {})
    assert f"{profiles.UNATTRIBUTED} (pid {pid})" in {p["label"] for p in info["processes"]}


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else set()


# memray's first Tracker in a process opens a pipe that it keeps for the life of the
# process (memray 1.x); later Trackers reuse it (checked below).
@pytest.mark.leaks("fds")
@pytest.mark.timeout(120)
def test_the_hook_writes_one_memray_capture_per_call_and_the_reader_takes_the_peak(tmp_path):
    pytest.importorskip("memray")
    hook = cloudpickle.loads(cloudpickle.dumps(ProfilerHook("mem", str(tmp_path))))
    after_first: set[str] = set()
    for i in range(3):
        hook.start("task")
        block = bytearray(4_000_000 * (i + 1))  # the third call holds 12 MB
        del block
        hook.stop()
        after_first = after_first or _fds()
    hook.start("Sampler#2")  # an actor label without "actor " still finds its lane
    hook.stop()
    assert _fds() <= after_first  # a long-lived worker does not collect fds call after call
    pid = os.getpid()
    found = profiles.mem_reports(tmp_path, ["actor Sampler#2"], pids={pid: "worker 1"})
    rows = {r["label"]: r for r in found}
    assert set(rows) == {"worker 1", "actor Sampler#2"}
    worker = rows["worker 1"]
    assert "error" not in worker, worker
    assert worker["captures"] == 3 and worker["capture"] == f"task-p{pid}-2.bin"
    assert 12_000_000 <= worker["peak"] < 24_000_000  # the largest call's, not the sum
    assert (tmp_path.parent.parent / worker["flamegraph"]).exists()


@pytest.mark.timeout(60)
def test_the_hook_keeps_a_workers_own_sigterm_handler_and_never_raises(tmp_path, capsys):
    pytest.importorskip("pyinstrument")
    import signal

    hook = ProfilerHook("cpu", str(tmp_path))
    hook.driver_pid = -1  # as in a worker process
    saved = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        hook.start("task")  # no handler of its own: SIGTERM unwinds the call, so stop() runs
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        hook.stop()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back after the call

        def own(signum, frame):  # a Ray worker's, say
            pass

        signal.signal(signal.SIGTERM, own)
        hook.start("task")
        assert signal.getsignal(signal.SIGTERM) is own
        hook.stop()
    finally:
        signal.signal(signal.SIGTERM, saved)
    # On a machine without the driver's folder (a remote worker): nothing captured, nothing raised.
    remote = ProfilerHook("cpu", str(tmp_path / "elsewhere"))
    remote.start("task")
    remote.stop()
    assert not (tmp_path / "elsewhere").exists()
    assert len(list(tmp_path.glob("task-p*.pyisession"))) == 2
    assert capsys.readouterr().err == ""


@pytest.mark.timeout(60)
def test_a_worker_that_left_no_profile_is_named_not_fatal(tmp_path):
    pytest.importorskip("pyinstrument")
    hook = ProfilerHook("cpu", str(tmp_path))
    hook.start("task")
    _work(10_000)
    hook.stop()
    lanes = [measure.Lane(0, "worker 0", os.getpid(), 0.0), measure.Lane(1, "worker 1", 999_999_999, 0.0),
             measure.Lane(-3, "actor Sampler#3", None, 0.0)]
    info = profile.collect_profiles("cpu", tmp_path, "t", lanes, cluster=True)
    assert info["missing"] == ["actor Sampler#3", "worker 1"]
    assert "share this machine's filesystem" in info["missing_note"]
    from poolx.harness import report

    text = report.terminal([], [], {"task": {**info, "kind": "cpu", "workers": 2, "wall": 1.0}}, tmp_path)
    assert "worker 1 left no profile file" in text


# -- the command line ---------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend, module, extra", [("dask", "distributed", "poolx[dask]"),
                                                    ("ray", "ray", "poolx[ray]")])
def test_a_missing_engine_is_a_one_line_error(backend, module, extra, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    code = cli.main(["profile", "pi", "--backend", backend, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"pip install '{extra}'" in err, err
    assert not (tmp_path / "o").exists()  # said before anything ran


@pytest.mark.timeout(60)
def test_address_and_start_method_are_checked_against_the_backend(capsys, tmp_path):
    assert cli.main(["profile", "pi", "--address", "tcp://127.0.0.1:8786", "--out", str(tmp_path)]) == 2
    assert "--address is the cluster to run on, for --backend dask or ray" in capsys.readouterr().err
    pytest.importorskip("distributed")
    args = ["profile", "pi", "--backend", "dask", "--start-method", "spawn", "--out", str(tmp_path)]
    assert cli.main(args) == 2
    assert "--start-method is for the processes backend" in capsys.readouterr().err


# -- end to end ---------------------------------------------------------------------------


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == marker:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def poolx_profile(*args: str, timeout: float, **env_vars: str) -> subprocess.CompletedProcess[str]:
    """``poolx profile ARGS`` in a subprocess; fails the test if anything it started
    (a local cluster, a Ray instance) outlives it."""
    marker = uuid.uuid4().hex
    env = dict(os.environ, CI="true", **env_vars, **{MARK: marker})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    for variable in ("POOLX_DASK_ADDRESS", "POOLX_RAY_ADDRESS", "RAY_ADDRESS"):
        env.pop(variable, None)  # a local cluster unless --address says otherwise
    proc = subprocess.Popen([sys.executable, "-m", "poolx", "profile", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n[killed after {timeout} s]"
    deadline = time.monotonic() + 30
    left = _marked(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _marked(marker)
    for straggler in left:
        try:
            straggler.kill()
        except psutil.Error:
            pass
    assert not left, f"processes left behind: {[' '.join(p.cmdline()[:3]) for p in left if p.is_running()]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.timeout(120)
def test_a_cluster_out_of_reach_is_a_one_line_error(tmp_path):
    pytest.importorskip("distributed")
    proc = poolx_profile("pi", "--backend", "dask", "--address", "tcp://127.0.0.1:1", "--modes", "task",
                         "--workers", "1", "--repeat", "1", "--size", "20000", "--out", str(tmp_path),
                         timeout=100, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="2s")
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert "poolx profile: error: cannot start the 'dask' backend" in proc.stderr
    assert "Traceback" not in proc.stderr


def _check_cpu_profiles(out: Path, modes: tuple[str, ...]) -> None:
    results = json.loads((out / "results.json").read_text())
    for mode in modes:
        info = results["profiles"][mode]
        assert info["missing"] == [], info
        run = next(r for r in results["runs"] if r["mode"] == mode and r["profile"] == "cpu")
        lanes = {lane["label"] for lane in run["lanes"]}
        by_label = {p["label"].rsplit(" (pid", 1)[0]: p for p in info["processes"]}
        assert profiles.UNATTRIBUTED not in by_label, by_label
        assert lanes <= set(by_label), (lanes, by_label)
        calls = {lane["label"]: lane["tasks"] for lane in run["lanes"]}
        for label, n in calls.items():  # one capture per call (and per actor constructor)
            assert by_label[label]["captures"] >= n, (label, by_label[label], n)
        if mode == "task":
            assert sum(by_label[label]["captures"] for label in lanes) == len(run["tasks"])
        assert "count_inside" in [h["function"] for h in info["hot"]], info["hot"]
        assert (out / "cpu" / f"{mode}.html").exists()


def _check_mem_profiles(out: Path, modes: tuple[str, ...]) -> None:
    results = json.loads((out / "results.json").read_text())
    for mode in modes:
        info = results["profiles"][mode]
        assert info["missing"] == [], info
        for p in info["processes"]:
            assert "error" not in p, p
            assert p["peak"] > 0 and (out / p["flamegraph"]).exists(), p
        labels = {p["label"] for p in info["processes"]}
        assert profiles.UNATTRIBUTED not in labels
        if mode == "actor":
            assert any(label.startswith("actor Sampler#") for label in labels), labels


@pytest.mark.timeout(300)
def test_profile_cpu_on_a_local_dask_cluster(tmp_path):
    pytest.importorskip("distributed")
    pytest.importorskip("pyinstrument")
    proc = poolx_profile("pi", "--backend", "dask", "--size", PI_SIZE, "--workers", "2", "--repeat", "1",
                         "--profile", "cpu", "--out", str(tmp_path), timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
    assert "backend dask" in proc.stdout and "cpu profile, task x2" in proc.stdout
    _check_cpu_profiles(tmp_path, ("task", "actor"))


# The tests on conftest's test clusters exist only where the engine is installed: asking
# for dask_address / ray_cluster starts that engine for the session.
if importlib.util.find_spec("distributed") is not None:

    @pytest.mark.timeout(300)
    def test_profile_mem_on_the_dask_test_cluster(tmp_path, dask_address):
        pytest.importorskip("memray")
        proc = poolx_profile("pi", "--backend", "dask", "--address", dask_address, "--size", PI_SIZE,
                             "--workers", "2", "--repeat", "1", "--modes", "task,actor", "--profile", "mem",
                             "--out", str(tmp_path), timeout=280)
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
        assert f"at {dask_address}" in proc.stdout
        _check_mem_profiles(tmp_path, ("task", "actor"))


@pytest.mark.timeout(400)
def test_profile_cpu_on_a_local_ray(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("pyinstrument")
    proc = poolx_profile("pi", "--backend", "ray", "--size", PI_SIZE, "--workers", "2", "--repeat", "1",
                         "--profile", "cpu", "--out", str(tmp_path), timeout=380)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
    assert "backend ray" in proc.stdout and "cpu profile, actor x2" in proc.stdout
    _check_cpu_profiles(tmp_path, ("task", "actor"))


if importlib.util.find_spec("ray") is not None:

    @pytest.mark.timeout(300)
    def test_profile_mem_on_the_ray_test_cluster(tmp_path, ray_cluster):
        pytest.importorskip("memray")
        address = ray_cluster.get_runtime_context().gcs_address
        proc = poolx_profile("pi", "--backend", "ray", "--address", address, "--size", PI_SIZE,
                             "--workers", "2", "--repeat", "1", "--modes", "task,actor", "--profile", "mem",
                             "--out", str(tmp_path), timeout=280)
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
        _check_mem_profiles(tmp_path, ("task", "actor"))
