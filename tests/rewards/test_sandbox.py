"""The sandbox's limits, each proven by an attack that must fail and leave nothing behind.

Every test runs twice: with the namespaces the machine permits (``ns``) and with
``namespaces=False`` (``fallback``: rlimits, uid drop, socket prelude, sweeps only), so the
guarantees that do not depend on ``unshare`` are checked even where it is permitted.
"""

from __future__ import annotations

import os
import secrets
import socket
import textwrap
import threading
import time

import pytest

from steerl.rewards.code_exec import code_exec
from steerl.rewards.sandbox import capabilities, run_python

ROOT = os.geteuid() == 0


@pytest.fixture(params=[True, False], ids=["ns", "fallback"])
def namespaces(request) -> bool:
    return request.param


def run(code: str, namespaces: bool, **kw):
    kw.setdefault("timeout", 1.0)
    return run_python(textwrap.dedent(code), namespaces=namespaces, **kw)


def processes_of(uid: int | None) -> list[int]:
    """PIDs of live (non-zombie) processes owned by ``uid``."""
    if uid is None:
        return []
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            out.append(int(name))
    return out


def assert_gone(res) -> None:
    """No process of the sandbox's uid is left (they die at once: allow a moment)."""
    if res.uid is None:
        return
    deadline = time.monotonic() + 1.0
    while processes_of(res.uid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert processes_of(res.uid) == [], "sandbox processes left behind"


def test_plain_python_runs(namespaces):
    res = run(
        """
        import json, os, sys
        data = sys.stdin.read()
        print(json.dumps({"in": data, "cwd": os.listdir("."), "x": sum(range(10))}))
        """,
        namespaces,
        stdin="hello",
        files={"helper.py": "X = 1\n"},
    )
    assert res.passed and res.status == "ok" and res.returncode == 0, res.stderr
    assert '"in": "hello"' in res.stdout and '"x": 45' in res.stdout
    assert "helper.py" in res.stdout
    if ROOT:
        assert res.isolation["uid"] and res.uid is not None and res.uid != 0
    assert res.isolation["socket_prelude"] is (not res.isolation["netns"])


def test_error_status_and_stderr_tail(namespaces):
    res = run("raise ValueError('boom')", namespaces)
    assert res.status == "error" and not res.passed and res.returncode == 1
    assert "ValueError: boom" in res.stderr


def test_infinite_loop_times_out_and_is_killed(namespaces):
    t0 = time.monotonic()
    res = run("while True:\n    pass", namespaces, timeout=1.0)
    assert res.status == "timeout" and not res.passed
    assert time.monotonic() - t0 < 3.0
    assert_gone(res)


def test_escaped_background_process_is_killed(namespaces):
    # a child that leaves the process group (setsid) and outlives the program
    res = run(
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            time.sleep(60)
        print("parent done")
        """,
        namespaces,
    )
    assert res.passed and "parent done" in res.stdout
    assert_gone(res)


@pytest.mark.parametrize("variant", ["raise", "persist"])
def test_fork_bomb_fails_and_leaves_nothing(namespaces, variant):
    body = (
        "os.fork()" if variant == "raise" else "try:\n        os.fork()\n    except OSError: pass"
    )
    res = run(f"import os\nwhile True:\n    {body}\n", namespaces, timeout=1.0)
    assert not res.passed and res.status in ("error", "timeout")
    assert_gone(res)
    # the caller is fine: it can still start processes
    assert run("print(1)", namespaces).stdout == "1\n"


def test_memory_hog_fails(namespaces):
    res = run("x = bytearray(4 * 1024**3)", namespaces, memory_mb=256)
    assert res.status == "memory" and "MemoryError" in res.stderr
    res = run(
        "a = []\nwhile True:\n    a.append(bytearray(50 * 1024**2))",
        namespaces,
        memory_mb=256,
    )
    assert res.status == "memory"
    assert_gone(res)


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    yield srv, udp
    srv.close()
    udp.close()


def test_no_network(namespaces, listener):
    srv, udp = listener
    tcp_port, udp_port = srv.getsockname()[1], udp.getsockname()[1]
    res = run(
        f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(b"leak", ("127.0.0.1", {udp_port}))
        except OSError:
            pass
        c = socket.create_connection(("127.0.0.1", {tcp_port}), timeout=1)
        c.sendall(b"leak")
        print("connected")
        """,
        namespaces,
    )
    assert not res.passed and "connected" not in res.stdout
    with pytest.raises(BlockingIOError):
        srv.accept()
    with pytest.raises(BlockingIOError):
        udp.recvfrom(16)
    if res.isolation["netns"]:
        assert "Network is unreachable" in res.stderr  # only a downed loopback in there
    else:
        assert "network access is disabled" in res.stderr  # the prelude
    # the low-level module is covered by the prelude too
    res = run("import _socket\n_socket.socket()", namespaces)
    assert res.isolation["netns"] or "network access is disabled" in res.stderr


@pytest.mark.skipif(not capabilities().get("netns"), reason="unshare(CLONE_NEWNET) not permitted")
def test_network_namespace_has_no_interfaces():
    res = run_python("import socket\nprint(socket.if_nameindex())", timeout=2)
    assert res.passed and res.isolation["netns"], res.stderr
    assert "eth" not in res.stdout and "'lo'" in res.stdout


def test_writes_outside_the_sandbox_do_not_persist(namespaces, tmp_path):
    name = f"/tmp/steerl-sandbox-escape-{secrets.token_hex(6)}"
    protected = tmp_path / "protected.txt"
    res = run(
        f"""
        import os
        with open("local.txt", "w") as f:  # its own directory: fine
            f.write("ok")
        with open({name!r}, "w") as f:
            f.write("escaped")
        try:
            with open({str(protected)!r}, "w") as f:
                f.write("escaped")
            print("protected written")
        except OSError as e:
            print("protected denied", type(e).__name__)
        """,
        namespaces,
    )
    if not (ROOT or res.isolation["mountns"]):  # same uid as us, shared /tmp: no sweep
        if os.path.exists(name):
            os.unlink(name)
        pytest.skip("not root and no mount namespace: /tmp is shared with the caller")
    assert not os.path.exists(name)
    assert not protected.exists()
    if ROOT:
        assert res.passed and "protected denied" in res.stdout, res.stderr


def test_parent_environment_is_not_visible(namespaces, monkeypatch):
    secret = secrets.token_hex(8)
    monkeypatch.setenv("STEERL_SECRET", secret)
    res = run(
        f"""
        import os
        print(sorted(os.environ))
        print(os.environ.get("STEERL_SECRET"))
        for pid in ({os.getpid()}, os.getppid()):
            try:
                print(open(f"/proc/{{pid}}/environ", "rb").read())
            except OSError as e:
                print("denied", pid, type(e).__name__)
        """,
        namespaces,
    )
    assert res.passed, res.stderr
    assert secret not in res.stdout and "STEERL_SECRET" not in res.stdout
    assert "None" in res.stdout


def test_concurrent_sandboxes_get_their_own_uid(namespaces):
    results = [None] * 6

    def go(i):
        results[i] = run("import os\nprint(os.getuid())", namespaces)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.passed for r in results)
    if ROOT:
        assert len({r.uid for r in results}) == 6
        assert all(r.stdout.strip() == str(r.uid) for r in results)


