"""The files a client may name, and how it names them: never by server path.

A client picks an uploaded image by the id the server gave it (the upload's
reply carries it), or an image or video of the operator's ``--media-dir`` by
its file name. Anything else — an absolute path, ``../``, a symlink out of
the folder, a file that is missing, unreadable or not a picture — gets the
same one reply (``NOT_AVAILABLE``), so a client cannot probe which files the
server has. Replies show names, never paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from live.config import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from live.serve.protocol import ProtocolError
from live.serve.uploads import Uploads

NOT_AVAILABLE = ("background {kind} {name!r} is not available: name an uploaded image by the "
                 "id its upload returned, or a file of the server's media folder (hello lists "
                 "them as media)")
MAX_LISTED = 200


class MediaFiles:
    """Client names ↔ server paths, for uploads and the operator's media folder."""

    def __init__(self, uploads: Uploads, media_dir: str | None):
        self.uploads = uploads
        self.media_dir = Path(media_dir).resolve() if media_dir else None

    def names(self) -> list[str]:
        """The media folder's pictures and videos a client may choose (at most MAX_LISTED)."""
        if self.media_dir is None or not self.media_dir.is_dir():
            return []
        try:
            found = sorted(p.name for p in self.media_dir.iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        except OSError:
            return []
        return [n for n in found if self._media_path(n) is not None][:MAX_LISTED]

    def resolve(self, background: dict[str, Any]) -> dict[str, Any]:
        """A client's background settings with its names turned into server paths."""
        out = dict(background)
        for kind, suffixes in (("image", IMAGE_SUFFIXES), ("video", VIDEO_SUFFIXES)):
            name = out.get(kind)
            if name is None:
                continue
            path = self.uploads.path_of(name) if kind == "image" and isinstance(name, str) \
                else None
            path = path or self._media_path(name, suffixes)
            if path is None:
                raise ProtocolError(self.unavailable(kind, name))
            out[kind] = str(path)
        return out

    def unavailable(self, kind: str, name: Any) -> str:
        shown = name if isinstance(name, str) and len(name) <= 80 else "…"
        return NOT_AVAILABLE.format(kind=kind, name=shown)

    def _media_path(self, name: Any, suffixes: tuple[str, ...] = IMAGE_SUFFIXES + VIDEO_SUFFIXES
                    ) -> Path | None:
        if self.media_dir is None or not isinstance(name, str) or not 0 < len(name) <= 255 \
                or any(c in name for c in "/\\\x00") or name.startswith("."):
            return None
        try:
            path = (self.media_dir / name).resolve()
            ok = path.parent == self.media_dir and path.suffix.lower() in suffixes \
                and path.is_file()
            if ok:
                with path.open("rb"):  # readable by the server, or not available
                    pass
        except (OSError, ValueError):
            return None
        return path if ok else None

    def name_of(self, path: str | None) -> str | None:
        """What a client sees for a server path: an upload id or a file name, never a path."""
        if not path:
            return path
        return self.uploads.id_of(path) or Path(path).name

    def client_view(self, settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Client settings (``session.client_settings``) with every path shown as a name."""
        out = {section: dict(values) for section, values in settings.items()}
        if "background" in out:
            for kind in ("image", "video"):
                out["background"][kind] = self.name_of(out["background"].get(kind))
        if "engine" in out:  # the operator's alone: not shown, so never sent back either
            out["engine"].pop("checkpoint", None)
        return out
