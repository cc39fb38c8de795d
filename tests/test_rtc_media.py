"""The operator's video caps reach both ends: the codec the answer puts first, the
bitrate floor and ceiling a browser's sender obeys, and aiortc's encoder bounds.
A real aiortc peer offers to ``live serve``; the browser side is in
test_server_browser.py."""

from __future__ import annotations

import fractions

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.codecs import h264, vpx

from live.serve.client import ControlClient
from live.config import SettingsError
from live.io import rtc_media
from live.io.rtc_media import bound_encoders, prefer_codec, tune_answer
from live.io.webrtc import encoder_frame
from server_helpers import ClipTrack, load_clip, recv_frames, running_server, test_settings
from utils import asynctest


def video_section(sdp: str) -> list[str]:
    lines = sdp.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("m=video"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")),
               len(lines))
    return lines[start:end]


def codec_of(section: list[str], pt: str) -> str:
    return next(ln.split()[1].split("/")[0] for ln in section if ln.startswith(f"a=rtpmap:{pt} "))


@pytest.fixture(autouse=True)
def restore_encoder_bounds():
    """The bounds are process-wide (aiortc's module constants): put them back."""
    saved = [(m, m.MIN_BITRATE, m.MAX_BITRATE, m.DEFAULT_BITRATE) for m in (vpx, h264)]
    yield
    for m, lo, hi, default in saved:
        m.MIN_BITRATE, m.MAX_BITRATE, m.DEFAULT_BITRATE = lo, hi, default


@pytest.mark.parametrize("codec", ["H264", "VP8"])
def test_the_answer_uses_the_operators_codec_and_bitrate_bounds(clip_path, codec):
    frames = load_clip(clip_path, 5)

    @asynctest
    async def scenario() -> None:
        settings = test_settings(webrtc={"codec": codec, "min_bitrate_kbps": 800,
                                         "max_bitrate_kbps": 3000})
        async with running_server(settings) as server:
            async with ControlClient(server.url) as client:
                track = await client.start_video(ClipTrack(frames))  # offers VP8 then H264
                section = video_section(client.answer_sdp)
                assert codec_of(section, section[0].split()[3]) == codec, section[0]
                assert "b=AS:3000" in section and "b=TIAS:3000000" in section
                for line in section:
                    if line.startswith("a=rtpmap:") and "rtx/" not in line:
                        pt = line.split()[0].split(":")[1]
                        fmtp = next(ln for ln in section if ln.startswith(f"a=fmtp:{pt} "))
                        assert ("x-google-min-bitrate=800;x-google-start-bitrate=3000;"
                                "x-google-max-bitrate=3000") in fmtp, fmtp
                got = await recv_frames(track, 5)  # and the video flows with it both ways
                assert got[-1].shape == frames[0].shape
                # the video sent back: 60 % of the ceiling (the composited picture is easier)
                assert (vpx.MIN_BITRATE, vpx.MAX_BITRATE) == (800_000, 1_800_000)
                assert (h264.MIN_BITRATE, h264.DEFAULT_BITRATE) == (800_000, 1_800_000)

    scenario()


def test_an_offer_without_the_codec_keeps_its_order():
    @asynctest
    async def offer(codec: str | None) -> str:
        pc = RTCPeerConnection()
        transceiver = pc.addTransceiver("video")
        if codec:
            transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video")
                                             .codecs if c.mimeType == f"video/{codec}"])
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    vp8_only = offer("VP8")
    assert prefer_codec(vp8_only, "H264") == vp8_only
    both = offer(None)
    reordered = video_section(prefer_codec(both, "H264"))
    assert codec_of(reordered, reordered[0].split()[3]) == "H264"
    rtpmaps = [ln for ln in reordered if ln.startswith("a=rtpmap:")]
    assert "H264" in rtpmaps[0] and sorted(reordered) != sorted(video_section(both))
    assert sorted(video_section(both)[1:]) == sorted(reordered[1:])  # only the order changed
    # Without a video section, nothing to tune.
    assert tune_answer("v=0\r\n", test_settings().webrtc) == "v=0\r\n"


def test_the_caps_are_the_operators_and_checked():
    with pytest.raises(SettingsError, match="min_bitrate_kbps"):
        test_settings(webrtc={"min_bitrate_kbps": 3000, "max_bitrate_kbps": 1000})
    with pytest.raises(SettingsError, match="min_bitrate_kbps"):  # over the sized ceiling
        test_settings(webrtc={"min_bitrate_kbps": 3000})
    # Left to their defaults, the bounds follow the size (a slow link lowers the size).
    small = test_settings(webrtc={"max_width": 640, "max_height": 360}).webrtc.resolved()
    assert (small.min_bitrate_kbps, small.max_bitrate_kbps) == (249, 622)
    assert small.return_bitrate_kbps == 373
    own = test_settings(webrtc={"return_bitrate_kbps": 200}).webrtc  # an operator's own
    bound_encoders(own)
    assert (vpx.MIN_BITRATE, vpx.MAX_BITRATE) == (200_000, 200_000)  # never a floor above it

    @asynctest
    async def scenario() -> None:
        async with running_server() as server:
            async with ControlClient(server.url) as client:
                hello = await client.request("hello")
                caps = hello["webrtc"]  # the page sizes its camera and sender by them
                assert (caps["max_width"], caps["max_height"]) == (1280, 720)
                assert (caps["min_bitrate_kbps"], caps["max_bitrate_kbps"]) == (995, 2488)
                reply = await client.request("settings.set",
                                             settings={"webrtc": {"max_bitrate_kbps": 50_000}})
                assert reply["type"] == "error" and "cannot be changed" in reply["error"]

    scenario()


