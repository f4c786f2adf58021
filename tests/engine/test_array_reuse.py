"""A large argument sent again reuses its first copy, and is never served stale (issue 23, item 4).

The copy in shared memory is reused only while the kernel says no byte of
the array was written (poolx/_writes.py): every test here changes an array
between two sends in one way or another and checks that the worker received
the new bytes, byte for byte.
"""

from __future__ import annotations

import gc
import mmap
import os
import threading

import pytest

import poolx
from poolx import _reuse, _shm, _writes

np = pytest.importorskip("numpy")
import _reuse_tasks as T  # noqa: E402  (needs numpy)

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not _shm.AVAILABLE, reason="shared memory needs Linux memfd"),
    pytest.mark.skipif(not _writes.watcher.available(),
                       reason="write tracking needs userfaultfd's asynchronous write-protect (Linux 6.7)"),
]

N = (2 << 20) // 8  # float64 items of a 2 MiB array: above _shm.MIN_BYTES


@pytest.fixture
def copies(monkeypatch):
    """How many times the driver copied a buffer into shared memory."""
    made = []
    real = _shm._copy

    def counting(buf, mode):
        made.append(buf.raw().nbytes)
        return real(buf, mode)

    monkeypatch.setattr(_shm, "_copy", counting)
    return made


@pytest.fixture(params=["fork", "forkserver"])
def ex(request):
    with poolx.Executor(1, mp_context=request.param) as executor:
        yield executor


def received(ex, a):
    return ex.submit(T.checksum, a).result(timeout=60)


def test_the_same_unchanged_array_is_copied_once(ex, copies):
    a = np.random.default_rng(1).random(N)
    for _ in range(4):
        assert received(ex, a) == a.tobytes()
    assert copies == [a.nbytes]
    assert _shm.statistics()["reused_copies"] == 1


