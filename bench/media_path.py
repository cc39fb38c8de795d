"""A WebRTC session's per-frame work, without the network: decode → picture →
segment, matte, composite → encoder frame → encode, in both layouts.

    python -m bench.media_path [--size 1280x720] [--frames 300] [--background blur]
                               [--return-kbps 2488,1493] [--static-thresh 1,250]
                               [--decoders libvpx,vp8]

``bgr``: the decoded frame converted to BGR for the pipeline and back to I420
for the encoder (the path before 2026-11-30). ``i420``: the decoder's I420
picture through the whole pipeline, as ``TrackSource`` now reads it. The two
paths take turns frame by frame in one process (a burst of load on the
machine hits both alike), each with its own processor, decoder and encoder,
on the packets of a real clip encoded once as a browser would send it (VP8,
2.5 Mbps). The encoder is aiortc's own, set up as ``live serve`` sets it up
(``fast_codecs``, ``bound_encoders``: its return-video bitrate). Times are
this thread's CPU time (``time.thread_time``): the server's cost per
processed frame minus aiortc's RTP and SRTP work. Each path also reports
what it sends: its bitrate, its largest frame, and the PSNR of the luma a
receiver decodes against the composited picture.

``--return-kbps A,B``: the I420 path at each return-video ceiling instead
(``webrtc.return_bitrate_kbps``), interleaved the same way.
``--static-thresh A,B``: the I420 path with libvpx's static threshold at each
value (``VP8_OPTIONS``; aiortc's own is 1), interleaved the same way.
``--decoders A,B``: the I420 path with each FFmpeg VP8 decoder (``libvpx``,
aiortc's; ``vp8``, FFmpeg's own, the server's since ``fast_codecs``), on one
thread, interleaved the same way; each path also reports whether its
pictures equal the first path's, bit for bit. Otherwise the paths decode as
the server does. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import fractions
import time
from pathlib import Path
from typing import Any, Callable

import cv2  # noqa: F401  (before av: the other order can make OpenCV spin, PyAV #978)
import av
import numpy as np

from bench import DATA, load_frames, psnr, report
from bench.quality import clip_frames
from live.config import Settings, parse_background
from live.frames import I420, Frame
from live.io.webrtc import encoder_frame
from live.pipeline import FrameProcessor

STAGES = ("decode", "picture", "process", "encoder_frame", "encode")


def browser_packets(frames: list[np.ndarray], bitrate: int = 2_500_000) -> list[bytes]:
    """The frames as a browser's VP8 sender would send them (realtime, no lag)."""
    enc = av.CodecContext.create("libvpx", "w")
    h, w = frames[0].shape[:2]
    enc.width, enc.height, enc.bit_rate, enc.pix_fmt = w, h, bitrate, "yuv420p"
    enc.options = {"deadline": "realtime", "cpu-used": "-8", "lag-in-frames": "0"}
    packets = []
    for i, f in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(I420.from_bgr(f).buffer, format="yuv420p")
        vf.pts = i
        packets.extend(bytes(p) for p in enc.encode(vf))
    return packets


def depacketized(mime: str, payloads: list[bytes]) -> bytes:
    """One frame's RTP payloads from aiortc's encoder, as the bitstream a decoder takes."""
    if mime == "video/VP8":
        from aiortc.codecs.vpx import VpxPayloadDescriptor
        return b"".join(VpxPayloadDescriptor.parse(p)[1] for p in payloads)
    from aiortc.codecs.h264 import H264PayloadDescriptor
    return b"".join(H264PayloadDescriptor.parse(p)[1] for p in payloads)


class FramePath:
    """One session's frame path in one layout, each stage timed in thread CPU time.

    The encoder is made with aiortc's encoder bounds as they are when this is
    built (``bound_encoders``)."""

    def __init__(self, layout: str, settings: Settings, size: tuple[int, int],
                 vp8_options: dict[str, str] | None = None, decoder: str | None = None):
        from aiortc.codecs import get_encoder
        from aiortc.codecs.vpx import Vp8Encoder
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters

        from live.io.rtc_media import ffmpeg_vp8_decoder, with_options

        self.layout = layout
        self.processor = FrameProcessor(settings)
        self.processor.segmenter.load(*size)
        if decoder is None:
            self.decoder = ffmpeg_vp8_decoder().codec  # as live serve decodes (fast_codecs)
        else:
            self.decoder = av.CodecContext.create(decoder, "r")
            self.decoder.thread_count = 1
        self.compare_pictures = decoder is not None
        self.pictures: list[int] = []  # a hash of each decoded picture (--decoders)
        self.encoder = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000,
                                                         payloadType=96)) \
            if vp8_options is None else with_options(Vp8Encoder, vp8_options)()
        self.receiver = av.CodecContext.create("libvpx", "r")  # what the page would decode
        self.ms: dict[str, list[float]] = {s: [] for s in STAGES}
        self.sent: list[int] = []  # bytes per frame
        self.psnr: list[float] = []
        self.index = 0

    def _timed(self, stage: str, fn: Callable[[], Any]) -> Any:
        t0 = time.thread_time()
        out = fn()
        self.ms[stage].append((time.thread_time() - t0) * 1e3)
        return out

    def frame(self, packet: bytes) -> None:
        (vf,) = self._timed("decode", lambda: self.decoder.decode(av.Packet(packet)))
        if self.compare_pictures:
            self.pictures.append(hash(vf.to_ndarray().tobytes()))
        if self.layout == "i420":
            image = self._timed("picture", lambda: I420.of_video_frame(vf))
        else:
            image = self._timed("picture", lambda: vf.to_ndarray(format="bgr24"))
        frame = Frame(image, self.index, self.index / 30)
        self.index += 1
        result = self._timed("process", lambda: self.processor.process(frame))
        out = self._timed("encoder_frame", lambda: encoder_frame(result.image))
        out.pts, out.time_base = frame.index * 3000, fractions.Fraction(1, 90_000)
        payloads, _ = self._timed("encode", lambda: self.encoder.encode(out))
        self._received(payloads, result.image)

    def _received(self, payloads: list[bytes], shown: np.ndarray | I420) -> None:
        """Bytes sent, and the decoded luma's PSNR against the picture that was sent."""
        data = depacketized("video/VP8", payloads)
        self.sent.append(len(data))
        luma = shown.y if isinstance(shown, I420) else I420.from_bgr(shown).y
        for vf in self.receiver.decode(av.Packet(data)):
            self.psnr.append(psnr(vf.to_ndarray()[:vf.height], luma))

    def summary(self, skip: int) -> dict[str, Any]:
        per = {s: round(float(np.median(v[skip:])), 3) for s, v in self.ms.items()}
        total = np.sum([v[skip:] for v in self.ms.values()], axis=0)
        return {"stage_cpu_ms_p50": per, "cpu_ms_per_frame_p50": round(float(np.median(total)), 3),
                "cpu_ms_per_frame_mean": round(float(np.mean(total)), 3),
                "sent_kbps": round(float(np.mean(self.sent[skip:])) * 8 * 30 / 1000),
                "max_frame_kb": round(max(self.sent[skip:]) / 1000, 1),
                "psnr_y_db": round(float(np.mean(self.psnr[skip:])), 2)}


