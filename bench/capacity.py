"""Capacity: how many WebRTC peers one ``live serve`` holds, and its CPU per frame.

    python -m bench.capacity --quick          # 640x480, VP8, 1 and 2 peers: ~2-3 minutes
    python -m bench.capacity                  # 640x480 and 1280x720, VP8 and H264, 1..8 peers
    python -m bench.capacity --workers 2      # server options ride along (see --help)

A ``live serve`` server runs as a child process (selfie engine, blurred
background). For each size and codec the benchmark adds peers — 1, 2, 3, 4,
6, 8 — each an aiortc client in its own process sending a real clip at 30
fps, every frame stamped with its place in the clip (``bench.webrtc``'s
blocks) so the frame that comes back is matched to the one that went out.
The clients are cheap on purpose, so that the cores measure the server: each
encodes its stamped loop once at start and then only sends those packets
(aiortc packetizes them), reading the stamps off the luma of what comes
back (``--live-clients``: each encodes every frame as it goes, as a browser
does; they then took about a third of this 2-core machine). All peers of a
step measure over the same window (one shared monotonic clock), and the
server's CPU time (its process and every child: the session workers) is
read at the window's two ends; each client reads its own
(``client_cpu_percent``, per client, 100 = a core).

A step holds when every peer receives ≥ ``--min-fps`` (25) frames per
second and the round trip's p95 is at most ``--max-added-ms`` (50) above the
pass-through server's p95 with one peer (same size and codec): the latency
the network and the codecs cost before any processing. A peer the server
refuses (its admission control found the machine full) fails its step too
(``refused_peers``). A series stops at the first step that does not hold.
The pass-through server (same code, frames returned untouched) is measured
the same way.

``server_cpu_ms_per_frame`` = server CPU time ÷ frames delivered to all
peers: the figure that does not depend on where the clients run. The
clients share the machine with the server here, so fps and round trips are
pessimistic; the CPU per frame is not.

Last line: one JSON object, ``steps`` (processed) and ``passthrough_steps``,
each a list of {size, codec, peers, fps_min, rtt_p50, rtt_p95,
server_cpu_percent, server_cpu_ms_per_frame, server_thread_ms_per_frame (the
same split by thread: the control server, and each worker's event loop,
processing, encoder, decoder and other threads, read by the names the
workers give them in /proc), client_cpu_percent, held};
``clients`` (what the clients do); ``capacity`` {size: the
largest N that held with the first codec}; ``server_cpu_ms_per_frame``
{size: at one processed peer, first codec}. ``--repeat N``: each one-peer
step is measured N times on the same server and reported by its median run
(``median_of``), the N figures in its ``server_cpu_ms_per_frame_runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from bench import DATA, cpu_by_role, cpu_seconds, load_frames, process_tree, report, \
    thread_cpu
from live.serve.admission import WINDOW_S

ROOT = Path(__file__).resolve().parents[1]
PEER_STEPS = (1, 2, 3, 4, 6, 8)
SETTLE_S = 6.0  # connect, ICE, first keyframes, encoder ramp-up: before the window opens
SETTLE_PER_PEER_S = 0.5  # each peer's connection and session start on a busier machine
#: Clients start (import aiortc, encode their loop: a burst of CPU), then all wait
#: this long before their offers: admission measures idle CPU over the seconds
#: before an offer, and must see the machine as peers joining it would leave it.
QUIET_S = WINDOW_S + 0.5


# --------------------------------------------------------------------------- one peer (child)

#: Frames in a pre-encoded client's loop (3 s at 30 fps). The stamp is the index in
#: the loop: it matches the first frame back (a round trip shorter than a loop),
#: RTP times match the rest, and the stamp checks them.
LOOP_FRAMES = 90
CLIENTS = {False: f"pre-encoded: each client sends a loop of {LOOP_FRAMES} stamped clip "
                  "frames encoded once at start, and decodes what comes back to read the "
                  "stamps",
           True: "live: each client stamps, converts and encodes every frame it sends, and "
                 "decodes what comes back"}


def encoded_loop(clip: Path, size: tuple[int, int], codec: str,
                 count: int = LOOP_FRAMES) -> list[bytes]:
    """``count`` clip frames, each stamped with its index, encoded once as a camera's
    stream would be (realtime, the operator's bitrate ceiling, one keyframe at the
    loop's start so every pass through the loop decodes on its own).

    Sent as they are, they cost the client no colour conversion and no encoding
    per frame: what is left (RTP, SRTP, decoding what comes back) is small, so
    the cores measure the server rather than its clients.
    """
    import cv2
    import av

    from bench.webrtc import stamp
    from live.config import Settings

    kbps = Settings().webrtc.resolved().max_bitrate_kbps
    w, h = size
    if codec.upper() == "VP8":
        ctx = av.CodecContext.create("libvpx", "w")
        ctx.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0"}
    else:
        ctx = av.CodecContext.create("libx264", "w")
        ctx.options = {"preset": "superfast", "tune": "zerolatency", "level": "31"}
        ctx.profile = "Baseline"
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuv420p"
    ctx.bit_rate, ctx.gop_size = kbps * 1000, count
    ctx.framerate, ctx.time_base = Fraction(30, 1), Fraction(1, 30)
    ctx.thread_count = 1
    out: list[bytes] = []
    frames = load_frames(clip, count, size)
    for i in range(count):
        image = stamp(frames[i % len(frames)], i)
        vf = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420),
                                        format="yuv420p")
        vf.pts = i
        if i == 0:
            vf.pict_type = av.video.frame.PictureType.I
        out += [bytes(p) for p in ctx.encode(vf)]
    out += [bytes(p) for p in ctx.encode(None)]
    if len(out) != count:
        raise RuntimeError(f"{codec} gave {len(out)} packets for {count} frames")
    return out


def yuv_frames(clip: Path, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Clip frames as I420 planes in one array (h·3/2 × w), for ``--live-clients``."""
    import cv2


    return [cv2.cvtColor(f, cv2.COLOR_BGR2YUV_I420) for f in load_frames(clip, count, size)]


def stamp_yuv(planes: np.ndarray, index: int, width: int, height: int) -> np.ndarray:
    """``bench.webrtc.stamp`` on the luma plane (chroma neutral under the blocks)."""
    from bench.webrtc import BITS

    out = planes.copy()
    block = width // BITS
    for bit in range(BITS):
        on = (index >> bit) & 1
        x = bit * block
        out[:block, x:x + block] = 255 if on else 0
        out[height - block:height, x:x + block] = 0 if on else 255
    # I420 chroma: U rows then V rows, each (h/2 × w/2) stored as (h/4 × w) lines
    cw, rows = width // 2, block // 2
    for plane_row0 in (height, height + height // 4):
        for row0 in (0, height // 2 - rows):
            for r in range(row0, row0 + rows):
                line = plane_row0 + r // 2
                off = (r % 2) * cw
                out[line, off:off + BITS * block // 2] = 128
    return out


async def returned_loop(remote: Any, sent: dict[int, float], ticks: int, deadline: float
                        ) -> tuple[dict[int, float], int]:
    """When each sent frame (by its send number) first came back, and how many frames
    came back unreadable or matched to no send.

    The stamp names a frame's place in the loop only; the send number comes
    from the frame's RTP time (the server sends a frame back with the time it
    arrived with, both ends adding a constant offset), anchored by the first
    stamp read and checked against every later one. The luma plane is read in
    place: no conversion."""
    from bench.webrtc import read_stamp, returned

    offset: int | None = None
    bad = 0

    def index_of(vf: Any) -> int | None:
        nonlocal offset, bad
        plane = vf.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(vf.height, plane.line_size)[:, :vf.width]
        where = read_stamp(luma)
        if where is None or vf.pts is None:
            bad += 1
            return None
        if offset is None:  # the latest send of that loop place: the round trip < a loop
            latest = max((i for i in sent if i % LOOP_FRAMES == where), default=None)
            if latest is None:
                bad += 1
                return None
            offset = (vf.pts - latest * ticks) % (1 << 32)
        i = round(((vf.pts - offset) % (1 << 32)) / ticks)  # a tick off after VP8's round trip
        if i % LOOP_FRAMES != where or i not in sent:
            bad += 1
            return None
        return i

    received = await returned(remote, sent, deadline, index_of=index_of)
    return received, bad


async def window_cpu(start: float, end: float) -> float:
    """This process's CPU seconds between the monotonic times ``start`` and ``end``."""
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    return round(time.process_time() - cpu0, 3)


def client_track(clip: Path, size: tuple[int, int], codec: str, fps: float,
                 live: bool = False) -> Any:
    """A client's paced, stamped track, ready to send: by default a pre-encoded loop
    (``encoded_loop``); ``live``: frames it encodes as it goes (the clients then
    cost about as much CPU as the server's own codecs)."""
    import av

    from bench.webrtc import paced_track

    if live:
        w, h = size
        frames = yuv_frames(clip, 30, size)
        return paced_track(fps, lambda i: av.VideoFrame.from_ndarray(
            stamp_yuv(frames[i % len(frames)], i, w, h), format="yuv420p"))
    packets = encoded_loop(clip, size, codec)
    return paced_track(fps, lambda i: av.Packet(packets[i % len(packets)]))


async def run_peer(url: str, track: Any, codec: str, window: tuple[float, float],
                   live: bool = False) -> dict[str, Any]:
    """Send ``track`` (``client_track``) until the window closes; round trips of the
    frames sent inside it."""
    from bench.webrtc import returned
    from live.serve.client import ControlClient

    start, end = window
    cpu = asyncio.ensure_future(window_cpu(start, end))
    async with ControlClient(url) as client:
        try:
            remote = await client.start_video(track, codec=codec)
        except RuntimeError as exc:  # the server's admission said no: it is full
            return {"frames": 0, "fps": 0.0, "rtt_ms": [], "refused": str(exc)}
        if live:
            received, bad = await returned(remote, track.sent, end + 1.0), 0
        else:
            received, bad = await returned_loop(remote, track.sent, track.ticks, end + 1.0)
    in_window = {i: t for i, t in received.items() if start <= track.sent[i] < end}
    return {"frames": len(in_window), "fps": len(in_window) / (end - start),
            "rtt_ms": [round((t - track.sent[i]) * 1e3, 1) for i, t in in_window.items()],
            "unmatched": bad, "cpu_s": await cpu, "last_sent": max(in_window, default=None),
            "first_frame_late": not received or min(received.values()) > start}


# --------------------------------------------------------------------------- the server


class Server:
    """A child ``live serve`` and its CPU clock (its own process and every descendant)."""

    def __init__(self, passthrough: bool, serve_args: list[str]):
        import psutil

        from bench.webrtc import start_server

        self.proc, self.url = start_server(passthrough, "bench.capacity", serve_args)
        self.ps = psutil.Process(self.proc.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(process_tree(self.ps))

    def thread_cpu(self) -> dict[tuple[int, int], tuple[str, float]]:
        return thread_cpu(self.ps)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve_child(passthrough: bool, workers: int | None, admission: bool = True,
                worker_threads: int | None = None) -> None:
    """``--serve``: ``live serve`` with the selfie engine and blur, on a free port.

    ``admission`` False: the session cap only, so that a step shows whether
    the machine holds its peers rather than whether admission expected it to
    (set here, in the benchmark's own server process: ``live serve`` has no
    such switch)."""
    import functools

    import live.serve.server
    from live.config import Settings
    from live.serve.server import serve

    if not admission:
        live.serve.server.Admission = functools.partial(  # type: ignore[misc]
            live.serve.server.Admission, measured=False)
    patch: dict[str, Any] = {"server": {"port": 0}, "engine": {"name": "selfie"}}
    if workers is not None:
        patch["server"]["workers"] = workers
    if worker_threads is not None:
        patch["server"]["worker_threads"] = worker_threads
    serve(Settings().merged(patch), passthrough)


# --------------------------------------------------------------------------- one step, a series


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def measure_step(server: Server, args: argparse.Namespace, size: tuple[int, int], codec: str,
                 peers: int) -> dict[str, Any]:
    """``peers`` client processes measured over one shared window."""
    cmd = [sys.executable, "-m", "bench.capacity", "--peer", server.url, "--clip", args.clip,
           "--size", f"{size[0]}x{size[1]}", "--codec", codec, "--fps", str(args.fps)] + \
        (["--live-clients"] if args.live_clients else [])
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=ROOT) for _ in range(peers)]
    for proc in procs:  # each has imported aiortc and encoded its loop: quiet from now on
        assert proc.stdout is not None
        proc.stdout.readline()
    time.sleep(QUIET_S)
    start = time.monotonic() + SETTLE_S + SETTLE_PER_PEER_S * peers
    end = start + args.seconds
    for proc in procs:  # all offers together, as peers joining at once
        try:
            assert proc.stdin is not None
            proc.stdin.write(f"{start} {end}\n")
            proc.stdin.flush()  # communicate() below closes it
        except (BrokenPipeError, OSError):
            pass  # it failed while preparing: its output says why
    time.sleep(max(0.0, start - time.monotonic()))
    threads0, cpu0, t0 = server.thread_cpu(), server.cpu_seconds(), time.monotonic()
    time.sleep(max(0.0, end - time.monotonic()))
    cpu1, t1, threads1 = server.cpu_seconds(), time.monotonic(), server.thread_cpu()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        lines = out.strip().splitlines()
        try:
            results.append(json.loads(lines[-1]))
        except (IndexError, json.JSONDecodeError):
            results.append({"frames": 0, "fps": 0.0, "rtt_ms": [], "error": lines[-1:]})
    rtts = [v for r in results for v in r["rtt_ms"]]
    delivered = sum(r["frames"] for r in results)
    cpu_ms = (cpu1 - cpu0) * 1e3
    return {"size": f"{size[0]}x{size[1]}", "codec": codec, "peers": peers,
            "fps_min": round(min(r["fps"] for r in results), 1),
            "rtt_p50": pct(rtts, 50), "rtt_p95": pct(rtts, 95),
            "server_cpu_percent": round(cpu_ms / (t1 - t0) / 10, 1),
            "server_cpu_ms_per_frame": round(cpu_ms / delivered, 2) if delivered else None,
            "server_thread_ms_per_frame": {
                role: round(seconds * 1e3 / delivered, 2)
                for role, seconds in sorted(cpu_by_role(threads0, threads1).items())
            } if delivered else None,
            "client_cpu_percent": round(sum(r.get("cpu_s", 0.0) for r in results) * 100
                                        / (end - start) / peers, 1),
            "late_peers": sum(bool(r.get("first_frame_late")) for r in results),
            "failed_peers": sum("error" in r for r in results),
            "refused_peers": sum("refused" in r for r in results),
            "refusals": sorted({r["refused"] for r in results if "refused" in r})}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median CPU per frame (the lower middle one of an even
    count), with every run's figure beside it (``server_cpu_ms_per_frame_runs``).

    One window's CPU per frame moves with the machine's speed from minute to
    minute (15-19 ms at 1280x720 on this project's shared 2-core VM), more
    than a change is worth; a median of windows taken in one run is the
    figure to quote."""
    measured = [r for r in runs if r["server_cpu_ms_per_frame"] is not None]
    if not measured:
        return runs[0]
    ordered = sorted(measured, key=lambda r: r["server_cpu_ms_per_frame"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["server_cpu_ms_per_frame_runs"] = [r["server_cpu_ms_per_frame"] for r in runs]
    return chosen


def run_series(passthrough: bool, args: argparse.Namespace, size: tuple[int, int], codec: str,
               baseline_p95: float | None) -> list[dict[str, Any]]:
    """Add peers until a step does not hold; a fresh server per series."""
    server = Server(passthrough, args.serve_args)
    steps: list[dict[str, Any]] = []
    try:
        for peers in args.peers:
            step = measure_step(server, args, size, codec, peers)
            if peers == 1 and args.repeat > 1:
                step = median_of([step] + [measure_step(server, args, size, codec, 1)
                                           for _ in range(args.repeat - 1)])
            base = baseline_p95 if baseline_p95 is not None else steps[0]["rtt_p95"] \
                if steps else step["rtt_p95"]
            step["held"] = bool(step["fps_min"] >= args.min_fps and step["rtt_p95"] is not None
                                and base is not None
                                and step["rtt_p95"] - base <= args.max_added_ms)
            steps.append(step)
            print(json.dumps({"passthrough": passthrough, **step}), file=sys.stderr, flush=True)
            if not step["held"] and not args.keep_going:
                break
    finally:
        server.stop()
    return steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    codecs = args.codecs.split(",")
    steps: list[dict[str, Any]] = []
    passthrough_steps: list[dict[str, Any]] = []
    for size in sizes:
        for codec in codecs:
            plain = run_series(True, args, size, codec, None)
            passthrough_steps += plain
            steps += run_series(False, args, size, codec, plain[0]["rtt_p95"])
    capacity, cpu = {}, {}
    for size in sizes:
        key = f"{size[0]}x{size[1]}"
        series = [s for s in steps if s["size"] == key and s["codec"] == codecs[0]]
        capacity[key] = 0  # the largest N with every step up to it held
        for step in series:
            if not step["held"]:
                break
            capacity[key] = step["peers"]
        cpu[key] = next((s["server_cpu_ms_per_frame"] for s in series if s["peers"] == 1), None)
    return {"steps": steps, "passthrough_steps": passthrough_steps, "capacity": capacity,
            "server_cpu_ms_per_frame": cpu, "criteria": {"min_fps": args.min_fps,
                                                         "max_added_ms_p95": args.max_added_ms},
            "seconds_per_step": args.seconds, "clients": CLIENTS[args.live_clients],
            "server_args": args.serve_args,
            "cpu_count": os.cpu_count(), "load_avg_1m_at_start": args.load_at_start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="640x480, VP8, 1 and 2 peers, 6 s windows (~2-3 minutes)")
    parser.add_argument("--sizes", default="640x480,1280x720")
    parser.add_argument("--codecs", default="VP8,H264",
                        help="the first one is the default codec the capacity is quoted for")
    parser.add_argument("--peers", default=",".join(map(str, PEER_STEPS)),
                        help="peer counts to try, in order")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window per step")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each one-peer step this many times and report the run "
                             "with the median CPU per frame (all N in "
                             "server_cpu_ms_per_frame_runs)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--min-fps", type=float, default=25.0)
    parser.add_argument("--max-added-ms", type=float, default=50.0)
    parser.add_argument("--keep-going", action="store_true",
                        help="measure every step even after one did not hold (--quick does)")
    parser.add_argument("--workers", type=int, default=None,
                        help="the server's --workers (default: the server's own default)")
    parser.add_argument("--worker-threads", type=int, default=None,
                        help="the server's --server-worker-threads (default: its own)")
    parser.add_argument("--no-admission", action="store_true",
                        help="the server admits every peer up to its session cap (8): shows "
                             "what the machine holds, to judge what admission refuses")
    parser.add_argument("--live-clients", action="store_true",
                        help="each client encodes every frame as it sends it (as before): "
                             "the clients then take about a third of a 2-core machine")
    parser.add_argument("--clip", default=str(DATA / "clips" / "06_pingpong.mp4"))
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--passthrough", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peer", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--codec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:  # the server half, started by the benchmark itself
        serve_child(args.passthrough, args.workers, not args.no_admission, args.worker_threads)
        return
    if args.peer:  # one client process
        w, h = (int(v) for v in args.size.split("x"))
        track = client_track(Path(args.clip), (w, h), args.codec, args.fps, args.live_clients)
        print("ready", flush=True)
        start, end = (float(v) for v in sys.stdin.readline().split())
        print(json.dumps(asyncio.run(run_peer(args.peer, track, args.codec, (start, end),
                                              args.live_clients))), flush=True)
        return

    def measure() -> dict[str, Any]:
        if not Path(args.clip).is_file():
            sys.exit(f"clip not found: {args.clip} (set LIVE_DATA_DIR or pass --clip)")
        if args.quick:
            args.sizes, args.codecs, args.peers, args.seconds = "640x480", "VP8", "1,2", 6.0
            args.keep_going = True
        args.peers = [int(n) for n in str(args.peers).split(",")]
        if args.repeat < 1:
            sys.exit(f"--repeat must be at least 1, got {args.repeat}")
        args.serve_args = ([] if args.workers is None else ["--workers", str(args.workers)]) \
            + ([] if args.worker_threads is None
               else ["--worker-threads", str(args.worker_threads)]) \
            + (["--no-admission"] if args.no_admission else [])
        args.load_at_start = round(os.getloadavg()[0], 2)  # other load skews figures
        return run(args)

    report(measure)


if __name__ == "__main__":
    main()
