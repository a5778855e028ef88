"""A one-line live status on stderr: rewritten in place on a terminal, else every few seconds."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``show()`` as often as you like; it writes at most every ``interval`` seconds."""

    def __init__(self, label: str, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.interval = 0.5 if self.tty else 5.0
        self.started = time.perf_counter()
        self.last_time = self.started
        self.last_done = 0
        self.wrote = False

    def show(self, sent: int, done: int, errors: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self.last_time < self.interval):
            return
        rate = (done - self.last_done) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_done = now, done
        line = (
            f"[{self.label}] {now - self.started:6.1f}s  sent {sent}  done {done}  "
            f"errors {errors}  {rate:8.1f} req/s"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.wrote = True

    def close(self) -> None:
        if self.enabled and self.tty and self.wrote:
            self.stream.write("\n")
            self.stream.flush()
