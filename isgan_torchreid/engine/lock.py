"""One trainer per OUTPUT_DIR: an advisory lock (``flock``) on ``OUTPUT_DIR/.lock`` for the whole run.

The kernel releases the lock when its process ends, however it ends (``kill -9`` included), so no stale lock
can outlive a trainer. The file holds the holder's ``pid host`` for the message a second trainer gets. Under
torchrun the process of rank 0 takes it for the group: when it cannot, it stops with that message and torchrun
ends the other ranks. Read-only tools (test.py, visualize.py, benchmark.py) do not take it.
"""
import contextlib
import fcntl
import os
import socket

from ..errors import ISGANError

__all__ = ["LOCK_FILE", "output_dir_lock"]

LOCK_FILE = ".lock"


def _holder(path):
    try:
        with open(path) as f:
            pid, host = (f.read().split() + ["?", "?"])[:2]
    except OSError:
        pid, host = "?", "?"
    return pid, host


def _acquire(path):
    """An open descriptor of ``path`` holding its exclusive lock; ISGANError when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid, host = _holder(path)
            raise ISGANError(f"{os.path.dirname(path)} is in use by another trainer (pid {pid} on {host}); wait "
                             f"for it to end, or set another OUTPUT_DIR") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # its holder removed it between our open and our lock
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a file its holder has just removed: lock the current one


@contextlib.contextmanager
def output_dir_lock(output_dir, enabled=True):
    """Hold ``OUTPUT_DIR/.lock`` within the block (a no-op when not ``enabled``, e.g. on ranks other than 0);
    the file is removed when the block ends."""
    if not enabled:
        yield
        return
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_FILE)
    fd = _acquire(path)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while locked: a trainer that opened it before retries on the new file
        os.close(fd)
