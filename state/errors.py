"""The one error type the engine raises for bad input.

Every rejection names the offending field and says what would make the input acceptable, so a
user (or the stream's dead-letter topic) gets an actionable message. Raising happens before any
state is touched: a rejected row changes nothing.
"""

from __future__ import annotations


class InvalidInput(ValueError):
    """Input the engine refuses: bad numbers, inconsistent sums, unknown options, missing data."""

    def __init__(self, message: str, *, field: str | None = None, row: int | None = None):
        self.field = field
        self.row = row
        where = []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + message)
        self.reason = message
