"""The control protocol: what a websocket client may send, checked before use.

Everything here is synchronous and knows nothing about sockets or WebRTC, so
each rule (sizes, rates, shapes of a message) can be read, tested and fuzzed
on its own. ``live/serve/server.py`` turns the checked messages into actions.

A message is a JSON object with a ``type`` and an ``id``; the reply is
``{"type": "ok", "id": ...}`` or ``{"type": "error", "id": ..., "error": ...}``.
The full list, with examples, is in docs/protocol.md.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import time
from typing import Any, Mapping

from live.composite import IMAGE_FORMATS, MAX_IMAGE_PIXELS, BackgroundError, decoded_image
from live.segment import Prompt

#: A control message (anything but an upload) may not be larger than this: an offer's
#: SDP fits (MAX_SDP_CHARS), and parsing the worst JSON of this size takes ~10 ms,
#: not the ~160 ms of 1 MiB of nested lists (on the event loop, every session waits).
MAX_CONTROL_BYTES = 128 << 10
#: '{' and '[' in one control message (a prompt has 66 at most): more is refused unparsed.
MAX_CONTAINERS = 512
#: The websocket's own frame limit: a base64 background image fits, nothing bigger.
MAX_MESSAGE_BYTES = 16 << 20
#: Decoded upload limit (base64 inflates by 4/3, so this fits MAX_MESSAGE_BYTES).
MAX_UPLOAD_BYTES = 11 << 20
#: Bytes a connection may send: 4 MiB a second on average, bursts of two full uploads.
BYTES_PER_SECOND = 4 << 20
BYTES_BURST = 2 * MAX_MESSAGE_BYTES
MAX_SDP_CHARS = 64 * 1024
MAX_PROMPT_POINTS = 64
MAX_OBJECTS = 64

#: The settings sections a client may change; source/output/server are the
#: operator's (a web page must never rebind the server or read its token).
CLIENT_SECTIONS = ("engine", "matte", "background")

#: Fields of those sections that name server files: never a client's to choose.
#: (Background files are named by upload id or --media-dir name, see live/serve/media.py.)
OPERATOR_FIELDS = {"engine": ("checkpoint",)}

MESSAGE_TYPES = ("hello", "settings.get", "settings.set", "prompt", "reset",
                 "background.upload", "offer", "stats", "sessions.list")


class ProtocolError(ValueError):
    """A message the server refuses; the text goes back to the client as is.

    ``msg_id`` is the refused request's id when it had a usable one, so even a
    refusal can be matched to its request.
    """

    def __init__(self, text: str, msg_id: Any = None):
        super().__init__(text)
        self.msg_id = msg_id


# --------------------------------------------------------------------------- framing

# A frame over MAX_CONTROL_BYTES may only be an upload, and that is told from its first
# bytes: parsing 15 MiB of nested lists held the event loop (and the GIL: a thread does
# not help) for seconds, stalling every session. The page writes "type" first.
_UPLOAD_HEAD = re.compile(r'\s*\{\s*"type"\s*:\s*"background\.upload"\s*,')
# {"type": ..., "id": ...} as the page writes it: the id of a refusal told from the head
_HEAD_ID = re.compile(r'\s*\{\s*"type"\s*:\s*"[^"\\]{0,40}"\s*,\s*"id"\s*:\s*'
                      r'(-?\d{1,15}|"[^"\\]{0,64}")\s*[,}]')
_MAX_UPLOAD_NESTING = 8  # '{' and '[' in a whole upload: one object of flat fields


def screen(raw: str | bytes) -> None:
    """Refuse, without parsing it, a frame that would cost the event loop: one over
    MAX_CONTROL_BYTES that is not a flat ``background.upload``, or one of more than
    MAX_CONTAINERS lists and objects (a prefix match and character counts: ~1 ms a MiB)."""
    if len(raw) <= MAX_CONTROL_BYTES:
        if isinstance(raw, str) and raw.count("{") + raw.count("[") > MAX_CONTAINERS:
            head = _HEAD_ID.match(raw[:200])
            raise ProtocolError(f"a control message may hold at most {MAX_CONTAINERS} lists "
                                "and objects", json.loads(head.group(1)) if head else None)
        return
    if isinstance(raw, bytes) or not _UPLOAD_HEAD.match(raw[:200]):
        head = _HEAD_ID.match(raw[:200]) if isinstance(raw, str) else None
        raise ProtocolError(f"message of {len(raw)} bytes is over the {MAX_CONTROL_BYTES}-byte "
                            'limit for control messages (only a background.upload, "type" '
                            "written first, may be larger)",
                            json.loads(head.group(1)) if head else None)
    if raw.count("{") + raw.count("[") > _MAX_UPLOAD_NESTING:
        raise ProtocolError("background.upload: an upload is one flat object "
                            '({"type", "id", "data", ...}), no nested lists or objects')


def parse_message(raw: str | bytes) -> tuple[Any, dict[str, Any]]:
    """``(id, message)`` from one websocket frame, or ProtocolError."""
    if isinstance(raw, bytes):
        raise ProtocolError("binary messages are not supported; send JSON text "
                            "(images go base64-encoded in a background.upload message)")
    try:
        msg = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        reason = (exc.msg if isinstance(exc, json.JSONDecodeError)
                  else "too deeply nested" if isinstance(exc, RecursionError) else str(exc))
        raise ProtocolError(f"malformed JSON: {reason}") from None
    if not isinstance(msg, dict):
        raise ProtocolError('a message must be a JSON object like {"type": "hello", "id": 1}')
    msg_id = msg.get("id")
    if msg_id is not None and not (isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool)
                                   and len(str(msg_id)) <= 64):
        raise ProtocolError("id must be a number or a string of at most 64 characters")
    msg_type = msg.get("type")
    if not isinstance(msg_type, str):
        raise ProtocolError("every message needs a string 'type'", msg_id)
    if msg_type not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {msg_type[:40]!r}; expected one of "
                            f"{list(MESSAGE_TYPES)}", msg_id)
    if msg_id is None:
        raise ProtocolError(f"{msg_type}: every request needs an 'id' to match its reply")
    if len(raw) > MAX_CONTROL_BYTES and msg_type != "background.upload":
        raise ProtocolError(f"{msg_type}: message of {len(raw)} bytes is over the "
                            f"{MAX_CONTROL_BYTES}-byte limit for control messages", msg_id)
    return msg_id, msg


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def ok(msg_id: Any, **fields: Any) -> dict[str, Any]:
    return {"type": "ok", "id": msg_id, **fields}


def error(msg_id: Any, reason: str) -> dict[str, Any]:
    return {"type": "error", "id": msg_id, "error": reason}


def dumps(obj: Any) -> str:
    """JSON for the wire; numpy scalars and other odd numbers become plain floats."""
    return json.dumps(obj, default=_json_default, separators=(",", ":"))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------- fields


def optional_session(msg: Mapping[str, Any]) -> str | None:
    session = msg.get("session")
    if session is None:
        return None
    if not isinstance(session, str) or not 0 < len(session) <= 64:
        raise ProtocolError("session must be a session id string from sessions.list")
    return session


def settings_patch(msg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``settings`` object of a settings.set, limited to the client's sections.

    Values are checked by ``Settings.merged`` (the one schema), not here.
    """
    patch = msg.get("settings")
    if not isinstance(patch, dict) or not patch:
        raise ProtocolError('settings.set needs "settings": {section: {name: value}}, e.g. '
                            '{"background": {"mode": "color", "color": "#00ff00"}}')
    for section in patch:
        if section not in CLIENT_SECTIONS:
            if section in ("source", "output", "server", "webrtc"):
                raise ProtocolError(f"{section} settings are fixed when the server starts and "
                                    "cannot be changed from the control panel")
            raise ProtocolError(f"unknown settings section {str(section)[:40]!r}; expected one "
                                f"of {list(CLIENT_SECTIONS)}")
        values = patch[section]
        for name in OPERATOR_FIELDS.get(section, ()):
            if isinstance(values, dict) and name in values:
                raise ProtocolError(f"{section}.{name} is the operator's (a path on the server): "
                                    "set it on the command line or in the config file")
    return patch


