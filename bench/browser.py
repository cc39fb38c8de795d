"""The page as a user sees it: resolution, frame rate and glass-to-glass latency
in a real browser.

    python -m bench.browser [--duration 40] [--webrtc-codec VP8|H264] [--engine selfie]
                            [--picture N]

Debian chromium (driven by Playwright) opens the page of a fresh ``live``
server, presses Start and shows its fake camera: a clip converted at run time
to a 4:2:0 .y4m (in a temporary folder, never stored) whose every frame carries
its index in bench.webrtc's stamp, two rows of 80-pixel black and white blocks
along the top and bottom edges (the second row the complement of the first, to
reject misreads). The page reads the stamp of each frame it presents, in the
raw preview and in the processed video. Blocks that size survive both codecs
and the default blur background (radius 21 px at 720p, a quarter of a block:
the block centres, where the page reads, keep their value), and the rows sit at
the frame's edges, away from the person in the middle, so they are read in any
background mode that keeps the picture (blur, the pass-through server).

* glass to glass: a frame's presentation time in the processed video minus the
  presentation time of the same source frame in the raw preview (both from
  ``requestVideoFrameCallback``: the same clock, one page);
* the same for a pass-through server (same code, frames returned untouched) in
  the same run, and the difference ``added_ms_p50`` (and ``added_ms_mean``: the
  page presents frames on display refreshes, 16.7 ms apart at 60 Hz, so the
  medians differ by whole refreshes while the means resolve the difference);
* the received size and frame rate of every presented processed frame
  (``full_size_share``: the share at the camera's size, or at the largest the
  ``[webrtc]`` caps allow), the sender's size and ``qualityLimitationReason``
  once a second (``getStats``);
* ``first_frame_s``: Start pressed → first processed frame presented, on a
  server started for this run;
* the CPU of the server process and of chromium (user + system, % of one core)
  after the warm-up: on two cores the browser's encoder and decoder compete
  with the server.

With ``--picture N`` the pass-through phase also compares N frames that came
back with the same frames as the preview shows them (``passthrough_picture``:
PSNR and SSIM of the luma, the stamp rows left out, both read through the
page's canvas with one formula): what the trip through the codecs, both ways,
costs the picture the user sees, e.g. VP8 against H.264.

Prints one JSON object as its last line. The first ``--warmup`` seconds (5)
are left out of the size, fps and latency figures: that is the ramp allowed
(issue 9). A page screenshot at 1366x768 goes to ``--screenshot``. The default
run takes about 2 minutes (two servers, 40 s each after their first frame).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2  # noqa: F401  (before av: the other order can make OpenCV spin, PyAV #978)
import av
import numpy as np

from bench import DATA, cpu_seconds, load_frames, process_tree, psnr, report, ssim
from bench.webrtc import BITS, pct, stamp, start_server

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1366, "height": 768}
OUT = Path(__file__).resolve().parent / "out" / "browser"


def write_y4m(frames: list[np.ndarray], out: Path, fps: int = 30) -> Path:
    """BGR frames as a 4:2:0 .y4m: the format chromium's fake camera plays (looped)."""
    with av.open(str(out), "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("rawvideo", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out


def launch_chromium(pw: Any, camera: Path) -> Any:
    """Headless Debian chromium whose fake camera plays ``camera`` (a .y4m)."""
    return pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}"])


