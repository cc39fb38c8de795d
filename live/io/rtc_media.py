"""What a browser peer's video may cost: the codec, and bitrate bounds both ways.

Left alone, a 1280x720 camera reaches the server at 320x180 within ~15 s:
Chrome's bandwidth estimate starts near 300 kbps and follows the REMB that
aiortc's receiver sends (the throughput it measured, which starts as low as
Chrome's start and drops whenever the event loop is late), and Chrome scales
the picture down to fit (``qualityLimitationReason: "bandwidth"``). The way
back is as thin: aiortc's VP8 encoder starts at 0.5 Mbps and stops at 1.5.
WebRTC applications widen both with the same tools, gathered here:

* the offer's video codecs reordered so the answer, hence both senders, use
  the operator's codec (``prefer_codec``);
* in the answer, ``b=AS``/``b=TIAS`` (ceiling) and Chrome's
  ``x-google-min/start/max-bitrate`` on each video codec: Chrome's sender starts
  at the ceiling and never estimates below the floor, so the resolution holds
  (``tune_answer``); the page adds its own sender limits (web_client/app.js);
* aiortc's encoders start at the return video's ceiling (60 % of the
  camera's by default: the composited picture needs fewer bits) and follow the
  browser's REMB only between floor and that ceiling (``bound_encoders``);
* its H.264 encoder runs x264 at its fastest preset with the deblocking filter
  put back, rather than x264's default (a sixth of the CPU; the SSIM, within
  0.0002, of the "superfast" it replaced), its VP8 encoder libvpx at a faster speed
  without the denoiser (two thirds of the CPU, no lower PSNR), and the VP8
  coming in is decoded by FFmpeg's own decoder (the same pictures, a fifth
  less CPU): ``fast_codecs``.

The ceiling is sized to the largest picture (0.09 bits per pixel at 30 fps:
2.5 Mbps at 1280x720), the floor is 40 % of it; an operator on a slow link
lowers the size or the bitrates (``[webrtc]`` in live/config.py). If the
server cannot keep up, frames are dropped at the pipeline's mailbox, never the
resolution. Measured with ``python -m bench.browser`` (chromium, 1280x720
camera, 2 loaded cores, 2026-11-29): before, the page got 640x360 back in 100 %
of samples after the first 5 s (the sender "bandwidth"-limited at 353 kbps);
after, 1280x720 in 100 % of samples, from the first frame.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from live.config import WebRTCSettings

#: Payload formats that are not a picture codec (no bitrate of their own).
_NOT_CODECS = {"rtx", "red", "ulpfec", "flexfec-03"}
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^/]+)/")
_PT_LINE = re.compile(r"^a=(?:rtpmap|fmtp|rtcp-fb):(\d+) ")


def prefer_codec(offer_sdp: str, codec: str) -> str:
    """``offer_sdp`` with ``codec``'s payload types first in the video section.

    aiortc answers in the order of the offer's rtpmap lines, and both ends send
    with the answer's first codec, so the m-line and the payload types' lines
    are both reordered. A browser that does not offer ``codec`` keeps its order.
    """
    def reorder(section: list[str]) -> list[str]:
        names = _payload_names(section)
        m_line = section[0].split()
        formats = m_line[3:]
        first = [pt for pt in formats if names.get(pt, "").upper() == codec.upper()]
        order = first + [pt for pt in formats if pt not in first]
        section[0] = " ".join(m_line[:3] + order)
        per_pt: dict[str, list[str]] = {pt: [] for pt in order}
        rest: list[str] = []
        at = None
        for line in section[1:]:
            m = _PT_LINE.match(line)
            if m and m.group(1) in per_pt:
                at = len(rest) if at is None else at
                per_pt[m.group(1)].append(line)
            else:
                rest.append(line)
        at = len(rest) if at is None else at
        return [section[0], *rest[:at], *(ln for pt in order for ln in per_pt[pt]), *rest[at:]]

    return _edit_video(offer_sdp, reorder)


def tune_answer(answer_sdp: str, rtc: WebRTCSettings) -> str:
    """``answer_sdp`` with the bitrate ceiling and floor the browser's sender obeys."""
    rtc = rtc.resolved()
    lo, hi = rtc.min_bitrate_kbps, rtc.max_bitrate_kbps
    google = f"x-google-min-bitrate={lo};x-google-start-bitrate={hi};x-google-max-bitrate={hi}"

    def tune(section: list[str]) -> list[str]:
        names = _payload_names(section)
        codecs = [pt for pt, name in names.items() if name.lower() not in _NOT_CODECS]
        out = [line for line in section if not line.startswith("b=")]
        at = next((i + 1 for i, line in enumerate(out) if line.startswith("c=")), 1)
        out[at:at] = [f"b=AS:{hi}", f"b=TIAS:{hi * 1000}"]
        for pt in codecs:
            fmtp = next((i for i, line in enumerate(out) if line.startswith(f"a=fmtp:{pt} ")),
                        None)
            if fmtp is not None:
                out[fmtp] += ";" + google
            else:
                rtpmap = next(i for i, line in enumerate(out)
                              if line.startswith(f"a=rtpmap:{pt} "))
                out.insert(rtpmap + 1, f"a=fmtp:{pt} {google}")
        return out

    return _edit_video(answer_sdp, tune)