def prompt_from(msg: Mapping[str, Any]) -> Prompt:
    """A ``Prompt`` from ``points`` [[x, y, label], ...] (frame pixels) and/or ``box``."""
    obj_id = msg.get("obj_id", 1)
    if not _is_int(obj_id) or not 1 <= obj_id <= MAX_OBJECTS:
        raise ProtocolError(f"obj_id must be a whole number from 1 to {MAX_OBJECTS}")
    raw_points = msg.get("points", [])
    if not isinstance(raw_points, list) or len(raw_points) > MAX_PROMPT_POINTS:
        raise ProtocolError(f"points must be a list of at most {MAX_PROMPT_POINTS} "
                            "[x, y, label] triples")
    points = []
    for p in raw_points:
        if not (isinstance(p, list) and len(p) == 3 and _is_number(p[0]) and _is_number(p[1])
                and p[2] in (0, 1) and not isinstance(p[2], bool)):
            raise ProtocolError("each point must be [x, y, label] with x, y in frame pixels and "
                                "label 1 (subject) or 0 (not the subject)")
        if p[0] < 0 or p[1] < 0:
            raise ProtocolError(f"point ({p[0]}, {p[1]}) is outside the frame")
        points.append((float(p[0]), float(p[1]), int(p[2])))
    box = msg.get("box")
    if box is not None:
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)
                and box[0] < box[2] and box[1] < box[3] and min(box) >= 0):
            raise ProtocolError("box must be [x0, y0, x1, y1] in frame pixels with x0 < x1, "
                                "y0 < y1")
        box = tuple(float(v) for v in box)
    if not points and box is None:
        raise ProtocolError("a prompt needs points or a box")
    clear = msg.get("clear_old_points", True)
    if not isinstance(clear, bool):
        raise ProtocolError("clear_old_points must be true or false")
    return Prompt(obj_id=obj_id, points=tuple(points), box=box, clear_old_points=clear)