def measure() -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--background", default="blur")
    parser.add_argument("--return-kbps", default=None,
                        help="compare the I420 path at these return-video ceilings, e.g. "
                        "2488,1493 (default: BGR against I420 at the setting's default)")
    parser.add_argument("--clip", default=None,
                        help="a video file, or a name in the data's clips/ (default: "
                        "06_pingpong.mp4)")
    parser.add_argument("--static-thresh", default=None,
                        help="compare the I420 path at these libvpx static thresholds, e.g. "
                        "1,250")
    parser.add_argument("--decoders", default=None,
                        help="compare the I420 path with these VP8 decoders: libvpx,vp8")
    args = parser.parse_args()
    if args.decoders and not set(args.decoders.split(",")) <= {"libvpx", "vp8"}:
        parser.error(f"--decoders takes libvpx and/or vp8, got {args.decoders!r}")
    for option, values in (("--return-kbps", args.return_kbps),
                           ("--static-thresh", args.static_thresh)):
        if values and not all(v.isdigit() for v in values.split(",")):
            parser.error(f"{option} takes whole numbers separated by commas, got {values!r}")
    w, h = (int(v) for v in args.size.lower().split("x"))
    if args.clip:
        path = Path(args.clip) if Path(args.clip).is_file() else DATA / "clips" / args.clip
        clip = load_frames(path, 90, (w, h))
    else:
        clip = [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA)
                for f in clip_frames(DATA, 90)]
    packets = browser_packets(clip)
    settings = Settings().merged({"engine": {"name": "selfie"},
                                  "background": parse_background(args.background)})
    from live.io.rtc_media import VP8_OPTIONS, bound_encoders, fast_codecs
    from live.io.worker import limit_threads

    limit_threads(1)  # as a server worker runs its sessions (server.worker_threads)
    fast_codecs()
    bound_encoders(settings.webrtc)  # the server's bounds, unless --return-kbps sets each
    paths: dict[str, FramePath] = {}
    if args.return_kbps:
        for kbps in args.return_kbps.split(","):
            bound_encoders(settings.merged({"webrtc": {"return_bitrate_kbps": int(kbps)}}).webrtc)
            paths[f"i420_{kbps}kbps"] = FramePath("i420", settings, (w, h))
    elif args.static_thresh:
        for value in args.static_thresh.split(","):
            paths[f"i420_static{value}"] = FramePath(
                "i420", settings, (w, h), {**VP8_OPTIONS, "static-thresh": value})
    elif args.decoders:
        for name in args.decoders.split(","):
            paths[f"i420_{name}"] = FramePath("i420", settings, (w, h), decoder=name)
    else:
        paths = {layout: FramePath(layout, settings, (w, h)) for layout in ("bgr", "i420")}
    names = list(paths)
    for i in range(args.frames):  # take turns, the first one alternating
        for name in (names if i % 2 else names[::-1]):
            paths[name].frame(packets[i % len(packets)])
    skip = min(30, args.frames // 4)  # model load and first allocations
    out: dict[str, Any] = {"width": w, "height": h, "frames": args.frames,
                           "clip": args.clip or "06_pingpong.mp4",
                           "background": settings.background.mode}
    for name, path in paths.items():
        out[name] = path.summary(skip)
    if args.decoders:
        for name, path in paths.items():
            out[name]["same_pictures"] = path.pictures == paths[names[0]].pictures
    first, last = out[names[0]], out[names[-1]]
    out[f"{names[-1]}_over_{names[0]}"] = round(last["cpu_ms_per_frame_p50"]
                                                / first["cpu_ms_per_frame_p50"], 3)
    out["saved_ms_p50"] = round(first["cpu_ms_per_frame_p50"] - last["cpu_ms_per_frame_p50"], 3)
    return out


if __name__ == "__main__":
    report(measure)