def bound_encoders(rtc: WebRTCSettings) -> None:
    """aiortc's VP8 and H.264 encoders: start at the return video's ceiling, follow
    REMB between floor and that ceiling.

    aiortc has no per-sender API for this (its maintainer, aiortc#402): the
    codec modules' constants are the knob, so the bounds hold for the whole
    process, which is why they are the operator's settings and not a page's.
    """
    from aiortc.codecs import h264, vpx

    rtc = rtc.resolved()
    back = rtc.return_bitrate_kbps * 1000  # type: ignore[operator]
    for module in (vpx, h264):
        module.MIN_BITRATE = min(rtc.min_bitrate_kbps * 1000, back)  # type: ignore[operator]
        module.MAX_BITRATE = module.DEFAULT_BITRATE = back


#: x264's settings for the video sent back. aiortc leaves x264 at its default,
#: "medium": 17 ms per 1280x720 frame at 1 Mbps here (28 ms at 2.5 Mbps).
#: With aiortc's baseline profile and zerolatency tune every preset gave the
#: same PSNR on a real clip (34.8-35.0 dB at 1 Mbps, 38.8-39.3 at 2.5), and
#: "superfast" took 4.2 ms (5.2): a quarter of the CPU. "ultrafast" alone
#: drops x264's deblocking filter, and its blocks show, so the filter is
#: turned back on, with the 4x4 intra partitions that keep detail at
#: edges. On the composited 720p picture of the four shared clips at the
#: return bitrate (1.5 Mbps) that takes 2.7-3.1 ms a frame against
#: superfast's 4.2-4.7 (1.3-2.0 ms less), at an SSIM higher on three clips
#: and 0.0002 lower on the fourth; without the filter SSIM falls 0.005-0.016
#: (``python -m bench.encoders --clip C``, 2026-11-30).
H264_OPTIONS = {"preset": "ultrafast", "x264-params": "deblock=0,0:partitions=i4x4"}

#: libvpx's VP8 options for the video sent back, over aiortc's. aiortc asks for
#: speed 6 ("cpu-used" -6) with libvpx's temporal denoiser on
#: ("noise-sensitivity" 4): 6.6 ms per 1280x720 frame at 2.5 Mbps here. The
#: denoiser alone cost 1.4-1.7 ms, and a composited picture (a blurred or
#: still background) has no sensor noise to remove; speed 14 saves 0.4-1 ms
#: more. Together 4.2 ms (1.3 against 2.2 at 640x480), and PSNR against the
#: clip went up, not down: 44.5 against 42.9 dB at 2.5 Mbps, 40.3 against
#: 40.0 at 1 Mbps (the denoiser smooths what PSNR counts). Speed 16 lost
#: another 0.5-1 dB for 0.2-0.3 ms. (Clip 06_pingpong, 90 frames, 2026-11-29.)
#:
#: "static-thresh" 250 (aiortc, like Chrome for a camera, asks for 1): a
#: macroblock whose best prediction is within 250 summed squared levels of
#: the picture (about one grey level rms over its 16x16 pixels) is sent as it
#: is predicted, without its residual or a further search. A blurred
#: background is mostly such blocks, and the error of a skipped block is
#: bounded by the threshold against the picture itself, so it cannot build up
#: from frame to frame. 720p with a blurred background, the four shared clips:
#: the encoder 0.2-0.9 ms a frame cheaper (a session's whole path 0.93-0.98x),
#: PSNR 0.05-0.3 dB lower at 46-49 dB; 640x480 0.4 ms and 0.5 dB at 51 dB; a
#: still image background is coded as before (python -m bench.media_path
#: --static-thresh 1,250 [--clip C] [--size S], 2026-11-30).
VP8_OPTIONS = {"cpu-used": "-14", "noise-sensitivity": "0", "static-thresh": "250"}
#: Over ``VP8_OPTIONS`` from 1280x720 up, where the encoder is the session's
#: largest cost after the model: a static threshold of 500 (about 1.4 grey
#: levels rms over a block) took 0.25-0.47 ms more off a 720p frame's encode
#: on three of the four clips (0.08 on the fourth), for 0.2-1.0 dB of PSNR at
#: 45-49 dB and SSIM within 0.0005 of 250's. At 640x480 it saved 0.03-0.11
#: ms for 1.2-1.3 dB, so smaller frames keep 250. (bench.media_path
#: --static-thresh 250,500 and bench.encoders --settings vp8,vp8-static250,
#: 2026-11-30: README, "Scaling".)
VP8_HD_OPTIONS = {"static-thresh": "500"}
HD_PIXELS = 1280 * 720