# Installed in the page before Start: reads the stamp of every presented frame
# of both videos (the JS twin of bench.webrtc.read_stamp, on a 1/5-size copy:
# a block is 16 px there, its centre 3x3 pixels are averaged).
MEASURE_JS = """([bits, loopMs]) => {
  const W = 256, H = 144, B = W / bits, C = B / 2;
  const ctx = Object.assign(document.createElement("canvas"), { width: W, height: H })
    .getContext("2d", { willReadFrequently: true });
  const m = { t0: null, first: null, preview: new Map(), frames: [], misread: 0,
              onFrame: null };  // onFrame(id, video, index): a listener of every read
  window.benchM = m;
  const lum = (d, x, y) => {
    let s = 0;
    for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) {
      const i = ((y + dy) * W + x + dx) * 4;
      s += d[i] + d[i + 1] + d[i + 2];
    }
    return s / 27;
  };
  const read = (video) => {
    ctx.drawImage(video, 0, 0, W, H);
    const d = ctx.getImageData(0, 0, W, H).data;
    let index = 0, check = 0;
    for (let bit = 0; bit < bits; bit++) {
      const x = bit * B + C;
      index |= (lum(d, x, C) > 127) << bit;
      check |= (lum(d, x, H - B + C) > 127) << bit;
    }
    return (index ^ check) === (1 << bits) - 1 ? index : null;
  };
  const hook = (id, onFrame) => {
    const v = document.getElementById(id);
    const cb = (now, meta) => { onFrame(v, now, meta); v.requestVideoFrameCallback(cb); };
    v.requestVideoFrameCallback(cb);
  };
  hook("preview", (v, now, meta) => {
    const i = read(v);
    if (i !== null) m.preview.set(i, meta.expectedDisplayTime);
    if (m.onFrame) m.onFrame("preview", v, i);
  });
  hook("processed", (v, now, meta) => {
    if (m.first === null) m.first = now;
    const i = read(v);
    if (i === null) m.misread++;
    if (m.onFrame) m.onFrame("processed", v, i);
    // The camera loops: a preview time older than half a loop is the frame's
    // previous showing (this one was not presented in the preview), not timed.
    const shown = i === null ? undefined : m.preview.get(i);
    const ms = shown === undefined ? null : meta.expectedDisplayTime - shown;
    m.frames.push([now, meta.width, meta.height, meta.presentedFrames,
                   ms !== null && ms < loopMs / 2 ? ms : null]);
  });
  document.getElementById("connect").addEventListener("click",
    () => { m.t0 = performance.now(); }, { capture: true });
  window.benchRead = read;
}"""

# Installed after MEASURE_JS with ``--picture N``: after the warm-up, the luma of
# N source frames (stamp indices ``every`` apart) as the preview shows them
# and as they come back, each converted from the page's RGB with the same BT.601
# formula, so the comparison sees only what the trip through the codecs lost.
# It listens to MEASURE_JS's reads (no second read of every frame), and a copy
# is kept only if the stamp still reads the same after it: the picture did not
# move on while it was copied.
PICTURE_JS = """([count, every, warmupMs]) => {
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const p = { preview: new Map(), back: new Map() };
  window.benchP = p;
  // Frames halfway between the samples' multiples, so never the loop's first: the
  // fake camera's jump from the loop's last frame to its first is a scene cut no
  // webcam makes, and the codecs code the frame after it worse (36.8 dB against
  // 42-45 for VP8's other frames on 10_cloth_magic).
  const half = Math.floor(every / 2);
  // [w, h, base64 luma] of the frame on show, if it is still frame ``index``
  const luma = (v, index) => {
    const w = canvas.width = v.videoWidth, h = canvas.height = v.videoHeight;
    ctx.drawImage(v, 0, 0);
    const d = ctx.getImageData(0, 0, w, h).data;
    if (window.benchRead(v) !== index) return null;
    const y = new Uint8Array(w * h);
    for (let k = 0, j = 0; k < y.length; k++, j += 4) {
      y[k] = Math.round(16 + (65.481 * d[j] + 128.553 * d[j + 1] + 24.966 * d[j + 2]) / 255);
    }
    let s = "";
    for (let k = 0; k < y.length; k += 32768) s += String.fromCharCode.apply(null, y.subarray(k, k + 32768));
    return [w, h, btoa(s)];
  };
  const take = (into, v, i) => {
    const shot = luma(v, i);
    if (shot !== null) into.set(i, shot);
  };
  window.benchM.onFrame = (id, v, i) => {
    if (i === null || window.benchM.first === null
        || performance.now() < window.benchM.first + warmupMs) return;
    if (id === "preview") {
      if (i % every === half && !p.preview.has(i) && p.preview.size < count) take(p.preview, v, i);
    } else if (p.preview.has(i) && !p.back.has(i)) {
      take(p.back, v, i);
    }
  };
}"""

