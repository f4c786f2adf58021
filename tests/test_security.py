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


@pytest.mark.parametrize("how", ["huge frame", "too many frames", "not a pickle"])
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
