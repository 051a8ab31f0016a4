"""A task's log files with a size cap: what a task prints must not fill the disk or the
daemon's memory, and the end of a flood (where the verdict usually is) must survive it."""

from __future__ import annotations

from collections import deque
from pathlib import Path

LOG_HEAD = 4 * 1024 * 1024  # characters of agent.log / verifier.log written as they come
LOG_TAIL = 4 * 1024 * 1024  # ... and of its end, written when the task ends


class Tail:
    """The last lines of a text, at most `limit` characters of them (newlines counted)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: deque[str] = deque()
        self.size = 0
        self.dropped = 0  # characters that fell out

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line) + 1
        while self.size > self.limit and self.lines:
            gone = self.lines.popleft()
            self.size -= len(gone) + 1
            self.dropped += len(gone) + 1

    def text(self) -> str:
        return "\n".join(self.lines)


class CappedLog:
    """The first `head` characters of a log are written at once, line-buffered (a daemon
    killed mid-task still leaves them on disk); past them only the last `tail` are kept,
    and written at `close` after a line saying how much was left out."""

    def __init__(self, path: Path, *, head: int = LOG_HEAD, tail: int = LOG_TAIL) -> None:
        self.file = open(path, "a", encoding="utf-8", buffering=1)
        self.head = head
        self.tail = Tail(tail)

    def write(self, line: str) -> None:
        if self.head >= len(line) + 1:
            self.head -= len(line) + 1
            self.file.write(line + "\n")
        else:
            self.head = 0  # a long line past the head goes to the tail, not in pieces
            self.tail.add(line)

    def close(self) -> None:
        if self.tail.dropped:
            self.file.write(f"[tbhud: {self.tail.dropped} characters of output left out "
                            "here; the log keeps its head and its tail]\n")
        self.file.writelines(line + "\n" for line in self.tail.lines)
        self.file.close()
