"""Child processes that never outlive the process that started them, and how to start one."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A ``preexec_fn``: the child gets SIGTERM when its parent dies, even by SIGKILL.

    Linux only; elsewhere the parent's own shutdown path is what stops its children.
    """
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def fusionserve_command(*args: str) -> list[str]:
    """``fusionserve ARGS`` as a child process of this interpreter.

    ``-P`` keeps the working directory off the child's import path, so a user's own
    ``client.py`` or ``server/`` there can never shadow ours; ``PYTHONPATH`` still applies.
    """
    return [sys.executable, "-P", "-m", "fusionserve.cli", *args]
