"""The video sent back, encoder setting by setting: what each costs the server
per frame, and what it costs the picture.

    python -m bench.encoders [--clip 06_pingpong.mp4] [--size 1280x720] [--frames 120]
                             [--settings vp8,h264,h264-superfast,h264-ultrafast]

The clip goes through the pipeline once (selfie engine, blurred background,
I420 frames as a browser's decoder gives them), and every setting encodes
the same composited pictures with aiortc's own encoder class, tuned as
``fast_codecs`` tunes it (``with_options``) and bounded as ``live serve``
bounds it (``bound_encoders``: the return video's bitrate). The settings
take turns in blocks of ``BLOCK`` frames, so a burst of load hits them alike.
Per setting:
* the encoder's CPU per frame: the process's CPU time over a block, over its
  frames, median of the blocks (x264 encodes slices on threads of its own,
  whose time a clock read around one call misses while they still run);
* the bitrate it sent;
* the luma a receiver decodes against the picture that was sent: PSNR, and
  SSIM with the usual 11-tap Gaussian window, which sees blocking and lost
  detail that PSNR averages away.
Prints one JSON object as its last line.

``vp8`` and ``h264`` are the server's settings (``vp8_options``,
``H264_OPTIONS``); ``h264-superfast`` is the H.264 setting before 2026-11-30,
``h264-ultrafast`` x264's fastest preset as it comes (no deblocking filter),
``vp8-static250`` VP8 with the static threshold smaller frames get (at 720p
and above the server's is 500 since 2026-11-30: ``vp8_options``).
"""

from __future__ import annotations

import argparse
import fractions
import resource
import time
from pathlib import Path
from typing import Any

import cv2  # noqa: F401  (before av: the other order can make OpenCV spin, PyAV #978)
import av
import numpy as np

from bench import DATA, load_frames, psnr, report, ssim
from bench.media_path import depacketized
from live.config import Settings
from live.frames import I420, Frame
from live.io.rtc_media import VP8_OPTIONS
from live.io.webrtc import encoder_frame
from live.pipeline import FrameProcessor

#: name -> (mime type, the options laid over aiortc's own); None: the server's own.
SETTINGS: dict[str, tuple[str, dict[str, str] | None]] = {
    "vp8": ("video/VP8", None),
    "h264": ("video/H264", None),
    "h264-superfast": ("video/H264", {"preset": "superfast"}),
    "h264-ultrafast": ("video/H264", {"preset": "ultrafast"}),
    "vp8-static250": ("video/VP8", VP8_OPTIONS),
}
BLOCK = 10  # frames each setting encodes in its turn


def own_cpu_seconds() -> float:
    """This process's CPU time, every thread's, once its threads have settled.

    (Not ``bench.cpu_seconds``: psutil reads /proc in 10 ms clock ticks, the
    length of a whole block here; getrusage counts the scheduler's own time.)"""
    time.sleep(0.002)  # a helper thread still finishing is counted when it sleeps
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Encoded:
    """One setting: aiortc's encoder, and a decoder standing in for the page."""

    def __init__(self, mime: str, options: dict[str, str] | None):
        from aiortc.codecs import get_encoder
        from aiortc.codecs.h264 import H264Encoder
        from aiortc.codecs.vpx import Vp8Encoder
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters

        from live.io.rtc_media import with_options

        self.mime = mime
        vp8 = mime == "video/VP8"
        if options is None:  # as the server makes it (fast_codecs has run)
            self.encoder = get_encoder(RTCRtpCodecParameters(mimeType=mime, clockRate=90_000,
                                                             payloadType=96))
        else:
            self.encoder = with_options(Vp8Encoder if vp8 else H264Encoder, options)()
        self.decoder = av.CodecContext.create("vp8" if vp8 else "h264", "r")
        self.cpu_ms: list[float] = []
        self.sent: list[int] = []
        self.psnr: list[float] = []
        self.ssim: list[float] = []

    def block(self, pictures: list[I420], first: int, measure_ssim: bool) -> None:
        """Encode ``pictures`` (frame numbers from ``first``), timed as one block;
        then decode what was sent and compare it with the pictures."""
        frames = []
        for i, picture in enumerate(pictures):
            vf = encoder_frame(picture.copy())
            vf.pts, vf.time_base = (first + i) * 3000, fractions.Fraction(1, 90_000)
            frames.append(vf)
        t0 = own_cpu_seconds()
        sent = [self.encoder.encode(vf)[0] for vf in frames]
        self.cpu_ms.append((own_cpu_seconds() - t0) * 1e3 / len(frames))
        for picture, payloads in zip(pictures, sent):
            data = depacketized(self.mime, payloads)
            self.sent.append(len(data))
            for out in self.decoder.decode(av.Packet(data)) if data else []:
                y = out.to_ndarray()[:out.height]
                self.psnr.append(psnr(y, picture.y))
                if measure_ssim:
                    self.ssim.append(ssim(y, picture.y))

    def summary(self) -> dict[str, Any]:
        """The first block (a keyframe, the rate control settling) is not counted."""
        return {"cpu_ms_p50": round(float(np.median(self.cpu_ms[1:])), 3),
                "cpu_ms_mean": round(float(np.mean(self.cpu_ms[1:])), 3),
                "sent_kbps": round(float(np.mean(self.sent[BLOCK:])) * 8 * 30 / 1000),
                "psnr_y_db": round(float(np.mean(self.psnr[BLOCK:])), 2),
                "ssim_y": round(float(np.mean(self.ssim)), 4)}


def measure() -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clip", default="06_pingpong.mp4",
                        help="a video file, or a name in the data's clips/")
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--settings", default="vp8,h264,h264-superfast,h264-ultrafast")
    args = parser.parse_args()
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}: choose from {', '.join(SETTINGS)}")
    if args.frames < 3 * BLOCK:
        raise SystemExit(f"--frames must be at least {3 * BLOCK} (the first {BLOCK} are not "
                         "counted)")
    w, h = (int(v) for v in args.size.lower().split("x"))
    path = Path(args.clip) if Path(args.clip).is_file() else DATA / "clips" / args.clip
    if not path.is_file():
        raise SystemExit(f"clip not found: {path} (set LIVE_DATA_DIR or pass --clip)")

    from live.io.rtc_media import bound_encoders, fast_codecs
    from live.io.worker import limit_threads

    limit_threads(1)  # as a server worker runs its sessions
    settings = Settings().merged({"engine": {"name": "selfie"}})
    fast_codecs()
    bound_encoders(settings.webrtc)
    processor = FrameProcessor(settings)
    processor.segmenter.load(w, h)
    pictures = []
    for i, bgr in enumerate(load_frames(path, args.frames, (w, h))):
        image = processor.process(Frame(I420.from_bgr(bgr), i, i / 30)).image
        pictures.append(image if isinstance(image, I420) else I420.from_bgr(image))
    encoders = {name: Encoded(*SETTINGS[name]) for name in names}
    for b, first in enumerate(range(0, len(pictures), BLOCK)):  # take turns, alternating
        for name in (names if b % 2 else names[::-1]):
            encoders[name].block(pictures[first:first + BLOCK], first, measure_ssim=b > 0)
    return {"clip": path.name, "size": f"{w}x{h}", "frames": len(pictures),
            "return_kbps": settings.webrtc.resolved().return_bitrate_kbps,
            "settings": {name: e.summary() for name, e in encoders.items()}}


if __name__ == "__main__":
    report(measure)
