"""The "poolx" joblib backend keeps joblib's memory-mapping contract, as loky does.

An array argument over ``max_nbytes`` is written once to ``temp_folder`` and
reaches the tasks as an ``np.memmap`` (``mmap_mode``), however many batches
pass it; an ``np.memmap`` argument travels as its file (tasks can write into
it); a temporary memmap returned by a task comes back as a regular array; the
folder is one per ``Parallel`` instance and is gone after the call (after the
``with`` block for a managed one).  joblib's own tests of this run in
tests/conformance/test_joblib_conformance.py; these check the rest, and the
nested-parallelism warnings loky gives.
"""

from __future__ import annotations

import os
import threading
import warnings

import pytest

joblib = pytest.importorskip("joblib")
np = pytest.importorskip("numpy")

from joblib import Parallel, delayed, parallel_config  # noqa: E402

import poolx  # noqa: E402
import poolx.joblib  # noqa: E402

pytestmark = pytest.mark.timeout(120)

# 2 MB: over joblib's default max_nbytes (1 MB).
BIG = 250_000


@pytest.fixture(autouse=True)
def stop_warm_workers():
    yield
    poolx.joblib.shutdown_workers()


def seen(a):
    """What the task received: its type, file, mode, whether it may write, and a checksum."""
    return (type(a).__name__, getattr(a, "filename", None), getattr(a, "mode", None),
            bool(a.flags.writeable), float(a.sum()))


def write_row(m, i):
    m[i] = i + 1
    return i


def give_back(a):
    return type(a).__name__, a


def fail_with_array(a, i):
    if i == 3:
        raise ValueError(f"task 3 fails with a {type(a).__name__}")
    return float(a[0])


def nested_multiprocessing(_):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = Parallel(n_jobs=2, backend="multiprocessing")(delayed(abs)(-i) for i in range(3))
    return out, [str(w.message) for w in caught]


def test_large_array_is_written_once_and_reaches_every_batch_as_a_memmap(tmp_path, start_method):
    x = np.arange(BIG, dtype=np.float64)
    with parallel_config(backend="poolx", n_jobs=2, mp_context=start_method, temp_folder=str(tmp_path)):
        out = Parallel(batch_size=1)(delayed(seen)(x) for _ in range(8))
    assert {kind for kind, *_ in out} == {"memmap"}
    files = {filename for _, filename, *_ in out}
    assert len(files) == 1, f"the array was written {len(files)} times: {files}"
    assert os.path.dirname(files.pop()).startswith(str(tmp_path))
    assert {mode for _, _, mode, *_ in out} == {"r"}  # joblib's default mmap_mode
    assert not any(writeable for *_, writeable, _ in out)
    assert {total for *_, total in out} == {float(x.sum())}
    assert os.listdir(tmp_path) == []  # the call's folder is gone


def test_small_arrays_and_max_nbytes_none_are_sent_as_arrays():
    x = np.arange(BIG, dtype=np.float64)
    with parallel_config(backend="poolx", n_jobs=2):
        assert Parallel()(delayed(seen)(np.arange(10.0)) for _ in range(2))[0][0] == "ndarray"
        assert Parallel(max_nbytes=None)(delayed(seen)(x) for _ in range(2))[0][0] == "ndarray"
        # a lower threshold memory-maps smaller arrays
        assert Parallel(max_nbytes=10)(delayed(seen)(np.arange(10.0)) for _ in range(2))[0][0] == "memmap"


def test_mmap_mode_is_honoured(tmp_path):
    x = np.arange(BIG, dtype=np.float64)
    out = Parallel(n_jobs=2, backend="poolx", mmap_mode="r+", temp_folder=str(tmp_path))(
        delayed(seen)(x) for _ in range(2))
    assert [(kind, mode, writeable) for kind, _, mode, writeable, _ in out] == [("memmap", "r+", True)] * 2


def test_tasks_write_into_a_memmap_argument(tmp_path):
    """joblib's documented way to share results: a mode="w+" memmap the tasks write into."""
    m = np.memmap(tmp_path / "out.dat", dtype=np.float64, shape=(20,), mode="w+")
    assert Parallel(n_jobs=2, backend="poolx")(delayed(write_row)(m, i) for i in range(20)) == list(range(20))
    assert m.tolist() == [float(i + 1) for i in range(20)]
    del m


