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

from steerl.rewards.sandbox import child as _child
from steerl.rewards.sandbox.host import SANDBOX_PATH, SHARED_TMP_DIRS
from steerl.rewards.sandbox.host import _fallback_python as _fallback_python
from steerl.rewards.sandbox.host import _kill_uid as _kill_uid
from steerl.rewards.sandbox.host import _killpg as _killpg
from steerl.rewards.sandbox.host import _needed_paths as _needed_paths
from steerl.rewards.sandbox.host import _sweep_shared_tmp as _sweep_shared_tmp
from steerl.rewards.sandbox.result import STATUSES, SandboxResult
from steerl.rewards.sandbox.runner import _BACKSTOP_S as _BACKSTOP_S
from steerl.rewards.sandbox.runner import _CAPS_LOCK as _CAPS_LOCK
from steerl.rewards.sandbox.runner import _child_pid as _child_pid
from steerl.rewards.sandbox.runner import _decode as _decode
from steerl.rewards.sandbox.runner import _run as _run
from steerl.rewards.sandbox.runner import capabilities, run_python
from steerl.rewards.sandbox.uids import _UID_RANGE as _UID_RANGE
from steerl.rewards.sandbox.uids import _UIDS as _UIDS
from steerl.rewards.sandbox.uids import UID_BASE
from steerl.rewards.sandbox.uids import _process_count as _process_count
from steerl.rewards.sandbox.uids import _UidPool as _UidPool

# The names these had before the split into a package (the child's source text).
_LAUNCHER, _BOOT = _child.LAUNCHER, _child.BOOT

__all__ = [
    "SANDBOX_PATH",
    "SHARED_TMP_DIRS",
    "STATUSES",
    "UID_BASE",
    "SandboxResult",
    "capabilities",
    "run_python",
]
