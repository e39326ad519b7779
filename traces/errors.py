"""The one error the codec raises on bad input."""
from __future__ import annotations


class FormatError(ValueError):
    """A capture or trace that cannot be read further.

    `offset` is the byte offset of the faulty header or block (None when the file could not be
    opened at all). Readers raise it only after yielding every record before the fault."""

    def __init__(self, path: str, offset: int | None, reason: str):
        self.path, self.offset, self.reason = path, offset, reason
        super().__init__(path, offset, reason)

    def __str__(self) -> str:
        where = "" if self.offset is None else f"offset {self.offset}: "
        return f"{self.path}: {where}{self.reason}"