def vp8_options(width: int, height: int) -> dict[str, str]:
    """libvpx's options for the video sent back at width x height (over aiortc's)."""
    return {**VP8_OPTIONS, **(VP8_HD_OPTIONS if width * height >= HD_PIXELS else {})}


def fast_codecs() -> None:
    """Every VP8 and H.264 encoder this process makes from now on uses
    ``vp8_options`` / ``H264_OPTIONS`` over aiortc's own, and every VP8 decoder
    comes from ``ffmpeg_vp8_decoder``.

    aiortc builds its codecs through ``aiortc.codecs.get_encoder`` and
    ``get_decoder``, which take the classes from their module, and sets an
    encoder's options itself right before opening it: so the classes are
    swapped there, and our options are laid over whenever the not-yet-open
    codec is touched (the last touch before it opens is the encode call).
    """
    import aiortc.codecs
    from aiortc.codecs.h264 import H264Encoder
    from aiortc.codecs.vpx import Vp8Encoder

    if aiortc.codecs.H264Encoder is H264Encoder:  # once per process
        aiortc.codecs.H264Encoder = with_options(H264Encoder, H264_OPTIONS)  # type: ignore
    if aiortc.codecs.Vp8Encoder is Vp8Encoder:
        aiortc.codecs.Vp8Encoder = with_options(Vp8Encoder, vp8_options)  # type: ignore
    aiortc.codecs.Vp8Decoder = ffmpeg_vp8_decoder  # type: ignore[misc]


def ffmpeg_vp8_decoder() -> Any:
    """aiortc's VP8 decoder on FFmpeg's own decoder instead of libvpx, on one thread.

    VP8 decoding is exact, so both give the same pictures, bit for bit; FFmpeg's
    takes a quarter of a millisecond less per 1280x720 frame of a 2.5 Mbps
    camera stream here (1.12 -> 0.86 ms on 06_pingpong, 1.38 -> 1.12 on
    carphone_pristine: ``python -m bench.media_path --decoders libvpx,vp8
    [--clip C]``, 2026-11-30). A browser's VP8 has one partition, so decoding
    threads have nothing to share: one thread.
    """
    import av
    from aiortc.codecs.vpx import Vp8Decoder

    decoder = Vp8Decoder.__new__(Vp8Decoder)
    decoder.codec = av.CodecContext.create("vp8", "r")
    decoder.codec.thread_count = 1
    return decoder


def with_options(encoder: type,
                 options: dict[str, str] | Callable[[int, int], dict[str, str]]) -> type:
    """A subclass of aiortc's ``encoder`` whose codec opens with ``options`` too
    (or with ``options(width, height)``, for the size it opens at)."""

    class Tuned(encoder):  # type: ignore[valid-type, misc]
        @property
        def codec(self) -> Any:
            ctx = self.__dict__.get("_ctx")
            if ctx is not None and not ctx.is_open:
                extra = options(ctx.width, ctx.height) if callable(options) else options
                ctx.options = {**ctx.options, **extra}
            return ctx

        @codec.setter
        def codec(self, ctx: Any) -> None:
            self.__dict__["_ctx"] = ctx

    Tuned.__name__ = Tuned.__qualname__ = f"Tuned{encoder.__name__}"
    return Tuned


def _payload_names(section: list[str]) -> dict[str, str]:
    """Payload type → codec name, from a media section's rtpmap lines."""
    return {m.group(1): m.group(2) for line in section if (m := _RTPMAP.match(line))}


def _edit_video(sdp: str, edit: Callable[[list[str]], list[str]]) -> str:
    """``sdp`` with ``edit`` applied to each video media section (its lines)."""
    eol = "\r\n" if "\r\n" in sdp else "\n"
    sections: list[list[str]] = [[]]
    for line in sdp.split(eol):
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    for i, section in enumerate(sections):
        if section and section[0].startswith("m=video"):
            sections[i] = edit(section)
    return eol.join(line for section in sections for line in section)
