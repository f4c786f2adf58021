"""Local IPC security (research/reliability.md section 4): no address another process could
connect to, and no named shared memory."""

from __future__ import annotations

import os
import sys
import time

import pytest
from conftest import _CLUSTER_ROOTS

import poolx

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc"),
]

_LISTENING = 0x00010000  # __SO_ACCEPTCON in /proc/net/unix's Flags column


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _unix_sockets() -> dict[str, tuple[int, str]]:
    """inode -> (flags, path) of every AF_UNIX socket in this network namespace."""
    out = {}
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            out[parts[6]] = (int(parts[3], 16), parts[7] if len(parts) > 7 else "")
    return out


def _listening_inet_inodes() -> set[str]:
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" or name.endswith(("udp", "udp6")):  # TCP LISTEN, or any UDP socket
                        inodes.add(parts[9])
        except OSError:
            continue
    return inodes


class Tracker:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1
        return os.getpid()


def _worker_pid(_):
    time.sleep(0.05)
    return os.getpid()


def test_no_process_of_an_executor_has_an_address_to_connect_to():
    with poolx.Executor(2) as ex:
        pids = set(ex.map(_worker_pid, range(8)))
        tracker = ex.actor(Tracker)
        pids.add(tracker.add.remote().result(timeout=30))
        if not _CLUSTER_ROOTS:  # (the test clusters' clients listen in the driver: Ray's, Dask's)
            pids.add(os.getpid())
        unix = _unix_sockets()
        inet = _listening_inet_inodes()
        for pid in pids:
            for inode in _socket_inodes(pid):
                assert inode not in inet, f"process {pid} has an inet socket listening or bound"
                flags, path = unix.get(inode, (0, ""))
                # Channels are socketpairs: no name, abstract (@...) or on disk, and not listening.
                assert not path, f"process {pid} has a named AF_UNIX socket {path!r}"
                assert not flags & _LISTENING, f"process {pid} has a listening AF_UNIX socket"


def test_the_forkservers_socket_is_on_disk_in_a_private_directory():
    """poolx's default start method uses the stdlib forkserver: its address is a path in a 0700 directory,
    never the abstract namespace (CVE-2022-42919)."""
    with poolx.Executor(1, mp_context="forkserver") as ex:
        ex.submit(os.getpid).result(timeout=30)
        from multiprocessing import forkserver

        address = forkserver._forkserver._forkserver_address
        assert isinstance(address, str) and not address.startswith("\0"), address
        assert os.stat(os.path.dirname(address)).st_mode & 0o077 == 0


def test_shared_memory_has_no_name():
    np = pytest.importorskip("numpy")
    from poolx import _shm

    if not _shm.AVAILABLE:
        pytest.skip("no memfd here")
    before = set(os.listdir("/dev/shm"))
    with poolx.Executor(1) as ex:
        ref = ex.put(np.ones(1 << 18))
        assert ex.submit(float, ref.result().sum()).result(timeout=30) == float(1 << 18)
        # The segment is an anonymous memfd: reachable only through a passed fd (or this
        # user's /proc/<pid>/fd), never by a name in /dev/shm.
        links = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                 if os.path.exists(f"/proc/self/fd/{fd}")]
        assert any(link.startswith("/memfd:poolx") for link in links)
    new = {n for n in set(os.listdir("/dev/shm")) - before if not n.startswith(("joblib_", "loky-"))}
    assert not new


