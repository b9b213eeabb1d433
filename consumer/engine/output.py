"""Capturing a test's output with a size cap while scanning every line for error ids.

The scan happens as the bytes stream by, so an error id printed early is still seen when a
flooding test pushes it out of the kept tail.
"""

from __future__ import annotations

import re

DEFAULT_ERRID_REGEX = r"ERRID:\s*(\S+)"
DEFAULT_TAIL_BYTES = 1024 * 1024
_MAX_LINE_BYTES = 64 * 1024  # a longer "line" is scanned in pieces
_MAX_ERRIDS = 1000


def token_pattern(error_id: str) -> re.Pattern[str]:
    """Matches ``error_id`` as a whole token (not inside a longer word or id)."""
    return re.compile(r"(?<![\w.\-/])" + re.escape(error_id) + r"(?![\w.\-/])")


class OutputCapture:
    """Keeps the last ``tail_bytes`` of output and the set of error ids seen in all of it."""

    def __init__(
        self,
        *,
        errid_regex: str = DEFAULT_ERRID_REGEX,
        error_id: str | None = None,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
    ) -> None:
        self._regex = re.compile(errid_regex)
        self._token = token_pattern(error_id) if error_id else None
        self._error_id = error_id
        self._tail = bytearray()
        self._tail_bytes = tail_bytes
        self._partial = bytearray()
        self.total_bytes = 0
        self.errids: set[str] = set()

    def feed(self, chunk: bytes) -> None:
        self.total_bytes += len(chunk)
        self._tail += chunk
        if len(self._tail) > self._tail_bytes:
            del self._tail[: len(self._tail) - self._tail_bytes]
        self._partial += chunk
        *lines, rest = self._partial.split(b"\n")
        for line in lines:
            self._scan(line)
        if len(rest) > _MAX_LINE_BYTES:
            self._scan(rest)
            rest = bytearray()
        self._partial = bytearray(rest)  # copy: rest may be a slice of the old buffer

    def close(self) -> None:
        """Scan what is left of an unterminated last line."""
        if self._partial:
            self._scan(bytes(self._partial))
            self._partial = bytearray()

    def _scan(self, raw: bytes | bytearray) -> None:
        if len(self.errids) >= _MAX_ERRIDS:
            return
        line = bytes(raw).decode("utf-8", errors="replace")
        for match in self._regex.finditer(line):
            found = match.group(1) if self._regex.groups else match.group(0)
            if found:
                self.errids.add(found)
        if self._token is not None and self._error_id and self._token.search(line):
            self.errids.add(self._error_id)

    def tail(self, max_chars: int | None = None) -> str:
        text = bytes(self._tail).decode("utf-8", errors="replace")
        if max_chars is not None and len(text) > max_chars:
            return text[-max_chars:]
        return text

    @property
    def truncated(self) -> bool:
        return self.total_bytes > self._tail_bytes
