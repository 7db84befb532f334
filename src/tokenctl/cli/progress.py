"""A progress bar on stderr for long work: redrawn in place on a terminal, a line every 10 % otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.label, self.total, self.width = label, max(total, 1), width
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self._tty = self.stream.isatty()
        self._last_decile = -1

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        share = self.done / self.total
        if self._tty:
            filled = int(share * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {share:6.1%} {self.done:,}/{self.total:,} {self._eta()}")
            self.stream.flush()
        elif int(share * 10) > self._last_decile:
            self._last_decile = int(share * 10)
            self.stream.write(f"{self.label}: {share:.0%} ({self.done:,}/{self.total:,}) {self._eta()}\n")

    def _eta(self) -> str:
        elapsed = time.monotonic() - self.started
        if not self.done or self.done >= self.total:
            return f"{elapsed:.0f}s"
        return f"eta {elapsed * (self.total - self.done) / self.done:.0f}s"

    def finish(self) -> None:
        self.done = self.total
        if self._tty:
            self.advance(0)
            self.stream.write("\n")
        self.stream.flush()