def encode_with(mime: str, frames: list[np.ndarray]) -> list[bytes]:
    """What a real aiortc encoder for ``mime``, from aiortc's own factory, made of
    ``frames``."""
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    encoder = get_encoder(RTCRtpCodecParameters(mimeType=mime, clockRate=90000,
                                                payloadType=102))
    out = []
    for i, image in enumerate(frames):
        frame = encoder_frame(image)
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame)
        out.append(b"".join(payloads))
    return out


def test_h264_answers_encode_at_the_fast_preset_with_deblocking():
    rtc_media.fast_codecs()
    rtc_media.fast_codecs()  # twice is once
    (stream,) = encode_with("video/H264", [np.full((240, 320, 3), 90, np.uint8)])
    assert stream, "no H.264 came out"
    # x264 writes its settings into the first keyframe: ultrafast's motion search
    # (me=dia, subme=0) rather than medium's (me=hex, subme=7), but with the
    # deblocking filter that ultrafast alone turns off (deblock=0:...), the 4x4
    # intra partitions in P frames (analyse=<intra>:0x1), and aiortc's own
    # zero-latency tune still there (sliced threads, no B-frames)
    assert b"me=dia subme=0" in stream, stream[:800]
    assert b"deblock=1:0:0" in stream and b"analyse=0:0x1" in stream, stream[:800]
    assert b"sliced_threads=1" in stream and b"bframes=0" in stream


def vp8_controls(encoder_class: type, size: tuple[int, int] = (320, 240)) -> dict[str, str]:
    """The speed, denoiser and static-threshold controls libvpx was opened with, from FFmpeg's own
    debug log of each control it sets (VP8's bitstream does not carry them)."""
    import av.logging

    av.logging.set_level(av.logging.DEBUG)
    try:
        with av.logging.Capture() as logs:
            frame = encoder_frame(np.full((size[1], size[0], 3), 90, np.uint8))
            frame.pts, frame.time_base = 0, fractions.Fraction(1, 90000)
            assert encoder_class().encode(frame)[0], "no VP8 came out"
    finally:
        av.logging.set_level(None)
    controls = {}
    for _, _, line in logs:
        name, _, value = line.strip().partition(":")
        if name in ("VP8E_SET_CPUUSED", "VP8E_SET_NOISE_SENSITIVITY",
                    "VP8E_SET_STATIC_THRESHOLD"):
            controls[name] = value.strip()
    return controls


def test_vp8_encodes_at_the_fast_speed_without_the_denoiser():
    import aiortc.codecs
    from aiortc.codecs.vpx import Vp8Encoder

    assert vp8_controls(Vp8Encoder) == {"VP8E_SET_CPUUSED": "-6",  # aiortc's own
                                        "VP8E_SET_NOISE_SENSITIVITY": "4",
                                        "VP8E_SET_STATIC_THRESHOLD": "1"}
    rtc_media.fast_codecs()
    fast = aiortc.codecs.Vp8Encoder  # what aiortc's get_encoder builds from now on
    assert vp8_controls(fast) == {"VP8E_SET_CPUUSED": rtc_media.VP8_OPTIONS["cpu-used"],
                                  "VP8E_SET_NOISE_SENSITIVITY": "0",
                                  "VP8E_SET_STATIC_THRESHOLD": "250"}
    # from 720p up, where the encoder costs most, a higher static threshold
    assert vp8_controls(fast, (1280, 720)) == {
        "VP8E_SET_CPUUSED": rtc_media.VP8_OPTIONS["cpu-used"],
        "VP8E_SET_NOISE_SENSITIVITY": "0", "VP8E_SET_STATIC_THRESHOLD": "500"}
    assert vp8_controls(fast, (1024, 576))["VP8E_SET_STATIC_THRESHOLD"] == "250"


def test_vp8_is_decoded_by_ffmpegs_own_decoder_into_the_same_pictures():
    """``fast_codecs`` swaps aiortc's libvpx decoder for FFmpeg's (a quarter of a
    millisecond less per 720p frame): VP8 decoding is exact, so a moving, textured
    stream must decode to the same pictures, bit for bit, keyframe or not."""
    import aiortc.codecs
    import av
    from aiortc.codecs.vpx import VpxPayloadDescriptor
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    rng = np.random.default_rng(3)
    texture = rng.integers(0, 255, (480, 640, 3), np.uint8)
    frames = [np.roll(texture, 7 * i, axis=1)[:240, :320] for i in range(12)]
    rtc_media.fast_codecs()
    encoder = aiortc.codecs.get_encoder(RTCRtpCodecParameters(mimeType="video/VP8",
                                                              clockRate=90000, payloadType=96))
    stream = []
    for i, image in enumerate(frames):
        frame = encoder_frame(image)
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=i == 6)
        stream.append(b"".join(VpxPayloadDescriptor.parse(p)[1] for p in payloads))
    ours = aiortc.codecs.get_decoder(RTCRtpCodecParameters(mimeType="video/VP8",
                                                           clockRate=90000, payloadType=96))
    assert ours.codec.name == "vp8" and ours.codec.thread_count == 1
    libvpx = av.CodecContext.create("libvpx", "r")
    for i, data in enumerate(stream):
        (mine,) = ours.decode(JitterFrame(data=data, timestamp=i * 3000))
        (theirs,) = libvpx.decode(av.Packet(data))
        assert np.array_equal(mine.to_ndarray(), theirs.to_ndarray()), f"frame {i}"
