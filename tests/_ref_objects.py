"""Live objects for the session-ref tests, importable by their type path on restore."""

from __future__ import annotations

import threading
from typing import Self


class Connection:
    """Unpicklable (holds a lock) but serializable through the protocol."""

    def __init__(self, dsn: str, *, restored: bool = False) -> None:
        self.dsn = dsn
        self.restored = restored
        self.lock = threading.Lock()

    def __blazen_serialize__(self) -> bytes:
        return self.dsn.encode()

    @classmethod
    def __blazen_deserialize__(cls, data: bytes) -> Self:
        return cls(data.decode(), restored=True)
