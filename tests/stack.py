"""The test suite's process launcher: the project's own (benchmarks use it too), torn down fast.

``LocalStack.stop`` is a graceful stop (SIGTERM, then up to 20 s per process): an API
under gunicorn takes over a second to exit that way, a bulk worker two. A test's stack
is done with by teardown, and the tests of graceful shutdown send their own signals, so
the suite's stacks end with SIGKILL to every process they started and all of theirs
(an RQ work horse, an API's gunicorn workers): nothing is left to serve, or to read the
next test's streams.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

from fusionserve.launch import ROOT, LocalStack

GONE_TIMEOUT_S = 10.0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, over all its threads (from /proc)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(c) for c in f.read().split()]
            except FileNotFoundError:
                continue
            found += kids
            pending += kids
    return found


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def kill_tree(*procs: subprocess.Popen[bytes]) -> None:
    """SIGKILL each of ``procs`` and its descendants; return once every one has exited."""
    live = [p for p in procs if p.poll() is None]
    tree = [pid for p in live for pid in (p.pid, *descendants(p.pid))]
    for pid in tree:  # parents first: a dead parent starts no new child
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for proc in procs:
        try:
            proc.wait(GONE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pid {proc.pid} outlived SIGKILL") from None
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while not all(gone(pid) for pid in tree):  # grandchildren, reaped by someone else
        if time.monotonic() > deadline:
            left = [pid for pid in tree if not gone(pid)]
            raise RuntimeError(f"processes outlived SIGKILL: {left}")
        time.sleep(0.01)


class Stack(LocalStack):
    def stop(self) -> None:
        """SIGKILL each process this stack started, and its descendants; wait until all exit."""
        kill_tree(*self.procs)


__all__ = ["ROOT", "Stack", "kill_tree"]