# Once a second: what the camera's sender does, and what the processed video receives.
RTC_STATS_JS = """async () => {
  const pc = window.liveClient.pc;
  if (!pc) return null;
  const out = { t: performance.now() };
  const stats = await pc.getStats();
  const codec = (id) => (stats.get(id) ? stats.get(id).mimeType.slice(6) : null);
  stats.forEach((r) => {
    if (r.type === "outbound-rtp" && r.kind === "video") {
      Object.assign(out, { sent_w: r.frameWidth, sent_h: r.frameHeight, sent_fps: r.framesPerSecond,
        limit: r.qualityLimitationReason, target_bps: r.targetBitrate, sent_bytes: r.bytesSent,
        encoder: r.encoderImplementation, sent_codec: codec(r.codecId) });
    } else if (r.type === "inbound-rtp" && r.kind === "video") {
      Object.assign(out, { recv_bytes: r.bytesReceived, recv_dropped: r.framesDropped,
        recv_frames: r.framesReceived, recv_keyframes: r.keyFramesDecoded,
        decoder: r.decoderImplementation, recv_codec: codec(r.codecId) });
    }
  });
  const sender = pc.getSenders().find((s) => s.track && s.track.kind === "video");
  if (sender) out.degradation = sender.getParameters().degradationPreference || null;
  return out;
}"""


def chromium_processes() -> list[Any]:
    """This benchmark's chromium processes (under Playwright's driver, under us)."""
    import psutil

    return [p for p in psutil.Process().children(recursive=True)
            if "chrom" in p.name().lower()]


