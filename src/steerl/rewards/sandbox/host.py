"""Parent-side helpers: the child's environment and paths, and cleanup after it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys

#: The only environment variable a sandboxed child gets.
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
#: World-writable directories a child could otherwise leave files in.
SHARED_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


def _fallback_python() -> str | None:
    for cand in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return os.path.realpath(cand)
    return None


def _needed_paths(site_packages: bool) -> list[str]:
    exe = os.path.realpath(sys.executable)
    paths = {os.path.dirname(exe), sys.base_prefix, sys.base_exec_prefix}
    if site_packages:
        paths |= {sys.prefix, sys.exec_prefix, os.path.dirname(os.path.abspath(sys.executable))}
    return sorted(os.path.realpath(p) for p in paths if p)


def _sweep_shared_tmp(uid: int) -> None:
    """Delete what ``uid`` left in the world-writable directories (no mount namespace)."""
    for d in SHARED_TMP_DIRS:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    os.unlink(e.path)
            except OSError:
                pass


def _kill_uid(uid: int) -> None:
    """Kill every process of ``uid`` (atomically: ``kill(-1)`` from a process with that uid)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [os.path.realpath(sys.executable), "-I", "-S", "-c", "import os; os.kill(-1, 9)"],
            user=uid,
            group=uid,
            extra_groups=[],
            env={"PATH": SANDBOX_PATH},
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=5,
        )


def _killpg(pgid: int | None) -> None:
    if pgid is None or pgid <= 1:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
