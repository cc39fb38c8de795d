"""Background images uploaded through the control socket: written to a private
temporary folder (made on first use, so a server that never gets one leaves
nothing), the oldest unused ones deleted, the folder removed at shutdown."""

from __future__ import annotations

import collections
import re
import secrets
import shutil
import tempfile
from pathlib import Path


_UPLOAD_ID = re.compile(r"[0-9a-f]{16}\.(png|jpg|webp|bmp)")


class Uploads:
    def __init__(self, keep: int = 16):
        self.keep = keep
        self._dir: Path | None = None
        self._paths: collections.deque[Path] = collections.deque()

    def write(self, blob: bytes, suffix: str) -> Path:
        """A new file holding ``blob``; ``adopt`` it once in use, else unlink it."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="live-uploads-"))
        path = self._dir / f"{secrets.token_hex(8)}{suffix}"
        path.write_bytes(blob)
        return path

    def id_of(self, path: str | Path) -> str | None:
        """The id a client names an upload by (its file name), None if not an upload."""
        p = Path(path)
        return p.name if self._dir is not None and p.parent == self._dir else None

    def path_of(self, upload_id: str) -> Path | None:
        """The file of an upload id, None if there is no such upload (any more)."""
        if self._dir is None or not _UPLOAD_ID.fullmatch(upload_id):
            return None
        path = self._dir / upload_id
        return path if path.is_file() else None

    def adopt(self, path: Path, in_use: set[str | None]) -> None:
        """Keep ``path``; delete the oldest uploads beyond ``keep`` that are not ``in_use``."""
        self._paths.append(path)
        for old in list(self._paths)[: max(0, len(self._paths) - self.keep)]:
            if str(old) not in in_use:
                self._paths.remove(old)
                old.unlink(missing_ok=True)

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