# --------------------------------------------------------------------------- through code_exec
ATTACKS = {
    "loop": "def f():\n    while True:\n        pass",
    "fork_bomb": "import os\ndef f():\n    while True:\n        os.fork()",
    "memory": "def f():\n    return len(bytearray(8 * 1024**3)) > 0",
    "socket": (
        "import socket\ndef f():\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=1)\n    return True"
    ),
    "env": "import os\ndef f():\n    return os.environ.get('STEERL_SECRET') is not None",
    "protected_write": (
        "def f():\n    open('/etc/steerl-sandbox-escape', 'w').write('x')\n    return True"
    ),
    "fake_pass": "import os\nprint('passed')\nos._exit(0)\ndef f():\n    return False",
}


def test_attacks_score_zero(monkeypatch):
    monkeypatch.setenv("STEERL_SECRET", "s3cret")
    names = list(ATTACKS)
    comps = [f"```python\n{ATTACKS[k]}\n```" for k in names]
    comps.append("```python\ndef f():\n    return True\n```")  # the control
    t0 = time.monotonic()
    out = code_exec([""] * len(comps), comps, tests=["assert f()"] * len(comps), time_limit=1.5)
    assert time.monotonic() - t0 < 8.0
    assert dict(zip(names + ["control"], out.scores)) == {
        **dict.fromkeys(names, 0.0),
        "control": 1.0,
    }
    assert not os.path.exists("/etc/steerl-sandbox-escape")
    assert out.metrics["timeout"] > 0 and out.metrics["all_passed"] == pytest.approx(1 / len(comps))