@pytest.mark.parametrize("where", [0, 1, N // 2, N - 1])
def test_an_array_changed_in_place_between_calls_travels_again(ex, copies, where):
    a = np.zeros(N)
    assert received(ex, a) == a.tobytes()
    a[where] = 7.0
    assert received(ex, a) == a.tobytes()
    a.view(np.uint8)[-1] = 1  # (the very last byte)
    assert received(ex, a) == a.tobytes()
    assert len(copies) == 3


def test_views_and_slices_see_changes_made_through_their_base(ex):
    base = np.arange(N, dtype=np.float64)
    views = [base[10:], base[: N // 2], base.reshape(2, -1), base.reshape(2, -1).T, base.view(np.int64)]
    for view in views:
        assert received(ex, view) == np.ascontiguousarray(view).tobytes()
    base[N // 2 + 3] = -7.0  # (whole pages: the kernel's word)
    for view in views:
        assert received(ex, view) == np.ascontiguousarray(view).tobytes()
    base[N - 1] = -5.0  # (the part pages at either end: compared)
    base[20] = -6.0
    for view in views:
        assert received(ex, view) == np.ascontiguousarray(view).tobytes()
    views[0][0] = 99.0  # (through a view: the base and the other views share it)
    assert received(ex, base) == base.tobytes()


def test_a_non_contiguous_array_is_always_sent_as_it_is(ex):
    base = np.arange(2 * N, dtype=np.float64)
    strided = base[::2]
    assert received(ex, strided) == strided.tobytes()
    base[0] = base[N + 2] = base[2 * N - 2] = -1.0
    assert received(ex, strided) == strided.tobytes()


def test_a_new_array_where_a_dead_one_was_is_not_served_the_old_copy(ex):
    seen = set()
    for i in range(6):
        a = np.full(N, float(i))
        seen.add(a.ctypes.data)
        assert received(ex, a) == a.tobytes()
        del a
        gc.collect()
    # The allocator gave the same memory (so the same address and size) to a new array
    # at least once, with other contents: what would have been served stale.
    assert len(seen) < 6
    assert _shm.statistics()["reused_copies"] <= 1


def test_an_array_changed_by_another_thread_travels_again(ex):
    a = np.zeros(N)
    assert received(ex, a) == a.tobytes()
    writer = threading.Thread(target=a.__setitem__, args=(N // 3, 3.0))
    writer.start()
    writer.join()
    assert received(ex, a) == a.tobytes()
    with open("/dev/zero", "rb") as zero:  # a system call writing into it (read(2))
        a[:] = 1.0
        assert received(ex, a) == a.tobytes()
        zero.readinto(memoryview(a).cast("B")[8 * (N // 2) : 8 * (N // 2 + 1)])
    assert received(ex, a) == a.tobytes()


def test_memory_the_kernel_cannot_watch_is_copied_every_time(ex, copies):
    shared = mmap.mmap(-1, N * 8)  # MAP_SHARED: another process could write it unseen
    a = np.frombuffer(shared, dtype=np.float64)
    assert received(ex, a) == a.tobytes()
    a[5] = 2.0
    assert received(ex, a) == a.tobytes()
    assert len(copies) == 2 and _shm.statistics()["reused_copies"] == 0
    del a
    shared.close()


def test_a_task_changing_its_argument_changes_neither_the_caller_nor_the_next_task(ex):
    a = np.ones(N)
    for _ in range(3):  # (one worker: its kept mapping of the segment is offered again each time)
        assert ex.submit(T.scribble, a).result(timeout=60) == N
        assert (a == 1.0).all()
    assert ex.submit(T.total, a).result(timeout=60) == N


def test_a_rerun_after_its_worker_died_sees_the_original(tmp_path):
    a = np.ones(N)
    with poolx.Executor(1, mp_context="forkserver", max_retries=1) as ex:
        assert ex.submit(T.total, a).result(timeout=60) == N  # (a copy kept, and a mapping in the worker)
        assert ex.submit(T.scribble_then_die, a, str(tmp_path / "died")).result(timeout=60) == N
        assert (a == 1.0).all()


def test_a_kept_copy_is_freed_when_its_array_dies_and_at_shutdown(copies):
    with poolx.Executor(1) as ex:
        a = np.ones(N)
        b = np.zeros(N)
        assert received(ex, a) == a.tobytes() and received(ex, b) == b.tobytes()
        assert _shm.statistics()["reused_copies"] == 2
        del a
        gc.collect()
        assert _shm.statistics()["reused_copies"] == 1
    stats = _shm.statistics()
    assert stats["reused_copies"] == 0 and stats["reused_bytes"] == 0
    assert _writes.watcher.uffd == -1  # (its fds closed with the last executor)


def test_put_of_the_same_unchanged_array_shares_one_copy(copies):
    with poolx.Executor(1) as ex:
        a = np.arange(N, dtype=np.float64)
        first, second = ex.put(a), ex.put(a)
        a[0] = 42.0
        third = ex.put(a)
        assert ex.submit(T.checksum, first).result(timeout=60) == np.arange(N, dtype=np.float64).tobytes()
        assert ex.submit(T.checksum, third).result(timeout=60) == a.tobytes()
        assert len(copies) == 2
        del first, second, third


def test_a_fresh_mapping_is_populated_at_once():
    """Receipt maps every page in one call (MADV_POPULATE_READ, Linux 5.14): no fault per page.

    shmem transparent huge pages are what the machine allows
    (/sys/kernel/mm/transparent_hugepage/shmem_enabled; "never" on CI), so the
    pages are 4 KiB and populating them is what can be done.
    """
    fd, mm = _shm.new_memfd("populate", N * 8)
    try:
        assert _writes.watcher.available()  # (PAGEMAP_SCAN: which pages are mapped)
        mm[:] = b"\x01" * len(mm)
        private = mmap.mmap(fd, len(mm), flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        array = np.frombuffer(private, dtype=np.uint8)
        lo = array.ctypes.data
        absent = _writes._PAGE_IS_PRESENT
        assert _writes.watcher._scan(lo, lo + len(mm), absent, absent) == 1  # (nothing mapped yet)
        _shm._populate(private)
        assert _writes.watcher._scan(lo, lo + len(mm), absent, absent) == 0
        assert not _writes.watcher.copied(lo, lo + len(mm))
        array[0] = 2  # a write copies that page: the mapping is no longer the segment's
        assert _writes.watcher.copied(lo, lo + len(mm))
        del array
        private.close()
    finally:
        mm.close()
        os.close(fd)
        _writes.watcher.reset()


def test_the_copies_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(_reuse, "REUSE_BYTES", 3 * N * 8)
    with poolx.Executor(1) as ex:
        arrays = [np.full(N, float(i)) for i in range(5)]
        for a in arrays:
            assert received(ex, a) == a.tobytes()
        assert _shm.statistics()["reused_copies"] <= 3
        for a in arrays:
            assert received(ex, a) == a.tobytes()


def test_without_the_kernels_help_every_send_is_a_fresh_copy(ex, copies, monkeypatch):
    # An older kernel, or a seccomp filter, refuses userfaultfd: nothing can say an
    # array is unchanged, so nothing is reused, and an edit always arrives.
    monkeypatch.setattr(_writes.watcher, "available", lambda: False)
    a = np.random.default_rng(7).random(N)
    assert received(ex, a) == a.tobytes()
    a[N // 2] += 1.0
    assert received(ex, a) == a.tobytes()
    assert received(ex, a) == a.tobytes()
    assert copies == [a.nbytes] * 3
