"""WebRTC loopback latency: what processing adds over a pass-through server.

    python -m bench.webrtc [--size 1280x720] [--frames 300] [--fps 30] [--codec VP8|H264]

An aiortc client (this process) sends a real clip to a ``live serve`` server
(a child process, as a browser and the server would be) and receives the
processed track. Each sent frame carries its index in two rows of big black
and white blocks (top row: the index, bottom row: its complement, to reject
misreads); big blocks survive the codec and the background blur, so the
frame that comes back is matched to the one that went out.

The same frames then go through a second server started with processing
disabled (``ControlServer(passthrough=True)``: same code, frames returned
untouched). ``added_latency_ms`` is, per frame index, the processed round
trip minus the pass-through round trip. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2  # noqa: F401  (before av: the other order can make OpenCV spin, PyAV #978)
import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench import DATA, load_frames, report
from live.serve.client import ControlClient

BITS = 16


def stamp(image: np.ndarray, index: int) -> np.ndarray:
    """Write ``index`` into the top block row and its complement into the bottom row."""
    h, w = image.shape[:2]
    block = w // BITS
    out = image.copy()
    for bit in range(BITS):
        on = (index >> bit) & 1
        x = bit * block
        out[:block, x:x + block] = 255 if on else 0
        out[h - block:, x:x + block] = 0 if on else 255
    return out


def read_stamp(image: np.ndarray) -> int | None:
    """The index stamped in ``image``, or None if the two rows disagree (a misread)."""
    h, w = image.shape[:2]
    block = w // BITS
    c, r = block // 2, max(2, block // 8)
    index = check = 0
    for bit in range(BITS):
        x = bit * block + c
        top = image[c - r:c + r, x - r:x + r].mean()
        bottom = image[h - block + c - r:h - block + c + r, x - r:x + r].mean()
        index |= int(top > 127) << bit
        check |= int(bottom > 127) << bit
    return index if index ^ check == (1 << BITS) - 1 else None


RTP_HZ = 90_000  # the video clock


def paced_track(fps: float, make: Callable[[int], Any], count: int = 1 << 20) -> Any:
    """A video track that hands aiortc ``make(i)`` for i = 0, 1, … ``count`` - 1 at
    ``fps``, and notes when (``sent[i]``, monotonic). ``make`` gives a frame (aiortc
    encodes it) or an encoded packet (aiortc only packetizes it)."""

    class Paced(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.sent: dict[int, float] = {}
            self.t0: float | None = None
            self.ticks = round(RTP_HZ / fps)  # per frame

        async def recv(self) -> Any:
            i = len(self.sent)
            if self.readyState != "live" or i >= count:
                raise MediaStreamError
            self.t0 = self.t0 or time.monotonic()
            await asyncio.sleep(max(0.0, self.t0 + i / fps - time.monotonic()))
            data = make(i)
            data.pts, data.time_base = i * self.ticks, Fraction(1, RTP_HZ)
            self.sent[i] = time.monotonic()  # handed to the encoder now
            return data

    return Paced()


def stamped_clip(frames: list[np.ndarray], count: int, fps: float) -> Any:
    """A paced camera stand-in: clip frames (looped) stamped with their index."""
    return paced_track(fps, lambda i: av.VideoFrame.from_ndarray(
        stamp(frames[i % len(frames)], i), format="bgr24"), count)


async def returned(remote: Any, sent: dict[int, float], deadline: float,
                   done: Callable[[], bool] = lambda: False,
                   index_of: Callable[[Any], int | None] | None = None) -> dict[int, float]:
    """When each stamped frame first came back on ``remote``, by index: until
    ``deadline`` (monotonic), ``done()``, or 5 s without a frame. ``index_of`` reads
    a frame's index (default: its stamp, from the luma, which is enough and cheap)."""
    index_of = index_of or (lambda vf: read_stamp(vf.to_ndarray(format="gray")))
    received: dict[int, float] = {}
    while time.monotonic() < deadline and not done():
        try:
            vf = await asyncio.wait_for(remote.recv(), 5.0)
        except (asyncio.TimeoutError, MediaStreamError):
            break
        now = time.monotonic()
        index = index_of(vf)
        if index is not None and index in sent:
            received.setdefault(index, now)
    return received


