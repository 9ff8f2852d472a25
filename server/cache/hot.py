"""The hot tier: recent cache keys also as uncompressed Arrow IPC files, for ``load()``.

A key's Parquet file (zstd) is what lasts: downloads, restarts and keys that went cold read
it. Decoding it costs a ``load(key)`` most of its time (flights: 30 ms to read, then every
byte through the broker socket). So each new key is first written here as an Arrow IPC
*file*, and a kernel's ``load`` is handed an open read-only descriptor of it over its
broker socket (``SCM_RIGHTS``): the kernel maps it and reads the table without a copy.

Bounded by ``cache_hot_bytes`` (0: no hot tier); the least recently used files go first,
and a key that is deleted, evicted or expired loses its hot file with its Parquet one. A
file is the server's (mode 0600, root's under a root server); the kernel only ever gets a
read-only descriptor of the one file it asked for, after the tenant check. The tier is a
copy, so it is emptied at start rather than trusted.

Blocking (file system calls): callers run these in a thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

import pyarrow as pa
from dataexec_kernel.answers import expanded_bytes

log = logging.getLogger(__name__)


class HotTier:
    """Arrow IPC files of recent keys, within a byte budget."""

    def __init__(self, root: Path, limit_bytes: int) -> None:
        self.root = root
        self.limit_bytes = limit_bytes
        # key -> (file, its bytes, the table's bytes once its string views are copied out)
        self.files: OrderedDict[str, tuple[Path, int, int]] = OrderedDict()  # by last use
        self.used = 0
        self.lock = threading.Lock()  # writers and readers run in threads of their own
        shutil.rmtree(root, ignore_errors=True)
        if limit_bytes:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def write(self, key: str, table: pa.Table) -> bool:
        """Keep ``table`` as ``key``'s hot file; False when it does not fit the budget."""
        if not 0 < table.nbytes <= self.limit_bytes:
            return False
        path = self.root / f"{key}.arrow"
        partial = path.with_suffix(".partial")
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, table.schema) as ipc:
            ipc.write_table(table)
        partial.chmod(0o600)  # a descriptor reopened through /proc gets no more than read
        size = partial.stat().st_size
        partial.rename(path)
        with self.lock:
            self.files[key] = (path, size, expanded_bytes(table))
            self.used += size
            gone = self._trim()
        for old in gone:
            old.unlink(missing_ok=True)
        return True

    def _trim(self) -> list[Path]:
        gone = []
        while self.used > self.limit_bytes and self.files:
            _, (path, size, _) = self.files.popitem(last=False)
            self.used -= size
            gone.append(path)
        return gone

    def open(self, key: str) -> tuple[int, int] | None:
        """A read-only descriptor of ``key``'s hot file (the caller closes it) and the
        table's expanded bytes (what the stream of it would send), or None."""
        with self.lock:
            known = self.files.get(key)
            if known is None:
                return None
            self.files.move_to_end(key)
        try:
            return os.open(known[0], os.O_RDONLY | os.O_CLOEXEC), known[2]
        except FileNotFoundError:  # trimmed meanwhile
            return None

    def discard(self, key: str) -> None:
        with self.lock:
            known = self.files.pop(key, None)
            if known is not None:
                self.used -= known[1]
        if known is not None:
            known[0].unlink(missing_ok=True)
