"""The outcome of one sandboxed run (:class:`SandboxResult`) and its possible statuses."""

from __future__ import annotations

from dataclasses import dataclass, field

STATUSES = ("ok", "error", "timeout", "memory")


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