def start_server(passthrough: bool, module: str = "bench.webrtc",
                 args: Sequence[str] = ()) -> tuple[subprocess.Popen[str], str]:
    """A child ``live`` server on a free port (``module --serve [args]``, which prints
    ``live: serving on URL`` first); returns it and its URL."""
    cmd = [sys.executable, "-m", module, "--serve", *args] + (["--passthrough"] if passthrough
                                                              else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    prefix = "live: serving on "
    if not line.startswith(prefix):
        proc.kill()
        raise RuntimeError(f"benchmark server did not start: {line!r}")
    return proc, line[len(prefix):].strip()


async def measure(url: str, frames: list[np.ndarray], count: int, fps: float,
                  codec: str | None) -> dict[str, Any]:
    """Send ``count`` stamped frames, collect what comes back: per-index round trips."""
    track = stamped_clip(frames, count, fps)
    received: dict[int, float] = {}
    misread = 0
    async with ControlClient(url) as client:
        remote = await client.start_video(track, codec=codec)
        first = last = None
        while True:
            timeout = 5.0 if received else 30.0
            try:
                vf = await asyncio.wait_for(remote.recv(), timeout)
            except (asyncio.TimeoutError, MediaStreamError):
                break
            now = time.monotonic()
            index = read_stamp(vf.to_ndarray(format="bgr24"))
            if index is None or index not in track.sent:
                misread += 1
                continue
            received.setdefault(index, now)
            first = first or now
            last = now
            if len(track.sent) >= count and index >= count - 1:
                break
        stats = await client.request("stats")
        codec_used = _negotiated_codec(client.pc)
    roundtrip = {i: (t - track.sent[i]) * 1e3 for i, t in received.items()}
    span = (last - first) if first and last and last > first else float("nan")
    return {"sent": len(track.sent), "roundtrip": roundtrip, "misread": misread,
            "fps": (len(received) - 1) / span if span == span else 0.0,
            "server": stats.get("stats", {}), "codec": codec_used}


def _negotiated_codec(pc: Any) -> str | None:
    """The first video codec of the server's answer: the one both sides use."""
    if pc is None or pc.remoteDescription is None:
        return None
    lines = pc.remoteDescription.sdp.splitlines()
    video = next((ln for ln in lines if ln.startswith("m=video")), None)
    if video is None or len(video.split()) < 4:
        return None
    payload = video.split()[3]
    for ln in lines:
        if ln.startswith(f"a=rtpmap:{payload} "):
            return ln.split()[1].split("/")[0]
    return None


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    w, h = (int(v) for v in args.size.lower().split("x"))
    frames = load_frames(Path(args.clip), 120, (w, h))
    results = {}
    for name, passthrough in (("passthrough", True), ("processed", False)):
        proc, url = start_server(passthrough)
        try:
            results[name] = await measure(url, frames, args.frames, args.fps, args.codec)
        finally:
            proc.terminate()
            proc.wait(10)
    proc_rt, pass_rt = results["processed"]["roundtrip"], results["passthrough"]["roundtrip"]
    both = sorted(set(proc_rt) & set(pass_rt))
    added = [proc_rt[i] - pass_rt[i] for i in both]
    server = results["processed"]["server"]
    return {
        "width": w, "height": h, "fps_target": args.fps,
        "codec": results["processed"]["codec"] or args.codec or "negotiated",
        "frames_sent": results["processed"]["sent"],
        "frames_received": len(proc_rt),
        "passthrough_frames_received": len(pass_rt),
        "roundtrip_ms_p50": pct(list(proc_rt.values()), 50),
        "roundtrip_ms_p95": pct(list(proc_rt.values()), 95),
        "passthrough_roundtrip_ms_p50": pct(list(pass_rt.values()), 50),
        "passthrough_roundtrip_ms_p95": pct(list(pass_rt.values()), 95),
        "added_latency_ms_p50": pct(added, 50),
        "added_latency_ms_p95": pct(added, 95),
        "frames_compared": len(both),
        "fps": round(results["processed"]["fps"], 1),
        "passthrough_fps": round(results["passthrough"]["fps"], 1),
        "misread_frames": results["processed"]["misread"] + results["passthrough"]["misread"],
        "server_stage_ms_p50": {k: v["p50"] for k, v in server.get("stage_ms", {}).items()},
        # arrival → output inside the server, as its pipeline measures it
        "server_latency_ms_p50": server.get("mask_age_ms"),
        "passthrough_server_latency_ms_p50": results["passthrough"]["server"].get("mask_age_ms"),
        "server_dropped": server.get("dropped"),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_start": args.load_at_start,
    }


def serve_child(passthrough: bool) -> None:
    """``--serve``: ``live serve`` with the selfie engine and blur, on a free port."""
    from live.config import Settings
    from live.serve.server import serve

    serve(Settings().merged({"server": {"port": 0}, "engine": {"name": "selfie"}}), passthrough)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--codec", choices=["VP8", "H264"], default=None,
                        help="offer only this video codec (default: aiortc's preference, VP8)")
    parser.add_argument("--clip", default=str(DATA / "clips" / "06_pingpong.mp4"))
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--passthrough", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:  # the server half, started by the benchmark itself
        serve_child(args.passthrough)
        return

    def measure() -> dict:
        if not Path(args.clip).is_file():
            sys.exit(f"clip not found: {args.clip} (set LIVE_DATA_DIR or pass --clip)")
        if args.frames >= 1 << BITS:
            sys.exit(f"--frames must be below {1 << BITS}")
        args.load_at_start = round(os.getloadavg()[0], 2)  # other load skews figures
        return asyncio.run(run(args))

    report(measure)


if __name__ == "__main__":
    main()
