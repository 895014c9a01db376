"""File hashes: the integrity check of every artifact and the fingerprint of every model source.

Integrity: every artifact file has a sha256. Hashing a multi-GB file on every load
takes seconds, so verified hashes are cached in ``.verified.json`` next to the
manifest, keyed by the file's (size, mtime_ns, ctime_ns, inode): any rewrite of the
file changes its ctime, which user tools cannot set back, so a changed file is always
re-hashed. The cache is best effort (a read-only folder just re-hashes).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mvg_rt.errors import MvgError
from mvg_rt.io.jsonio import read_json

HASH_CACHE_NAME = ".verified.json"


def fingerprint(paths: list[str | Path]) -> str:
    """sha256 over every file under ``paths`` (relative name + content), for provenance and staleness."""
    digest = hashlib.sha256()
    for base in paths:
        base = Path(base)
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        for file in files:
            digest.update(os.fsencode(file.relative_to(base.parent)))
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


class HashCache:
    """sha256 of files under ``root``, remembered by (size, mtime_ns, ctime_ns, inode)."""

    def __init__(self, root: Path) -> None:
        self.path = root / HASH_CACHE_NAME
        self.dirty = False
        try:
            self.entries: dict[str, dict[str, Any]] = read_json(self.path, "hash cache", "it is rebuilt")
        except MvgError:  # missing, damaged or nested too deep: start afresh (every file is re-hashed)
            self.entries = {}

    @staticmethod
    def _stamp(path: Path) -> list[int]:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def sha256(self, path: Path, key: str) -> str:
        stamp = self._stamp(path)
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        digest = sha256_file(path)
        self.entries[key] = {"stamp": stamp, "sha256": digest}
        self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.entries))
            tmp.replace(self.path)
            self.dirty = False
        except OSError:
            pass  # read-only engines folder: verify again next time