def test_a_returned_temporary_memmap_is_a_regular_array(tmp_path):
    x = np.arange(BIG, dtype=np.float64)
    parallel = Parallel(n_jobs=2, backend="poolx", temp_folder=str(tmp_path))
    out = parallel(delayed(give_back)(x) for _ in range(2))
    for kind, a in out:
        assert kind == "memmap"  # in the task
        assert type(a) is np.ndarray and not isinstance(a.base, np.memmap)
        np.testing.assert_array_equal(a, x)
    assert os.listdir(tmp_path) == []


def test_managed_parallel_shares_its_folder_until_the_with_block_ends(tmp_path):
    x = np.arange(BIG, dtype=np.float64)
    with Parallel(n_jobs=2, backend="poolx", temp_folder=str(tmp_path)) as parallel:
        first = parallel(delayed(seen)(x) for _ in range(2))
        assert os.listdir(tmp_path) != []  # kept between the calls of the block
        second = parallel(delayed(seen)(x) for _ in range(2))
    assert {f for _, f, *_ in first} == {f for _, f, *_ in second}  # written once for the block
    assert os.listdir(tmp_path) == []
    other = Parallel(n_jobs=2, backend="poolx", temp_folder=str(tmp_path))(delayed(seen)(x) for _ in range(2))
    assert os.path.dirname(other[0][1]) != os.path.dirname(first[0][1])  # one folder per Parallel
    assert os.listdir(tmp_path) == []


def test_folder_is_removed_after_a_failed_call(tmp_path):
    x = np.arange(BIG, dtype=np.float64)
    with pytest.raises(ValueError, match="task 3 fails with a memmap"):
        Parallel(n_jobs=2, backend="poolx", temp_folder=str(tmp_path), batch_size=1)(
            delayed(fail_with_array)(x, i) for i in range(8))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("backend", ["processes", "threads"])
def test_given_executor(backend, tmp_path):
    """On a given process executor arrays are memory-mapped; on threads they are not copied at all."""
    x = np.arange(BIG, dtype=np.float64)
    with poolx.Executor(2, backend=backend) as ex, \
            parallel_config(backend="poolx", executor=ex, temp_folder=str(tmp_path)):
        out = Parallel()(delayed(seen)(x) for _ in range(3))
    assert {kind for kind, *_ in out} == {"memmap" if backend == "processes" else "ndarray"}
    assert os.listdir(tmp_path) == []


# -- nested parallelism: the warnings loky gives ---------------------------------


def test_poolx_under_joblib_threads_warns_and_runs_in_the_thread():
    def inner(_):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = Parallel(n_jobs=2, backend="poolx")(delayed(os.getpid)() for _ in range(2))
        return out, [str(w.message) for w in caught], threading.current_thread().name

    for out, messages, _ in Parallel(n_jobs=2, backend="threading")(delayed(inner)(i) for i in range(2)):
        assert out == [os.getpid()] * 2
        assert messages == ["poolx-backed parallel loops cannot be nested below threads, setting n_jobs=1"]


def test_multiprocessing_backend_in_a_poolx_worker_warns():
    results = Parallel(n_jobs=2, backend="poolx")(delayed(nested_multiprocessing)(i) for i in range(2))
    for out, messages in results:
        assert out == [0, 1, 2]
        assert len(messages) == 1 and "Multiprocessing-backed parallel loops cannot be nested" in messages[0]


def lock_of(_):
    return threading.Lock()


def test_unpicklable_values_are_still_named():
    """The reducers step aside when something cannot be pickled: poolx's error names it."""
    with pytest.raises(poolx.SerializationError, match=r"_thread\.lock, item 0 of a"):
        Parallel(n_jobs=2, backend="poolx")(delayed(lock_of)(i) for i in range(2))
    with pytest.raises(poolx.SerializationError, match=r"cannot pickle '_thread\.lock'"):
        Parallel(n_jobs=2, backend="poolx")(delayed(seen)(np.ones(BIG), threading.Lock()) for _ in range(2))