def run_phase(browser: Any, args: argparse.Namespace, passthrough: bool,
              screenshot: Path | None) -> dict[str, Any]:
    """One fresh server, one page: Start, watch ``args.duration`` seconds, Stop."""
    import psutil

    proc, url = start_server(passthrough, "bench.browser", args.server_args)
    server_proc = [psutil.Process(proc.pid)]
    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(url)
        page.wait_for_selector("#status[data-state='connected']", timeout=20_000)
        page.evaluate(MEASURE_JS, [BITS, 1000 * args.loop_frames / args.fps])
        picture = passthrough and args.picture > 0
        if picture:
            every = max(1, args.loop_frames // args.picture)
            page.evaluate(PICTURE_JS, [args.picture, every, 1000 * args.warmup])
        page.click("#connect")
        deadline = time.monotonic() + 60  # (the page's CSP forbids wait_for_function's eval)
        while page.evaluate("window.benchM.first") is None:
            if time.monotonic() > deadline:
                raise RuntimeError("no processed frame 60 s after Start")
            time.sleep(0.05)
        started = time.monotonic()
        rtc: list[dict[str, Any]] = []
        cpu0: tuple[float, float, float] | None = None  # server, chromium, wall
        while time.monotonic() - started < args.duration:
            time.sleep(1.0)
            rtc.append(page.evaluate(RTC_STATS_JS) or {})
            # what the page's own stats line says it shows (frames presented, last second)
            rtc[-1]["page_fps"] = page.evaluate("window.liveClient.shown.fps")
            if cpu0 is None and time.monotonic() - started >= args.warmup:
                cpu0 = (cpu_seconds(process_tree(server_proc[0])), cpu_seconds(chromium_processes()),
                        time.monotonic())
        cpu1 = (cpu_seconds(process_tree(server_proc[0])), cpu_seconds(chromium_processes()), time.monotonic())
        server = page.evaluate("window.liveClient.request('stats')").get("stats", {})
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        m = page.evaluate("({t0: benchM.t0, first: benchM.first, frames: benchM.frames, "
                          "misread: benchM.misread})")
        pairs = page.evaluate("[...benchP.back.keys()].map(i => [benchP.preview.get(i), "
                              "benchP.back.get(i)])") if picture else None
        page.click("#disconnect")
    finally:
        page.close()
        proc.terminate()
        proc.wait(10)
    if errors:
        raise RuntimeError(f"the page raised: {errors[:3]}")
    cpu = None if cpu0 is None else [round(100 * (b - a) / (cpu1[2] - cpu0[2]), 1)
                                     for a, b in zip(cpu0[:2], cpu1[:2])]
    out = summarise(m, rtc, server, args, cpu)
    if pairs is not None:
        out["picture"] = picture_figures(pairs)
    return out


def picture_figures(pairs: list[list[Any]]) -> dict[str, Any]:
    """PSNR and SSIM of the luma that came back against the same frames' luma in the
    preview, the stamp rows left out (``PICTURE_JS``'s pairs: [w, h, base64] each)."""
    def plane(shot: list[Any]) -> np.ndarray:
        w, h, data = shot
        return np.frombuffer(base64.b64decode(data), np.uint8).reshape(h, w)

    scores = []
    for preview, back in pairs:
        a, b = plane(preview), plane(back)
        if a.shape != b.shape:  # a frame that came back smaller is not compared
            continue
        rows = slice(a.shape[1] // BITS, a.shape[0] - a.shape[1] // BITS)
        scores.append((psnr(b[rows], a[rows]), ssim(b[rows], a[rows])))
    if not scores:
        return {"frames": 0}
    return {"frames": len(scores),
            "psnr_y_db_median": round(statistics.median(s[0] for s in scores), 2),
            "psnr_y_db_min": round(min(s[0] for s in scores), 2),
            "ssim_y_median": round(statistics.median(s[1] for s in scores), 4),
            "ssim_y_min": round(min(s[1] for s in scores), 4),
            "psnr_y_db": [round(s[0], 2) for s in scores]}


def summarise(m: dict[str, Any], rtc: list[dict[str, Any]], server: dict[str, Any],
              args: argparse.Namespace, cpu: list[float] | None) -> dict[str, Any]:
    """The phase's figures after the warm-up, from the page's per-frame records."""
    w, h = args.full
    start = m["first"] + args.warmup * 1000
    frames = [f for f in m["frames"] if f[0] >= start]
    if len(frames) < 2:
        raise RuntimeError(f"only {len(frames)} processed frames after the warm-up")
    span = (frames[-1][0] - frames[0][0]) / 1000
    latency = [f[4] for f in frames if f[4] is not None]
    later = rtc[int(args.warmup):]
    limits: dict[str, int] = {}
    for s in later:
        limits[str(s.get("limit"))] = limits.get(str(s.get("limit")), 0) + 1
    sent_bits = [b - a for a, b in zip([s.get("sent_bytes") or 0 for s in later],
                                       [s.get("sent_bytes") or 0 for s in later][1:])]
    recv_bits = [b - a for a, b in zip([s.get("recv_bytes") or 0 for s in later],
                                       [s.get("recv_bytes") or 0 for s in later][1:])]
    last = rtc[-1] if rtc else {}
    page_fps = [round(s["page_fps"], 1) for s in later if s.get("page_fps") is not None]
    return {
        "received_width": statistics.median(f[1] for f in frames),
        "received_height": statistics.median(f[2] for f in frames),
        "full_size_share": round(sum(f[1] == w and f[2] == h for f in frames) / len(frames), 3),
        # Start → the first processed frame at full size (the ramp, warm-up included)
        "full_size_after_s": next((round((f[0] - m["t0"]) / 1000, 2) for f in m["frames"]
                                   if f[1] == w and f[2] == h), None) if m["t0"] else None,
        "fps": round((frames[-1][3] - frames[0][3]) / span, 1) if span > 0 else 0.0,
        "glass_to_glass_ms_p50": pct(latency, 50),
        "glass_to_glass_ms_p95": pct(latency, 95),
        "glass_to_glass_ms_mean": round(statistics.fmean(latency), 2) if latency else None,
        "frames_timed": len(latency),
        "misread_frames": m["misread"],
        "first_frame_s": round((m["first"] - m["t0"]) / 1000, 2) if m["t0"] else None,
        "sent_width_median": statistics.median(s.get("sent_w") or 0 for s in later)
        if later else None,
        "sent_height_median": statistics.median(s.get("sent_h") or 0 for s in later)
        if later else None,
        "sent_fps_median": statistics.median(s.get("sent_fps") or 0 for s in later)
        if later else None,
        "sent_quality_limitation": limits,
        "sent_kbps_median": round(statistics.median(sent_bits) * 8 / 1000) if sent_bits else None,
        "received_kbps_median": round(statistics.median(recv_bits) * 8 / 1000)
        if recv_bits else None,
        "codec": last.get("sent_codec"),
        "codec_back": last.get("recv_codec"),
        "browser_encoder": last.get("encoder"),
        "browser_decoder": last.get("decoder"),
        "degradation_preference": last.get("degradation"),
        "browser_frames_dropped": last.get("recv_dropped"),
        # frames of the processed stream that reached the browser (before its decoder)
        "browser_received_fps": round((later[-1]["recv_frames"] - later[0]["recv_frames"])
                                      / ((later[-1]["t"] - later[0]["t"]) / 1000), 1)
        if len(later) > 1 and later[-1].get("recv_frames") is not None else None,
        "browser_keyframes_received": last.get("recv_keyframes"),
        # the fps the page's stats line showed, read once a second after the warm-up
        "page_stats_fps_median": statistics.median(page_fps) if page_fps else None,
        "page_stats_fps_min": min(page_fps) if page_fps else None,
        "server_frames_dropped": server.get("dropped"),
        "server_fps": server.get("fps"),
        "server_stage_ms_p50": {k: v["p50"] for k, v in server.get("stage_ms", {}).items()},
        "server_cpu_percent": cpu and cpu[0],  # % of one core, after the warm-up
        "browser_cpu_percent": cpu and cpu[1],  # every chromium process of the run
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="live-bench-browser-"))
    try:
        frames = load_frames(Path(args.clip), args.loop_frames, (args.width, args.height))
        camera = write_y4m([stamp(f, i) for i, f in enumerate(frames)], tmp / "camera.y4m",
                           args.fps)
        del frames
        with sync_playwright() as pw:
            browser = launch_chromium(pw, camera)
            try:
                phases = {}
                if not args.no_passthrough:
                    phases["passthrough"] = run_phase(browser, args, True, None)
                phases["processed"] = run_phase(browser, args, False, args.screenshot)
            finally:
                browser.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = dict(phases["processed"], camera=f"{args.width}x{args.height}",
               full_width=args.full[0], full_height=args.full[1],
               duration_s=args.duration, warmup_s=args.warmup)
    base = phases.get("passthrough")
    if base is not None:
        if "picture" in base:
            out["passthrough_picture"] = base["picture"]
        for key in ("glass_to_glass_ms_p50", "glass_to_glass_ms_p95", "glass_to_glass_ms_mean",
                    "fps", "first_frame_s",
                    "full_size_share", "full_size_after_s", "received_width", "received_height",
                    "server_cpu_percent", "browser_cpu_percent"):
            out[f"passthrough_{key}"] = base[key]
        if None not in (out["glass_to_glass_ms_p50"], base["glass_to_glass_ms_p50"]):
            out["added_ms_p50"] = round(out["glass_to_glass_ms_p50"]
                                        - base["glass_to_glass_ms_p50"], 2)
            # Presentation times come in display refreshes (16.7 ms at 60 Hz), so the
            # medians differ by 0 or a whole refresh; the means resolve the difference.
            out["added_ms_mean"] = round(out["glass_to_glass_ms_mean"]
                                         - base["glass_to_glass_ms_mean"], 2)
    out["frames_dropped"] = out["server_frames_dropped"]
    out.update(cpu_count=os.cpu_count(), load_avg_1m_at_start=args.load_at_start,
               screenshot=str(args.screenshot) if args.screenshot else None)
    return out


def serve_child(argv: list[str], passthrough: bool) -> None:
    """``--serve``: ``live serve`` on a free port with the benchmark's settings flags."""
    from live.config import add_cli_arguments, settings_from_args
    from live.serve.server import serve

    parser = argparse.ArgumentParser()
    add_cli_arguments(parser, sections=SERVER_SECTIONS)
    settings = settings_from_args(parser.parse_args(argv))
    serve(settings.merged({"server": {"port": 0}}), passthrough)


#: The settings a benchmark run may set for its servers (as ``live serve`` flags).
SERVER_SECTIONS = ("engine", "background", "webrtc")


def main() -> None:
    if "--serve" in sys.argv:  # the server half, started by the benchmark itself
        argv = [a for a in sys.argv[1:] if a not in ("--serve", "--passthrough")]
        serve_child(argv, "--passthrough" in sys.argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=40.0,
                        help="seconds watched per server, after its first frame (default 40)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds left out at the start of each (the ramp; default 5)")
    parser.add_argument("--size", default="1280x720", help="the fake camera's size")
    parser.add_argument("--fps", type=int, default=30, help="the fake camera's frame rate")
    parser.add_argument("--loop-frames", type=int, default=150,
                        help="clip frames in the camera's loop (default 150: 5 s at 30 fps)")
    parser.add_argument("--clip", default=str(DATA / "clips" / "06_pingpong.mp4"))
    parser.add_argument("--no-passthrough", action="store_true",
                        help="skip the pass-through baseline (half the time, no added_ms)")
    parser.add_argument("--screenshot", type=Path, default=OUT / "page.png",
                        help="the page at 1366x768 at the end of the processed run")
    parser.add_argument("--picture", type=int, default=0, metavar="N",
                        help="compare N frames that came back from the pass-through server "
                             "with the preview's (PSNR, SSIM of the luma; default 0: off)")
    from live.config import add_cli_arguments, settings_from_args

    add_cli_arguments(parser, sections=SERVER_SECTIONS)
    args = parser.parse_args()
    known = {"--duration", "--warmup", "--size", "--fps", "--loop-frames", "--clip",
             "--no-passthrough", "--screenshot", "--picture"}
    args.server_args = _settings_argv(sys.argv[1:], known)

    def measure() -> dict[str, Any]:
        if not 0 <= args.picture <= args.loop_frames // 2:  # frames at least 2 apart
            sys.exit(f"--picture must be between 0 and {args.loop_frames // 2} "
                     f"(half of --loop-frames), got {args.picture}")
        if not CHROMIUM.exists():
            sys.exit(f"{CHROMIUM} not found (Debian: apt-get install -y chromium)")
        if not Path(args.clip).is_file():
            sys.exit(f"clip not found: {args.clip} (set LIVE_DATA_DIR or pass --clip)")
        args.width, args.height = (int(v) for v in args.size.lower().split("x"))
        rtc = settings_from_args(args).webrtc  # full size: the camera within the caps
        scale = max(1.0, args.width / rtc.max_width, args.height / rtc.max_height)
        args.full = (round(args.width / scale), round(args.height / scale))
        if not 2 <= args.loop_frames < 1 << BITS:
            sys.exit(f"--loop-frames must be between 2 and {(1 << BITS) - 1}")
        args.load_at_start = round(os.getloadavg()[0], 2)  # other load skews figures
        return run(args)

    report(measure)


def _settings_argv(argv: list[str], own: set[str]) -> list[str]:
    """The settings flags of ``argv`` (passed on to the servers), without the benchmark's own."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in own:
            skip = "=" not in arg and name != "--no-passthrough"
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    main()
