"""The code that runs inside the sandbox, shipped to the child as source text.

Both programs are plain strings passed to a fresh interpreter with ``-c`` (run with
``-I -S -B``), so the child never imports steerl: :data:`LAUNCHER` is the launcher the
caller starts (namespaces, reaper, limits, uid drop), :data:`BOOT` the prelude the sandboxed
interpreter runs before the user's ``main.py``.
"""

# Runs as `python -I -S -B -c LAUNCHER <config.json> <status fd>` in a new session (L0). It sets
# up the namespaces, forks L1 (PID 1 of the new PID namespace, a reaper) which forks L2: limits,
# drop to the sandbox uid, exec the interpreter on main.py. L1 reports L2's wait status on the
# status pipe, then kills every process left with the sandbox uid. Nothing here prints to stdout.
LAUNCHER = r"""
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
BOOT = r"""
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
