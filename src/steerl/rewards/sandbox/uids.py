"""The unprivileged uids handed to sandboxed children when steerl runs as root.

Each concurrent sandbox gets its own uid (and gid), from :data:`UID_BASE` up, reserved across
processes with a ``flock``-ed lock file in a private directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
import threading

#: First uid (and gid) handed to sandboxed children when running as root.
UID_BASE = 1_500_000_000
_UID_RANGE = 1 << 16


class _UidPool:
    """Per-process pool of sandbox uids, each reserved across processes with ``flock``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._held: dict[int, int] = {}  # uid -> lock fd (kept open for the process lifetime)
        self._dir: str | None = None
        self._pid = os.getpid()

    def _lock_dir(self) -> str:
        if self._dir is None:
            for base in ("/run", tempfile.gettempdir()):
                d = os.path.join(base, "steerl-sandbox-uids")
                with contextlib.suppress(OSError):
                    os.mkdir(d, 0o700)
                try:
                    st = os.lstat(d)
                except OSError:
                    continue
                private = st.st_uid == os.geteuid() and not st.st_mode & 0o077
                if stat.S_ISDIR(st.st_mode) and private:
                    self._dir = d
                    break
            else:
                raise OSError("no private directory for the sandbox uid locks")
        return self._dir

    def acquire(self) -> int:
        with self._lock:
            if self._pid != os.getpid():  # forked: locks are not ours
                self._free, self._held, self._pid = [], {}, os.getpid()
            if self._free:
                return self._free.pop()
            d = self._lock_dir()
            start = (os.getpid() * 64) % _UID_RANGE
            for k in range(_UID_RANGE):
                uid = UID_BASE + (start + k) % _UID_RANGE
                if uid in self._held:
                    continue
                fd = os.open(os.path.join(d, str(uid)), os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                if _process_count(uid):  # leftovers (e.g. unreaped zombies) count for NPROC
                    os.close(fd)
                    continue
                self._held[uid] = fd
                return uid
            raise OSError("all sandbox uids are in use")

    def release(self, uid: int) -> None:
        with self._lock:
            if uid in self._held:
                self._free.append(uid)


_UIDS = _UidPool()


def _process_count(uid: int) -> int:
    n = 0
    with contextlib.suppress(OSError):
        for e in os.scandir("/proc"):
            if e.name.isdigit():
                with contextlib.suppress(OSError):
                    n += os.stat(e.path).st_uid == uid
    return n
