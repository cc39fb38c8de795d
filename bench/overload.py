"""Overload: 1 → 6 WebRTC peers against one server; admitted ones keep up, the rest are refused.

    python -m bench.overload [--size 640x480] [--max-peers 6] [--seconds 8] [--fps 30]

One ``live serve`` child (selfie engine, blur) and, per step n = 1..max, n
peer children (aiortc, each its own process as each browser would be), started
a second apart so admission sees the load of the ones before. Each peer sends
a real clip with its frame index stamped in (``bench.webrtc.stamp``) and times
every frame that comes back. A step reports, over the admitted peers, the
worst round-trip p95 and the lowest frame rate, and the refusal reasons of
the others. Target (issue 13): every admitted peer at p95 ≤ 300 ms and ≥ 20
fps; the rest refused with a clear reason. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2  # noqa: F401  (before av: the other order can make OpenCV spin, PyAV #978)

from bench import DATA, load_frames, report
from bench.webrtc import pct, returned, stamped_clip, start_server
from live.serve.client import ControlClient

ROOT = Path(__file__).resolve().parents[1]
WARMUP_S = 2.0  # frames sent in the first seconds (model load, bitrate ramp) are not judged


async def peer(url: str, clip: Path, size: tuple[int, int], seconds: float,
               fps: float) -> dict[str, Any]:
    """One peer: send for ``seconds``; round trips and frame rate after the warm-up.

    It loads its frames, says ``ready`` and waits for a line on stdin before it
    offers: the start-up of the next peers (imports, clip decoding: seconds of
    CPU) must not land in the running peers' measurement.
    """
    frames = load_frames(clip, 60, size)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    count = int((seconds + WARMUP_S) * fps)
    track = stamped_clip(frames, count, fps)
    async with ControlClient(url) as client:
        try:
            remote = await client.start_video(track)
        except RuntimeError as exc:  # the offer's error reply: a refusal
            return {"admitted": False, "reason": str(exc)}
        received = await returned(remote, track.sent, time.monotonic() + seconds + WARMUP_S + 5,
                                  lambda: len(track.sent) >= count)
        told = [s for msg in client.stats for s in msg.get("sessions", [])
                if s.get("overloaded")]
    judged = {i: t for i, t in received.items() if i >= WARMUP_S * fps}
    rtt = [(t - track.sent[i]) * 1e3 for i, t in judged.items()]
    return {"admitted": True, "frames_sent": len(track.sent), "frames_judged": len(judged),
            "rtt_p50_ms": pct(rtt, 50), "rtt_p95_ms": pct(rtt, 95),
            "fps": round(len(judged) / seconds, 1), "told_overloaded": bool(told)}


def start_peer(url: str, args: argparse.Namespace) -> subprocess.Popen[str]:
    """A peer process, loaded and waiting for its go (a line on its stdin)."""
    cmd = [sys.executable, "-m", "bench.overload", "--peer", url, "--size", args.size,
           "--seconds", str(args.seconds), "--fps", str(args.fps), "--clip", args.clip]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"peer process did not start: {line!r}")
    return proc


def peer_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"admitted": False, "reason": "peer process timed out"}
    lines = out.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"admitted": False, "reason": f"peer process failed (exit {proc.returncode})"}


def step(url: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    procs = [start_peer(url, args) for _ in range(n)]
    for proc in procs:  # all loaded; now they offer, one by one
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(args.stagger)
    peers = [peer_result(p, args.seconds + WARMUP_S + 90) for p in procs]
    time.sleep(args.pause)  # the server closes this step's sessions before the next
    admitted = [p for p in peers if p.get("admitted")]
    rtts = [p["rtt_p95_ms"] for p in admitted if p.get("rtt_p95_ms") is not None]
    return {"peers": n, "admitted": len(admitted), "refused": n - len(admitted),
            "rtt_p95_ms": max(rtts) if rtts else None,
            "fps_min": min((p["fps"] for p in admitted), default=None),
            "refusals": sorted({p.get("reason", "") for p in peers if not p.get("admitted")}),
            "told_overloaded": sum(1 for p in admitted if p.get("told_overloaded")),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "per_peer": peers}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if not Path(args.clip).is_file():
        sys.exit(f"clip not found: {args.clip} (set LIVE_DATA_DIR or pass --clip)")
    load = round(os.getloadavg()[0], 2)
    proc, url = start_server(False)
    try:
        steps = [step(url, n, args) for n in range(1, args.max_peers + 1)]
    finally:
        proc.terminate()
        proc.wait(10)
    ok = all(s["rtt_p95_ms"] is not None and s["rtt_p95_ms"] <= 300 and s["fps_min"] >= 20
             and all(s["refusals"]) for s in steps if s["admitted"])
    return {"size": args.size, "seconds": args.seconds, "fps_target": args.fps,
            "steps": steps, "target_met": ok, "cpu_count": os.cpu_count(),
            "load_avg_1m_at_start": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--max-peers", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0, help="judged seconds per peer")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--stagger", type=float, default=1.0,
                        help="seconds between two peers' offers within a step")
    parser.add_argument("--pause", type=float, default=3.0,
                        help="seconds between two steps (sessions close in between)")
    parser.add_argument("--clip", default=str(DATA / "clips" / "06_pingpong.mp4"))
    parser.add_argument("--peer", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.peer:  # one peer, started by the benchmark itself
        result = asyncio.run(peer(args.peer, Path(args.clip), size, args.seconds, args.fps))
        print(json.dumps(result), flush=True)
        return
    report(lambda: measure(args))


if __name__ == "__main__":
    main()