@pytest.mark.parametrize("how", ["huge frame", "too many frames", "not a pickle", "client channel"])
def test_garbage_on_a_workers_channel_kills_that_worker_only(how):
    # A task can write to the socket its worker talks to the driver through.
    # The driver checks every header before it allocates anything and drops a
    # channel that carries something else than poolx messages, never trying to
    # resynchronise: the worker is killed, its task fails, the executor goes on.
    from _fault_tasks import corrupt_own_channel

    with poolx.Executor(1) as ex:
        with pytest.raises(poolx.WorkerDiedError, match="SIGKILL"):
            ex.submit(corrupt_own_channel, how).result(timeout=30)
        assert ex.submit(pow, 2, 5).result(timeout=30) == 32


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("how", ["100 MB frame", "small frame"])
def test_a_forged_frame_header_costs_its_worker_and_no_memory(start_method, how, tmp_path, monkeypatch,
                                                              caplog):
    # Issue 19, item 4: a task writes a plausible frame header (and a few bytes
    # of the frame) to its worker's channel, then returns.  The frame swallows
    # the task's result and waits for the rest.  The driver used to allocate the
    # claimed 100 MB at once and wait for ever: that worker and every task after
    # it hung.  Now the buffer grows only with what arrives, and a message that
    # stops arriving for FRAME_STALL_SECONDS gets its worker killed and replaced.
    from _fault_tasks import forge_frame_header

    from poolx.backends.processes import _channel

    monkeypatch.setattr(_channel, "FRAME_STALL_SECONDS", 1.0)
    with poolx.Executor(1, mp_context=start_method) as ex:
        assert ex.submit(pow, 2, 5).result(timeout=30) == 32
        base = peak = _rss()
        forged = ex.submit(forge_frame_header, how, str(tmp_path / "forged"))
        deadline = time.monotonic() + 30
        while not forged.done() and time.monotonic() < deadline:
            peak = max(peak, _rss())
            time.sleep(0.02)
        assert forged.done(), "the forged frame hung its worker"
        # Its result was swallowed by the forged frame: it ran again on the new
        # worker, or failed saying why its worker was killed.
        error = forged.exception()
        assert (error is None and forged.result() == "again") or (
            isinstance(error, poolx.WorkerDiedError) and "claiming" in str(error)), error
        assert [ex.submit(pow, 2, i).result(timeout=30) for i in range(4)] == [1, 2, 4, 8]
    claim = 100_000_000 if how == "100 MB frame" else 4096
    assert f"sent a message header claiming {claim} bytes in 1 frame, then nothing for" in caplog.text
    assert peak - base < 50 << 20, f"the driver grew by {(peak - base) >> 20} MiB"


def test_a_worker_poolx_killed_for_its_channel_is_not_blamed_on_the_oom_killer():
    # Issue 19, item 10: poolx sent the SIGKILL; the error must say so, not guess.
    from _fault_tasks import corrupt_own_channel

    with poolx.Executor(1) as ex:
        with pytest.raises(poolx.WorkerDiedError, match="poolx killed it with SIGKILL") as info:
            ex.submit(corrupt_own_channel, "huge frame").result(timeout=30)
        assert "out-of-memory" not in str(info.value)
        assert f"a frame header claiming {1 << 63} bytes" in str(info.value)


def test_an_actor_poolx_killed_for_its_channel_says_so(start_method):
    from _fault_tasks import ChannelWriter

    with poolx.Executor(1, mp_context=start_method) as ex:
        actor = ex.actor(ChannelWriter)
        with pytest.raises(poolx.ActorDiedError, match="poolx killed it with SIGKILL") as info:
            actor.corrupt.remote().result(timeout=30)
        assert "out-of-memory" not in str(info.value)
        assert f"a frame header claiming {1 << 50} bytes" in str(info.value)
        assert ex.submit(pow, 2, 5).result(timeout=30) == 32


def test_a_stalled_frame_on_an_actors_or_a_client_channel_is_dropped(monkeypatch, caplog, tmp_path):
    # The same deadline on the other channels a child can write to: an actor's
    # (its call fails saying why the actor was killed) and a task's client
    # channel (the channel actor handles use: its worker is killed and replaced).
    from _fault_tasks import ChannelWriter, forge_frame_header

    from poolx.backends.processes import _channel

    monkeypatch.setattr(_channel, "FRAME_STALL_SECONDS", 1.0)
    with poolx.Executor(1) as ex:
        actor = ex.actor(ChannelWriter)
        with pytest.raises(poolx.ActorDiedError, match="poolx killed it with SIGKILL") as info:
            actor.forge.remote().result(timeout=30)
        assert "a message header claiming 100000000 bytes in 1 frame, then nothing for" in str(info.value)

        marker = str(tmp_path / "forged")
        assert ex.submit(forge_frame_header, "client channel", marker).result(timeout=30) == "forged"
        deadline = time.monotonic() + 30
        while "on its client channel" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "sent on its client channel a message header claiming 4096 bytes" in caplog.text
        assert [ex.submit(pow, 2, i).result(timeout=30) for i in range(4)] == [1, 2, 4, 8]
