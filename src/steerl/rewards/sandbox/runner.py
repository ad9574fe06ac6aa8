"""Parent side: :func:`run_python` starts the launcher and collects a :class:`SandboxResult`.

See :mod:`steerl.rewards.sandbox` for what the child gets and what it cannot do.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from steerl.rewards.sandbox.child import BOOT, LAUNCHER
from steerl.rewards.sandbox.host import (
    SANDBOX_PATH,
    SHARED_TMP_DIRS,
    _fallback_python,
    _kill_uid,
    _killpg,
    _needed_paths,
    _sweep_shared_tmp,
)
from steerl.rewards.sandbox.result import SandboxResult
from steerl.rewards.sandbox.uids import _UIDS, _process_count

#: Seconds past ``timeout`` after which the caller kills the launcher itself.
_BACKSTOP_S = 3.0


def _decode(b: bytes | bytearray) -> str:
    return bytes(b).decode("utf-8", errors="replace")


def run_python(
    code: str,
    *,
    stdin: str = "",
    timeout: float = 2.0,
    cpu_seconds: float | None = None,
    memory_mb: int = 512,
    max_processes: int = 16,
    max_file_mb: int = 16,
    max_open_files: int = 64,
    max_output_bytes: int = 1 << 16,
    files: dict[str, str] | None = None,
    site_packages: bool = False,
    tmp_mb: int = 64,
    namespaces: bool = True,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh sandboxed interpreter; see the module docstring.

    ``stdin`` is written to the child's standard input (then closed); ``files`` are extra
    files (name -> text) placed next to ``main.py``. ``timeout`` is wall-clock seconds;
    ``cpu_seconds`` defaults to ``ceil(timeout) + 1``. ``namespaces=False`` skips every
    ``unshare`` (the fallbacks alone; for tests and debugging). Never raises for the child's
    behaviour.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    files = dict(files or {})
    files["main.py"] = code
    for name in files:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"file name {name!r} must be a plain name")
    root = os.geteuid() == 0
    uid = _UIDS.acquire() if root else None
    cpu = int(math.ceil(cpu_seconds if cpu_seconds is not None else timeout + 1))
    host_dir = tempfile.mkdtemp(prefix="steerl-sandbox-")
    host_work = os.path.join(host_dir, "work")
    os.mkdir(host_work, 0o700)
    os.chmod(host_dir, 0o711)  # the sandbox uid may enter host_work (without a mount namespace)
    cfg = {
        "uid": uid or 0,
        "namespaces": bool(namespaces),
        "python": os.path.realpath(sys.executable) if not site_packages else sys.executable,
        "fallback_python": None if site_packages else _fallback_python(),
        "needed": _needed_paths(site_packages),
        "tmp_dirs": list(SHARED_TMP_DIRS),
        "tmp_mb": int(tmp_mb),
        "host_work": host_work,
        "files": files,
        "site": bool(site_packages),
        "boot": BOOT,
        "timeout": float(timeout),
        "path": SANDBOX_PATH,
        "limits": {
            "as": int(memory_mb) << 20,
            "fsize": int(max_file_mb) << 20,
            "nofile": int(max_open_files),
            "nproc": int(max_processes) + (0 if root else _process_count(os.getuid())),
            "cpu": max(1, cpu),
        },
    }
    cfg_path = os.path.join(host_dir, "config.json")
    with open(os.open(cfg_path, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    try:
        if root:
            _sweep_shared_tmp(uid)  # a crashed earlier holder of this uid
        return _run(cfg_path, cfg, stdin, timeout, max_output_bytes)
    finally:
        if root and uid is not None:
            _sweep_shared_tmp(uid)
        shutil.rmtree(host_dir, ignore_errors=True)
        if uid is not None:
            _UIDS.release(uid)


def _run(
    cfg_path: str, cfg: dict[str, Any], stdin: str, timeout: float, max_output: int
) -> SandboxResult:
    t0 = time.monotonic()
    status_r, status_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [
                os.path.realpath(sys.executable),
                "-I",
                "-S",
                "-B",
                "-c",
                LAUNCHER,
                cfg_path,
                str(status_w),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w,),
            start_new_session=True,
            env={"PATH": SANDBOX_PATH},
            cwd="/",
        )
    except OSError as e:
        os.close(status_r)
        os.close(status_w)
        return SandboxResult("error", None, "", f"could not start the sandbox: {e}", 0.0)
    os.close(status_w)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    out, err, status_buf = bytearray(), bytearray(), bytearray()
    pending = memoryview(stdin.encode())
    sel = selectors.DefaultSelector()
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE, "in")
    else:
        proc.stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    sel.register(status_r, selectors.EVENT_READ, "status")
    deadline = t0 + timeout + _BACKSTOP_S  # the launcher enforces `timeout` itself
    backstop = False
    grace_until: float | None = None
    while sel.get_map():
        now = time.monotonic()
        if not backstop and now >= deadline:
            backstop = True
            _killpg(proc.pid)
            _killpg(_child_pid(status_buf))
            grace_until = now + 2.0
        if grace_until is not None and now >= grace_until:
            break
        limit = (grace_until if grace_until is not None else deadline) - now
        for key, _ in sel.select(timeout=max(0.0, limit)):
            fd = key.fileobj if isinstance(key.fileobj, int) else key.fileobj.fileno()
            if key.data == "in":
                try:
                    pending = pending[os.write(fd, pending[:65536]) :]
                except BlockingIOError:
                    continue
                except OSError:  # the child closed its stdin
                    pending = pending[:0]
                if not pending:
                    sel.unregister(key.fileobj)
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            if key.data == "out":
                if len(out) < max_output:
                    out += chunk[: max_output - len(out)]
            elif key.data == "err":
                err += chunk
                if len(err) > 2 * max_output:
                    del err[: len(err) - max_output]
            else:
                status_buf += chunk
    sel.close()
    with contextlib.suppress(OSError):
        proc.stdin.close()
    _killpg(proc.pid)  # anything left in the group (before reaping: the pgid stays ours)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for f in (proc.stdout, proc.stderr):
        f.close()
    os.close(status_r)
    duration = time.monotonic() - t0

    info: dict[str, Any] = {}
    notes: list[str] = []
    for line in status_buf.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            if "warning" in msg or "error" in msg:
                notes.append(msg.get("error") or msg.get("warning"))
            info.update(msg)
    iso = dict(info.get("isolation") or {})
    iso["socket_prelude"] = not iso.get("netns", False)
    uid = cfg["uid"] if iso.get("uid") else None
    timed_out = backstop or bool(info.get("timed_out"))
    if backstop and uid is not None and not iso.get("pidns"):
        _kill_uid(uid)  # the launcher was killed before its own sweep

    stderr = _decode(err[-max_output:])
    if notes:
        stderr = (stderr + "\n" if stderr else "") + "\n".join(f"[sandbox] {n}" for n in notes)
    wait = info.get("wait")
    returncode: int | None = None
    if wait is not None:
        returncode = os.waitstatus_to_exitcode(wait)
    if timed_out:
        status = "timeout"
    elif returncode is None:
        status = "error"
    elif returncode == 0:
        status = "ok"
    elif returncode == -signal.SIGXCPU or (
        returncode == -signal.SIGKILL and info.get("cpu", 0.0) >= cfg["limits"]["cpu"] - 0.05
    ):
        status = "timeout"  # the CPU limit: SIGXCPU, then SIGKILL one second later
    elif "MemoryError" in stderr[-2000:]:
        status = "memory"
    else:
        status = "error"
    return SandboxResult(
        status=status,
        returncode=returncode,
        stdout=_decode(out),
        stderr=stderr,
        duration=duration,
        uid=uid,
        isolation=iso,
    )


def _child_pid(status_buf: bytes | bytearray) -> int | None:
    for line in bytes(status_buf).decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            msg = json.loads(line)
            if isinstance(msg.get("child"), int):
                return msg["child"]
    return None


_CAPS: dict[str, bool] | None = None
_CAPS_LOCK = threading.Lock()


def capabilities() -> dict[str, bool]:
    """The isolation layers this machine grants a sandbox (probed once per process)."""
    global _CAPS
    with _CAPS_LOCK:
        if _CAPS is None:
            res = run_python("pass", timeout=10)
            _CAPS = dict(res.isolation)
            _CAPS["works"] = res.passed
        return dict(_CAPS)
