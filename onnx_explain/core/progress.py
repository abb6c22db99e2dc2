"""A small progress bar on stderr for the command line (the runtime keeps its dependencies to four)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str, width: int = 30) -> Iterator[T]:
    """Yield items while drawing `desc [#####     ] k/total  elapsed` on stderr; on a terminal the
    bar redraws in place, elsewhere (CI logs) only the finished line is written."""
    tty = sys.stderr.isatty()
    start = time.perf_counter()

    def draw(done: int, end: str) -> None:
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + " " * (width - filled)
        sys.stderr.write(f"\r{desc} [{bar}] {done}/{total} {time.perf_counter() - start:5.1f}s{end}")
        sys.stderr.flush()

    done = 0
    for item in items:
        yield item
        done += 1
        if tty:
            draw(done, "")
    draw(done, "\n")
