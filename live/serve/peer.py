"""One WebRTC peer: its video through a pipeline and back, its audio straight back.

Kept apart from ``server.py`` so the control server imports aiortc only when a
browser actually offers video. It opens a ``Session`` and hands it back; the
server learns of its end through ``on_close`` (no import of the server here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Callable, Iterator

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole

from live.io import rtc_media
from live.config import Settings
from live.io.webrtc import TrackSource, VideoOutputTrack
from live.pipeline import FrameProcessor, Pipeline
from live.serve.protocol import ProtocolError
from live.serve.session import Session

log = logging.getLogger("live.serve.peer")

#: An answered offer whose connection is not up by then is released (it held a
#: video slot for a minute before: aiortc gives up on ICE only after ~60 s).
CONNECT_TIMEOUT_S = 10.0


async def open_peer_session(settings: Settings, offer_sdp: str, *, passthrough: bool = False,
                            on_close: Callable[[Session], None] | None = None,
                            bind_host: str = "0.0.0.0") -> tuple[Session, str]:
    """Answer ``offer_sdp`` and start its pipeline; returns the session and the answer SDP.

    The answer is sent only once our candidates are gathered (aiortc does that
    inside ``setLocalDescription``). No STUN server: aiortc's default is
    Google's, which a local service must not contact, and loopback or LAN
    peers find each other through host candidates. ``passthrough``: the
    pipeline returns frames untouched (the latency baseline). The media
    sockets bind where the server does (``bind_host``; see ``_gathered_on``).
    """
    processor = await asyncio.to_thread(FrameProcessor, settings)  # may load a model
    processor.passthrough = passthrough
    rtc_media.bound_encoders(settings.webrtc)
    rtc_media.fast_codecs()
    offer_sdp = rtc_media.prefer_codec(offer_sdp, settings.webrtc.codec)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    session = Session(processor, kind="webrtc", pc=pc, output=VideoOutputTrack(),
                      on_close=on_close)
    tracks: dict[str, list[Any]] = {"video": [], "audio": []}

    @pc.on("track")
    def on_track(track: Any) -> None:
        tracks.setdefault(track.kind, []).append(track)
        if track.kind == "video" and session.pipeline is None:
            session.pipeline = Pipeline(TrackSource(track), [session.output], processor,
                                        name=f"peer-{session.id}")
            pc.addTrack(session.output)
        elif track.kind == "audio" and len(tracks["audio"]) == 1:
            pc.addTrack(track)  # relayed back untouched

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        log.info("session %s: connection %s", session.id, pc.connectionState)
        if pc.connectionState in ("failed", "closed"):
            await session.close()

    try:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:  # aiortc's SDP parser raises all sorts on garbage
            raise ProtocolError(f"the offer SDP could not be used: {type(exc).__name__}: "
                                f"{exc}") from None
        if len(tracks["video"]) != 1:
            raise ProtocolError(f"the offer must carry exactly one video track (the camera), "
                                f"it has {len(tracks['video'])}")
        if len(tracks["audio"]) > 1:
            raise ProtocolError("the offer may carry at most one audio track")
        answer = await pc.createAnswer()
        with _gathered_on(bind_host):
            await pc.setLocalDescription(answer)
    except BaseException:
        await session.close()  # the one teardown path
        raise
    _drain_unsent_audio(session, pc)
    session.own(asyncio.create_task(_release_unless_connected(session, pc)))
    session.start()
    return session, rtc_media.tune_answer(pc.localDescription.sdp, settings.webrtc)


@contextlib.contextmanager
def _gathered_on(bind_host: str) -> Iterator[None]:
    """Media sockets where the server listens: aioice binds one UDP socket per
    address of ``get_host_addresses`` — every interface but loopback — so a
    server that listens on loopback only would take video from the network.
    aiortc has no option for it: the list is swapped while candidates are
    gathered (inside ``setLocalDescription``, on this loop)."""
    if bind_host in ("0.0.0.0", "::", ""):
        yield  # every interface, as the server itself
        return
    address = "127.0.0.1" if bind_host == "localhost" else bind_host
    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [address]
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


async def _release_unless_connected(session: Session, pc: RTCPeerConnection) -> None:
    await asyncio.sleep(CONNECT_TIMEOUT_S)
    if pc.connectionState != "connected":
        log.info("session %s: not connected after %g s; released", session.id,
                 CONNECT_TIMEOUT_S)
        # closed from a task of its own: close() cancels this one, its helper
        closer = asyncio.get_running_loop().create_task(session.close())
        _closing.add(closer)  # the loop keeps only a weak reference to a task
        closer.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()


def _drain_unsent_audio(session: Session, pc: RTCPeerConnection) -> None:
    """Audio we cannot send back (a send-only offer) must still be consumed:
    aiortc buffers received frames without bound until someone reads them."""
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio" and transceiver.currentDirection == "recvonly":
            hole = MediaBlackhole()
            hole.addTrack(transceiver.receiver.track)
            session.own(asyncio.create_task(_blackhole(hole)))


async def _blackhole(hole: MediaBlackhole) -> None:
    await hole.start()
    try:
        await asyncio.Event().wait()
    finally:
        await hole.stop()
