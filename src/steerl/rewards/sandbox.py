"""Run untrusted Python (model-written code) in a separate, limited process.

:func:`run_python` starts a fresh interpreter per call and returns a :class:`SandboxResult`
(``status``: ``ok`` | ``error`` | ``timeout`` | ``memory``; ``passed`` is ``status == "ok"``).
What the child gets, and what it cannot do:

- **Time.** A wall-clock ``timeout``: the whole process group is killed (``SIGKILL``), then
  every process left with the sandbox's uid or in its PID namespace. ``RLIMIT_CPU`` bounds
  CPU seconds as well.
- **Memory / files / processes.** ``RLIMIT_AS`` (``memory_mb``), ``RLIMIT_FSIZE``,
  ``RLIMIT_NOFILE``, ``RLIMIT_NPROC`` (``max_processes``), no core files.
- **Identity.** When steerl runs as root, the child drops to an unprivileged uid/gid of its
  own (one per concurrent sandbox, from :data:`UID_BASE` up, reserved with a lock file), so
  ``RLIMIT_NPROC`` is enforced (it is not for root), it cannot signal other processes, and it
  cannot read root-only files or write outside world-writable places.
- **Namespaces** (each applied where the kernel permits ``unshare``; a user namespace is
  tried when not root): a new *network* namespace (no interface but a downed loopback: no
  connection anywhere, 127.0.0.1 included), *mount* namespace (fresh private ``tmpfs`` over
  ``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock``, gone when the child ends; a directory
  the unprivileged uid cannot enter, such as ``/root`` holding the interpreter, is replaced
  by an empty ``tmpfs`` with only the interpreter bound back read-only), *PID* namespace
  (own ``/proc``; every descendant dies with it) and *IPC* namespace.
- **Fallbacks.** Without a network namespace, a prelude replaces ``socket``'s constructors
  with a function that raises (best effort: ``ctypes`` or a subprocess could still reach the
  network). Without a mount namespace, the child works in a fresh temporary directory and
  whatever its uid left in the world-writable directories is deleted afterwards. Without a
  PID namespace, leftovers are killed by uid. :attr:`SandboxResult.isolation` says which
  layers were in force for a call; :func:`capabilities` probes once.
- **Environment.** Only ``PATH=/usr/local/bin:/usr/bin:/bin``; the interpreter runs with
  ``-I -S -B`` (no ``PYTHON*`` variables, no site-packages unless ``site_packages=True``,
  no ``.pyc`` writes); the working directory is a fresh empty directory, removed afterwards.

The child still shares the kernel, CPU time and the machine's memory pressure with the
caller; use a VM or container boundary for adversarial workloads beyond RL reward checking.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

#: First uid (and gid) handed to sandboxed children when running as root.
UID_BASE = 1_500_000_000
_UID_RANGE = 1 << 16
#: The only environment variable a sandboxed child gets.
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
#: World-writable directories a child could otherwise leave files in.
SHARED_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")

STATUSES = ("ok", "error", "timeout", "memory")
#: Seconds past ``timeout`` after which the caller kills the launcher itself.
_BACKSTOP_S = 3.0


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run.

    ``status``: ``ok`` (exit code 0), ``error`` (non-zero exit, a crash, or the sandbox could
    not start), ``timeout`` (wall-clock timeout or CPU limit) or ``memory`` (``MemoryError``
    or killed by the kernel's OOM handling). ``stdout`` is the head of the output (at most
    ``max_output_bytes``), ``stderr`` its tail. ``isolation`` names the layers in force.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration: float
    uid: int | None = None
    isolation: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "ok"


# --------------------------------------------------------------------------- uids
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


# --------------------------------------------------------------------------- child side
# Runs as `python -I -S -B -c _LAUNCHER <config.json> <status fd>` in a new session (L0). It sets
# up the namespaces, forks L1 (PID 1 of the new PID namespace, a reaper) which forks L2: limits,
# drop to the sandbox uid, exec the interpreter on main.py. L1 reports L2's wait status on the
# status pipe, then kills every process left with the sandbox uid. Nothing here prints to stdout.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys, time

cfg_path, sfd = sys.argv[1], int(sys.argv[2])
with open(cfg_path) as f:
    cfg = json.load(f)
os.set_inheritable(sfd, False)  # closed in the exec'd interpreter


def report(**kw):
    try:
        os.write(sfd, (json.dumps(kw) + "\n").encode())
    except OSError:
        pass


libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_char_p)
libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
NEWNS, NEWUSER, NEWPID, NEWNET, NEWIPC = 0x20000, 0x10000000, 0x20000000, 0x40000000, 0x8000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18


def mount(src, tgt, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(tgt), enc(fstype), flags, enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), tgt)


def unshare(flags):
    return libc.unshare(flags) == 0


iso = {"uid": False, "netns": False, "mountns": False, "pidns": False, "ipcns": False}
root = os.geteuid() == 0
uid = cfg["uid"] if root else os.geteuid()
gid = cfg["uid"] if root else os.getegid()
if not root and cfg["namespaces"]:
    real_uid, real_gid = os.geteuid(), os.getegid()
    if unshare(NEWUSER):
        try:
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {real_uid} 1"),
                               ("gid_map", f"0 {real_gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            iso["userns"] = True
        except OSError as e:
            report(warning=f"user namespace maps: {e}")
ns = cfg["namespaces"]
iso["netns"] = ns and unshare(NEWNET)
iso["ipcns"] = ns and unshare(NEWIPC)


def accessible(path, uid):
    # Can `uid` (not the owner, in no group) traverse to `path`? -> first blocking dir or None.
    cur = "/"
    for part in [p for p in path.split("/") if p]:
        st = os.stat(cur)
        if st.st_uid != uid and not st.st_mode & 0o001:
            return cur
        cur = os.path.join(cur, part)
    st = os.stat(cur)
    if st.st_uid != uid and not st.st_mode & 0o005:
        return cur
    return None


def under(path, top):
    return path == top or path.startswith(top.rstrip("/") + "/")


python = cfg["python"]
work = cfg["host_work"]
orig_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY)
if ns and unshare(NEWNS):
    try:
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        covered = [d for d in cfg["tmp_dirs"] if os.path.isdir(d) and not os.path.islink(d)]
        blocked = set()
        for p in cfg["needed"]:
            b = accessible(p, uid) if root else None
            if b is not None and b != "/":
                blocked.add(b)
        needed = [p for p in cfg["needed"]
                  if any(under(p, c) for c in covered) or any(under(p, b) for b in blocked)]
        needed = [p for p in needed if not any(q != p and under(p, q) for q in needed)]
        fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in needed}
        for d in covered:
            mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={cfg['tmp_mb']}m")
        for b in sorted(blocked):
            mount("tmpfs", b, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        for p, fd in fds.items():
            os.makedirs(p, 0o755, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
            mount(None, p, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
            os.close(fd)
        work = "/tmp/work"
        os.mkdir(work, 0o700)
        iso["mountns"] = True
    except OSError as e:
        report(warning=f"mount namespace: {e}")
        work = cfg["host_work"]
        if libc.setns(orig_mnt, NEWNS) != 0:  # back to the host's mounts, or give up
            report(error=f"mount namespace half set up ({e}); not running the code")
            os._exit(1)
os.close(orig_mnt)

if root:
    if accessible(python, uid) is not None:
        alt = cfg.get("fallback_python")
        if alt and accessible(alt, uid) is None:
            python = alt
        else:
            report(warning=f"{python} is not readable by uid {uid}; running as root")
            uid = gid = 0
    iso["uid"] = uid != 0

for name, text in cfg["files"].items():
    path = os.path.join(work, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    if root:
        os.chown(path, uid, gid)
if root:
    os.chown(work, uid, gid)

iso["pidns"] = ns and unshare(NEWPID)
report(isolation=iso, work=work, python=python)

lim = cfg["limits"]


def child():  # L2
    try:
        os.setpgid(0, 0)  # its own group: L1 can kill it and its descendants, not itself
        os.umask(0o077)
        R = resource
        for res, v in ((R.RLIMIT_CORE, 0), (R.RLIMIT_AS, lim["as"]), (R.RLIMIT_FSIZE, lim["fsize"]),
                       (R.RLIMIT_NOFILE, lim["nofile"]), (R.RLIMIT_NPROC, lim["nproc"])):
            R.setrlimit(res, (v, v))
        resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu"], lim["cpu"] + 1))
        if root and uid:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        os.chdir(work)
        argv = [python, "-I", "-B"] + ([] if cfg["site"] else ["-S"]) + ["-c", cfg["boot"]]
        argv += ["0" if iso["netns"] else "1"]
        os.execve(python, argv, {"PATH": cfg["path"]})
    except BaseException as e:
        report(error=f"could not start the sandboxed interpreter: {type(e).__name__}: {e}")
    os._exit(127)


def kill_all(pid):
    # Every process the child started: the PID namespace, else the uid, else its group.
    if iso["pidns"]:
        try:
            os.kill(-1, signal.SIGKILL)  # from PID 1 of the namespace: all others in it
        except OSError:
            pass
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if root and uid:
        killer = os.fork()
        if killer == 0:
            try:
                os.setgid(gid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)  # every process of this uid (not the caller)
            finally:
                os._exit(0)
        os.waitpid(killer, 0)


def reaper():  # L1: PID 1 of the new PID namespace (when there is one), a subreaper
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come back here, reaped
    if iso["pidns"] and iso["mountns"]:
        try:
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:
            pass
    pid = os.fork()
    if pid == 0:
        child()
    report(child=pid)
    state = {"timed_out": False}

    def on_alarm(signum, frame):
        state["timed_out"] = True
        kill_all(pid)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, cfg["timeout"])
    status, cpu = None, 0.0
    while True:
        try:
            got, st, ru = os.wait4(-1, 0)
        except ChildProcessError:
            break
        if got == pid:
            status, cpu = st, ru.ru_utime + ru.ru_stime
            break
    signal.setitimer(signal.ITIMER_REAL, 0)
    report(wait=status, cpu=cpu, timed_out=state["timed_out"])
    kill_all(pid)
    t_end = time.monotonic() + 0.5
    while time.monotonic() < t_end:  # reap what the sweep killed
        try:
            got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if got == 0:
            time.sleep(0.005)
    os._exit(0)


pid = os.fork()
if pid == 0:
    reaper()
os.waitpid(pid, 0)
os._exit(0)
"""