def offer_sdp(msg: Mapping[str, Any]) -> str:
    sdp = msg.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP_CHARS:
        raise ProtocolError(f"offer needs 'sdp': the browser's offer SDP (starts with v=0, "
                            f"at most {MAX_SDP_CHARS} characters)")
    return sdp


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    # abs(v) < 1e6 is False for nan and inf; math.isfinite would overflow on a huge int
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e6


# --------------------------------------------------------------------------- uploads


def decode_image_upload(msg: Mapping[str, Any]) -> tuple[bytes, str]:
    """``(file bytes, suffix)`` of a base64 image that is known to decode, or ProtocolError.

    Decoded by the compositor's ``decoded_image``, the rule its ``load_image``
    uses, so a file that passes here also loads there (an upload made before any
    video session is only loaded when one starts).
    """
    data = msg.get("data")
    if not isinstance(data, str) or not data:
        raise ProtocolError("background.upload needs 'data': the image file, base64-encoded "
                            "(a data: URL is fine)")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise ProtocolError(f"image is larger than {MAX_UPLOAD_BYTES // (1 << 20)} MiB")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("image data is not valid base64") from None
    try:
        with decoded_image(io.BytesIO(blob), IMAGE_FORMATS) as image:
            fmt = image.format
    except BackgroundError as exc:
        raise ProtocolError(str(exc)) from None
    return blob, IMAGE_FORMATS[fmt]


# --------------------------------------------------------------------------- rate limit


class RateLimiter:
    """Token bucket: ``rate`` messages (or bytes) a second on average, bursts up to
    ``burst``."""

    def __init__(self, rate: float = 50.0, burst: float = 100.0):
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = time.monotonic()

    def allow(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens (1 per message, or the bytes of one) if there are enough."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False
