"""A Python client for ``live serve``: the control socket and a WebRTC video peer.

What the web page does, for scripts, tests and ``bench.webrtc``::

    async with ControlClient("http://127.0.0.1:8787/?token=...") as client:
        await client.request("settings.set", settings={"background": {"mode": "blur"}})
        processed = await client.start_video(my_track)   # an aiortc video track
        frame = await processed.recv()
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.client import ClientConnection, connect

from live.serve.protocol import MAX_MESSAGE_BYTES


class ControlClient:
    """One control websocket; replies are matched to requests by id."""

    def __init__(self, url: str, *, origin: str | None = None, token: str | None = None):
        parts = urlsplit(url)
        self.token = token if token is not None else parse_qs(parts.query).get("token", [""])[0]
        self.ws_url = f"ws://{parts.netloc}/ws?token={self.token}"
        self.origin = origin
        self.ws: ClientConnection | None = None
        self.pc: Any = None
        self.session: str | None = None
        self.answer_sdp: str | None = None  # as the server sent it (aiortc drops b= lines)
        self.remote: dict[str, Any] = {}  # kind -> track coming back from the server
        self.stats: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self.ended: list[dict[str, Any]] = []  # session.ended notices (a worker died)
        # {"type": "settings", "session", "settings"}: another connection changed a session
        self.settings_pushed: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self._ids = itertools.count(1)
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ControlClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self) -> None:
        headers = {"Origin": self.origin} if self.origin else None
        self.ws = await connect(self.ws_url, additional_headers=headers,
                                max_size=MAX_MESSAGE_BYTES, compression=None)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if "id" not in msg:  # a push, not a reply
                    pushes = {"stats": self.stats, "session.ended": self.ended}
                    pushes.get(msg.get("type"), self.settings_pushed).append(msg)
                    continue
                future = self._pending.pop(msg.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(msg)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("control socket closed"))
            self._pending.clear()

    async def request(self, type: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """Send ``{"type": type, "id": n, **fields}``; the reply, ok or error."""
        msg_id = next(self._ids)
        return await self.send_raw(json.dumps({"type": type, "id": msg_id, **fields}),
                                   msg_id, timeout)

    async def send_raw(self, raw: str | bytes, reply_id: Any = None,
                       timeout: float = 30.0) -> dict[str, Any]:
        """Send any frame (even a malformed one) and wait for the reply with ``reply_id``."""
        assert self.ws is not None, "connect() first"
        future = asyncio.get_running_loop().create_future()
        self._pending[reply_id] = future
        await self.ws.send(raw)
        return await asyncio.wait_for(future, timeout)

    async def start_video(self, track: Any, *, audio: Any = None,
                          codec: str | None = None) -> Any:
        """Send ``track`` to the server; returns the processed track coming back.

        ``codec`` ("VP8", "H264") restricts the video codec offered.
        """
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        from aiortc.rtcrtpsender import RTCRtpSender

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc = pc
        incoming: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        @pc.on("track")
        def on_track(remote: Any) -> None:
            self.remote[remote.kind] = remote
            if remote.kind == "video" and not incoming.done():
                incoming.set_result(remote)

        transceiver = pc.addTransceiver(track, direction="sendrecv")
        if codec:
            caps = RTCRtpSender.getCapabilities("video").codecs
            chosen = [c for c in caps if c.mimeType.lower() == f"video/{codec.lower()}"]
            if not chosen:
                raise ValueError(f"codec {codec} is not available in aiortc")
            transceiver.setCodecPreferences(chosen)
        if audio is not None:
            pc.addTransceiver(audio, direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        reply = await self.request("offer", sdp=pc.localDescription.sdp)
        if reply["type"] != "ok":
            raise RuntimeError(f"offer refused: {reply['error']}")
        self.session, self.answer_sdp = reply["session"], reply["answer"]["sdp"]
        await pc.setRemoteDescription(RTCSessionDescription(**reply["answer"]))
        return await asyncio.wait_for(incoming, 10)

    async def stop_video(self) -> None:
        if self.pc is not None:
            await self.pc.close()
            self.pc = None

    async def close(self) -> None:
        await self.stop_video()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