# The sandboxed interpreter runs this with `-c`, sys.argv = ["-c", block_sockets]; main.py in
# the working directory is the user's program, run as __main__.
_BOOT = r"""
import sys
if sys.argv[1] == "1":
    import _socket, socket

    def _blocked(*a, **k):
        raise PermissionError(13, "network access is disabled in the steerl sandbox")

    for _m in (_socket, socket):
        for _n in ("socket", "socketpair", "fromfd", "create_connection", "create_server",
                   "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
            if hasattr(_m, _n):
                setattr(_m, _n, _blocked)
    del _m, _n, _blocked, _socket, socket
sys.argv = ["main.py"]
sys.path.insert(0, "")
with open("main.py", encoding="utf-8") as _f:
    _src = _f.read()
del _f
_g = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
exec(compile(_src, "main.py", "exec"), _g)
"""


# --------------------------------------------------------------------------- parent side
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
        "boot": _BOOT,
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


def _process_count(uid: int) -> int:
    n = 0
    with contextlib.suppress(OSError):
        for e in os.scandir("/proc"):
            if e.name.isdigit():
                with contextlib.suppress(OSError):
                    n += os.stat(e.path).st_uid == uid
    return n


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
                _LAUNCHER,
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


def _killpg(pgid: int | None) -> None:
    if pgid is None or pgid <= 1:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


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
