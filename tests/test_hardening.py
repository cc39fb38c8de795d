"""The findings of the adversarial run (issue 13), each reproduced and held fixed.

One test per finding, on the real thing: real PNGs, real websocket clients,
real recordings and real signals. Memory is measured in a child process
(its peak RSS), so nothing else the test session did counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from live.composite import BackgroundError, Compositor
from live.config import BackgroundSettings
from live.io.webrtc import TrackSource
from utils import asynctest

ROOT = Path(__file__).resolve().parent.parent


def write_strip_png(path: Path, width: int, height: int) -> None:
    """A real, fully decodable grey PNG of width x height, written row by row (a
    100x500,000 strip is ~660 KB on disk: its pixels never exist in this process)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    deflate = zlib.compressobj(9)
    row = b"\x00" + bytes(range(256)) * (width * 3 // 256) + b"\x80" * (width * 3 % 256)
    body = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body)
                     + chunk(b"IEND", b""))


def peak_rss_growth_mb(script: str) -> dict:
    """Run ``script`` in a fresh interpreter; it prints a JSON object, to which the growth
    of peak RSS (MB) between its ``mark()`` call and its end is added as ``growth_mb``."""
    prelude = ("import json, resource\n"
               "def mark():\n"
               "    global _base; _base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n")
    epilogue = ("\nout['growth_mb'] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss"
                " - _base) / 1024\nprint(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", prelude + script + epilogue], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ 1. backgrounds by cost


@pytest.mark.parametrize("size", [(100, 500_000), (200, 250_000), (500_000, 100)])
def test_an_extreme_aspect_image_is_refused_before_it_costs_memory(tmp_path: Path,
                                                                   size: tuple[int, int]) -> None:
    path = tmp_path / "strip.png"
    write_strip_png(path, *size)
    out = peak_rss_growth_mb(f"""
import numpy as np
from live.composite import BackgroundError, Compositor
from live.config import BackgroundSettings
frame = np.zeros((480, 640, 3), np.uint8); alpha = np.zeros((480, 640), np.float32)
comp = Compositor(BackgroundSettings(mode="color", color="#0000ff"))
comp.apply(frame, alpha)
mark()
try:
    comp.update(BackgroundSettings(mode="image", image={str(path)!r}))
    out = {{"error": None}}
except BackgroundError as exc:
    out = {{"error": str(exc)}}
out["still_blue"] = comp.apply(frame, alpha)[5, 5].tolist() == [255, 0, 0]
""")
    assert out["error"] and "elongated" in out["error"], out
    assert out["still_blue"]  # the session keeps its previous background
    assert out["growth_mb"] < 100, out


def test_the_most_elongated_legal_image_costs_a_frame_not_gigabytes(tmp_path: Path) -> None:
    """16:1 at a large size, cover-fitted to 640x480: the fit crops before resizing,
    and is computed once for the size, not per frame."""
    path = tmp_path / "panorama.png"
    write_strip_png(path, 400, 6400)
    out = peak_rss_growth_mb(f"""
import numpy as np
from live.composite import Compositor
from live.config import BackgroundSettings
frame = np.zeros((480, 640, 3), np.uint8); alpha = np.zeros((480, 640), np.float32)
comp = Compositor(BackgroundSettings(mode="blur"))
comp.apply(frame, alpha)
mark()
comp.update(BackgroundSettings(mode="image", image={str(path)!r}))
bgs = set()
for _ in range(30):
    comp.apply(frame, alpha)
    bgs.add(id(comp._background.fitted(640, 480)))
out = {{"fits": len(bgs)}}
""")
    assert out["fits"] == 1, out
    assert out["growth_mb"] < 100, out


def test_a_background_that_cannot_be_applied_keeps_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "tall.png"
    write_strip_png(path, 10, 20_000)
    frame = np.zeros((48, 64, 3), np.uint8)
    alpha = np.zeros((48, 64), np.float32)
    comp = Compositor(BackgroundSettings(mode="color", color="#00ff00"))
    comp.apply(frame, alpha)
    with pytest.raises(BackgroundError, match="tall.png"):
        comp.update(BackgroundSettings(mode="image", image=str(path)))
    assert comp.settings.mode == "color"
    assert comp.apply(frame, alpha)[0, 0].tolist() == [0, 255, 0]
    comp.close()


# ------------------------------------------------------------------ 6. `live run` tells the truth


def live_run(*args: str, preexec=None, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "live.cli", "run", "--engine", "selfie", "--quiet",
           "--no-control", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec)


def start_synthetic_run(output: Path) -> subprocess.Popen:
    """A ``live run`` of a 320x240 synthetic camera into ``output``, left running."""
    return subprocess.Popen([sys.executable, "-m", "live.cli", "run", "--engine", "selfie",
                             "--no-control", "--source", "synthetic", "--source-width", "320",
                             "--source-height", "240", "--output", str(output)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def decodable_frames(path: Path) -> int:
    """Frames a player gets out of ``path``: a cut-off last packet is skipped, as players do."""
    import av

    frames = 0
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            try:
                frames += len(packet.decode())
            except av.error.FFmpegError:
                pass
    return frames


def damage(src: Path, dst: Path) -> None:
    """Three 64 KB runs of random bytes in the middle of the file (as the finding did)."""
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(1)
    for frac in (0.4, 0.5, 0.6):
        at = int(len(data) * frac)
        data[at:at + 65536] = rng.integers(0, 256, 65536, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))


def test_a_damaged_packet_is_skipped_not_the_end_of_the_file(clip_path: Path,
                                                              tmp_path: Path) -> None:
    import av

    bad = tmp_path / "damaged.mp4"
    damage(clip_path, bad)
    with av.open(str(bad)) as container:  # what a plain decode loop gets: it stops early
        stopped_at = 0
        with pytest.raises(av.error.FFmpegError):
            for _ in container.decode(video=0):
                stopped_at += 1
    out = tmp_path / "out.mp4"
    done = live_run("--source", str(bad), "--output", str(out), "--background", "#00ff00")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "damaged packet(s) of the source were skipped" in done.stderr
    assert decodable_frames(out) > stopped_at + 50  # the frames after the damage came through


def test_a_full_disk_is_a_failure_and_leaves_a_playable_file(tmp_path: Path) -> None:
    """RLIMIT_FSIZE stands in for a full disk (works as any user, in any CI): past the
    limit every write fails with EFBIG (Python ignores SIGXFSZ), as on ENOSPC."""
    import resource

    out = tmp_path / "out.mp4"

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    done = live_run("--source", "synthetic", "--source-width", "640", "--source-height", "480",
                    "--frames", "600", "--output", str(out), preexec=limit_file_size)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "FAILED after" in done.stderr
    assert 0 < out.stat().st_size <= 100_000
    assert decodable_frames(out) > 10  # playable up to the last fragment written


@asynctest
async def test_a_recording_cut_anywhere_is_cut_back_to_a_whole_fragment(tmp_path: Path) -> None:
    """Wherever a full disk cuts the last write, ``cut_after_last_fragment`` leaves a
    file FFmpeg opens and plays up to its last whole frame (a moof cut short at the
    end could make the whole file unopenable)."""
    import av

    from live.frames import Frame
    from live.io.files import RecorderSink, cut_after_last_fragment
    from live.io.synthetic import SyntheticSource

    full = tmp_path / "full.mp4"
    sink, source = RecorderSink(full, 30.0), SyntheticSource(320, 240)
    for i in range(40):
        await sink.write(source.render(i), Frame(source.render(i), i, i / 30))
    await sink.close()
    data = full.read_bytes()
    unopenable, frames = 0, []
    for n in range(2_000, len(data), 997):  # a cut inside boxes of every kind
        cut = tmp_path / f"cut{n}.mp4"
        cut.write_bytes(data[:n])
        try:
            av.open(str(cut)).close()
        except av.FFmpegError:
            unopenable += 1
        cut_after_last_fragment(cut)
        assert cut.stat().st_size <= n
        frames.append(decodable_frames(cut))
        cut.unlink()
    assert frames == sorted(frames) and frames[-1] >= 35, frames  # every cut plays
    assert unopenable > 0  # what the cut is for: some of these did not open before
    cut_after_last_fragment(full)
    assert full.read_bytes() == data  # a whole file is left alone


def test_a_killed_recording_plays_up_to_its_last_frames(tmp_path: Path) -> None:
    import signal
    import time

    out = tmp_path / "out.webm"
    proc = start_synthetic_run(out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 20_000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert decodable_frames(out) > 10


def test_sigint_stops_a_run_whose_output_is_blocked(tmp_path: Path) -> None:
    """An output nobody reads (a FIFO) blocks its writer forever; Ctrl-C must still end
    the run, promptly and with a non-zero status."""
    import signal
    import time

    fifo = tmp_path / "out.mp4"
    os.mkfifo(fifo)
    proc = start_synthetic_run(fifo)
    time.sleep(5)  # by now the model is loaded and the recorder is stuck opening the FIFO
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)  # generous: this is about blocking forever, not speed
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("SIGINT did not stop a run whose output blocks: "
                    + proc.stderr.read()[-1500:].replace("\r", "\n"))
    assert proc.returncode == 1
    assert "did not finish" in proc.stderr.read()


# ------------------------------------------------------------------ 2. bytes, not messages

ATTACKER = """
import json, sys
from websockets.sync.client import connect
url, count = sys.argv[1], int(sys.argv[2])
nested = '{"type": "hello", "id": 7, "pad": [' + '[1,2,3],' * 1_970_000 + '[1]]}'  # ~15 MiB
replies = []
with connect(url, max_size=None, open_timeout=20, compression=None) as ws:
    print("ready", flush=True)  # built and connected: what is timed starts here
    sys.stdin.readline()
    for _ in range(count):
        ws.send(nested)
        while True:
            reply = json.loads(ws.recv(timeout=60))
            if reply.get("type") != "stats":
                break
        replies.append(reply)
print(json.dumps({"size": len(nested), "replies": replies}))
"""


async def frames_and_stalls(track, until) -> tuple[int, float]:
    """Frames received from ``track``, and the longest the event loop was held (s),
    until ``until()`` is true.

    The loop is what delivers every session's frames (the server and this peer
    share it here), so how long it is held is how long another session's frames
    wait; it is timed directly, without the network's and the decoder's jitter.
    """
    import time

    stalls, received = [0.0], 0

    async def tick() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            stalls.append(time.perf_counter() - t0 - 0.005)

    ticker = asyncio.ensure_future(tick())
    try:
        while not until():
            await asyncio.wait_for(track.recv(), 20)
            received += 1
    finally:
        ticker.cancel()
    return received, max(stalls)


def test_huge_messages_do_not_stall_another_session(clip_path: Path) -> None:
    """Three 15 MiB messages of nested lists (2.8–6.2 s of event loop each, before)
    while a WebRTC session streams on the same server: its frames keep coming, and the
    loop that delivers them is never held 100 ms longer than in a quiet window of the
    same run (this is about blocking for seconds, not speed: ~75 ms here, loaded).
    """
    import time

    from server_helpers import ClipTrack, load_clip, recv_frames, running_server
    from live.serve.client import ControlClient

    frames = load_clip(clip_path, 30)

    @asynctest
    async def scenario() -> tuple[tuple[int, float], tuple[int, float], dict]:
        async with running_server() as server:
            async with ControlClient(server.url) as peer:
                track = await peer.start_video(ClipTrack(frames))
                await recv_frames(track, 15)  # warmed up
                start = time.monotonic()
                quiet = await frames_and_stalls(track, lambda: time.monotonic() - start > 3)
                ws_url = f"ws://127.0.0.1:{server.port}/ws?token={server.token}"
                attacker = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", ATTACKER, ws_url, "3", cwd=ROOT,
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
                assert await attacker.stdout.readline() == b"ready\n"
                await recv_frames(track, 15)  # the attacker's start-up is over
                reader = asyncio.ensure_future(attacker.communicate(b"go\n"))
                loud = await frames_and_stalls(track, reader.done)
                out, _ = await reader
        return quiet, loud, json.loads(out.decode().strip().splitlines()[-1])

    (_, quiet_stall), (loud_frames, loud_stall), attack = scenario()
    assert attack["size"] > 15 << 20
    first, *rest = attack["replies"]  # refused from its head; then the byte budget is spent
    assert first["type"] == "error" and first["id"] == 7 and "byte limit" in first["error"]
    assert all(r["type"] == "error" and ("byte limit" in r["error"] or "too much data"
                                         in r["error"]) for r in rest), rest
    assert loud_frames > 3, "no frames came through while the attack ran"
    assert loud_stall <= quiet_stall + 0.1, (loud_stall, quiet_stall)


def test_a_large_upload_is_still_taken(tmp_path: Path) -> None:
    """Over the control limit but a flat background.upload: parsed (off the loop) and used."""
    import base64

    import cv2

    from server_helpers import running_server
    from live.serve.client import ControlClient

    noise = np.random.default_rng(0).integers(0, 256, (700, 900, 3), dtype=np.uint8)
    data = base64.b64encode(cv2.imencode(".png", noise)[1].tobytes()).decode()
    assert len(data) > 1 << 20

    @asynctest
    async def scenario() -> dict:
        async with running_server() as server:
            async with ControlClient(server.url) as client:
                return await client.request("background.upload", data=data)

    reply = scenario()
    assert reply["type"] == "ok", reply
    assert reply["settings"]["background"]["image"] == reply["upload"]


# ------------------------------------------------------------------ 3. paths belong to the operator


def test_a_client_names_no_server_file_and_learns_nothing_about_them(tmp_path: Path) -> None:
    """Outside the media folder, missing, a symlink out, not a video, a folder: one
    reply, whichever it is. A video of the media folder, named by its name, plays."""

    import av

    from server_helpers import running_server, test_settings
    from live.serve.client import ControlClient

    media = tmp_path / "media"
    media.mkdir()
    with av.open(str(media / "loop.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(3):
            img = np.full((48, 64, 3), 60 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    (media / "broken.mp4").write_bytes(b"\0" * 500)
    (media / "folder.mp4").mkdir()
    os.symlink("/etc/hostname", media / "escape.mp4")
    secret = tmp_path / "secret.mp4"
    secret.write_bytes((media / "loop.mp4").read_bytes())  # a real video, outside the folder
    names = [str(secret), "../secret.mp4", "/etc/hostname", "/nonexistent.mp4", "missing.mp4",
             "broken.mp4", "folder.mp4", "escape.mp4", "", "x" * 5000]

    @asynctest
    async def scenario() -> tuple[list[dict], list[dict], dict, dict]:
        settings = test_settings(server={"media_dir": str(media)})
        async with running_server(settings) as server:
            async with ControlClient(server.url) as client:
                hello = await client.request("hello")
                videos = [await client.request("settings.set", settings={
                    "background": {"mode": "video", "video": n}}) for n in names]
                images = [await client.request("settings.set", settings={
                    "background": {"mode": "image", "image": n}}) for n in names]
                good = await client.request("settings.set", settings={
                    "background": {"mode": "video", "video": "loop.mp4"}})
        return videos, images, hello, good

    videos, images, hello, good = scenario()
    # every refusal carries the same text once the name it quotes is taken out
    for replies in (videos, images):
        assert all(r["type"] == "error" for r in replies), replies
        texts = {r["error"].replace(repr(n) if len(n) <= 80 else "'…'", "<name>")
                 for r, n in zip(replies, names)}
        assert len(texts) == 1, texts
        assert "not available" in texts.pop()
    assert hello["media"] == ["broken.mp4", "loop.mp4"]  # not the folder, nor the way out
    assert good["type"] == "ok" and good["settings"]["background"]["video"] == "loop.mp4"


def test_a_sam2_request_without_a_checkpoint_loads_nothing(tmp_path: Path) -> None:
    """Asking for SAM 2 (or auto) with no checkpoint is refused before torch is imported:
    it used to cost ~480 MB per request, for good."""
    script = f"""
import asyncio, json, os, sys
os.environ["LIVE_CHECKPOINT_DIR"] = {str(tmp_path)!r}
sys.path.insert(0, "tests")
from server_helpers import running_server, test_settings
from live.serve.client import ControlClient

async def main():
    async with running_server() as server:
        async with ControlClient(server.url) as client:
            return [await client.request("settings.set", settings={{"engine": {{"name": n}}}})
                    for n in ("sam2", "auto", "sam2")]

replies = asyncio.run(main())
print(json.dumps({{"replies": replies, "torch": "torch" in sys.modules,
                   "sam2": "sam2" in sys.modules}}))
"""
    env = dict(os.environ, LIVE_CHECKPOINT_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    sam2, auto, again = out["replies"]
    assert sam2["type"] == "error" and "live fetch sam2" in sam2["error"], sam2
    assert auto["type"] == "ok"  # auto without a checkpoint is the embedded engine
    assert again["type"] == "error"
    assert out["torch"] is False and out["sam2"] is False


def test_a_client_may_not_name_a_checkpoint(tmp_path: Path) -> None:
    from live.serve import protocol

    with pytest.raises(protocol.ProtocolError, match="operator"):
        protocol.settings_patch({"settings": {"engine": {"checkpoint": "/etc/passwd"}}})


# ------------------------------------------------------------------ 4. admission and staleness


class Clocks:
    """The two load readings admission takes (this process's CPU, the machine's idle
    CPU), advanced by the test: the decision rule on known numbers."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.idle = 0.0

    def advance(self, seconds: float, busy_cores: float, idle_cores: float) -> None:
        import time

        time.sleep(seconds)
        self.cpu += busy_cores * seconds
        self.idle += idle_cores * seconds


def test_admission_follows_the_measured_cost_of_a_frame() -> None:
    from live.serve.admission import Admission

    clocks = Clocks()
    admission = Admission(8, cores=4, cpu_seconds=lambda: clocks.cpu,
                          idle_seconds=lambda: clocks.idle)
    assert admission.refusal(0, 0, False) is None  # the first one always
    frames = {"a": 0}
    admission.sample(frames)
    for _ in range(3):  # one session: 30 frames a second at 20 ms of CPU each
        clocks.advance(0.2, busy_cores=0.6, idle_cores=3.4)
        frames["a"] += 6
        admission.sample(frames)
    assert admission.frame_cost() == pytest.approx(0.02, rel=0.01)
    assert admission.refusal(1, 0, False) is None  # 0.6 more cores fit in 3.4 idle
    for _ in range(3):  # now something else takes the machine: 0.4 cores idle
        clocks.advance(0.2, busy_cores=0.6, idle_cores=0.4)
        frames["a"] += 6
        admission.sample({"a": frames["a"]})
    for _ in range(12):
        clocks.advance(0.25, busy_cores=0.6, idle_cores=0.4)
        frames["a"] += 7
        admission.sample(frames)
    refusal = admission.refusal(1, 0, False)
    assert refusal and "at capacity" in refusal and "CPU cores" in refusal
    assert "fall behind" in admission.refusal(1, 0, True)
    assert "at most" not in refusal and "8" in Admission(8).refusal(8, 0, False)


def test_peers_arriving_together_are_planned_before_their_cost_shows() -> None:
    """A session admitted a moment ago is not in the measured window yet: the next
    offer must be planned with it, or two peers arriving together both pass."""
    from live.serve.admission import Admission

    clocks = Clocks()
    admission = Admission(8, cores=2, cpu_seconds=lambda: clocks.cpu,
                          idle_seconds=lambda: clocks.idle)
    frames = {"a": 0}
    admission.sample(frames)
    for _ in range(3):  # one session at 20 ms a frame, 1.3 cores idle: room for one more
        clocks.advance(0.2, busy_cores=0.6, idle_cores=1.3)
        frames["a"] += 6
        admission.sample(frames)
    assert admission.refusal(1, 0, False) is None  # 0.6 cores in 0.8 x 1.3
    # the next offer, at once: the one just admitted has not loaded the machine yet
    refusal = admission.refusal(2, 0, False)
    assert refusal and "CPU cores" in refusal


def test_peers_arriving_after_a_lull_are_priced_at_the_last_steady_cost() -> None:
    """A frame is priced over a steady window only: not while a session starts (its
    model loads, CPU that belongs to no frame) or ends. Sessions ended, the window
    emptied of frames, peers come in together: they are planned at the cost last
    measured (12 ms a frame here: four fit in two idle cores), not at the prior,
    which would refuse the second."""
    from live.serve.admission import PRIOR_FRAME_CPU_S, PLANNED_FPS, Admission

    clocks = Clocks()
    admission = Admission(8, cores=2, cpu_seconds=lambda: clocks.cpu,
                          idle_seconds=lambda: clocks.idle)
    assert admission.frame_cost() is None
    frames = {"a": 0}
    admission.sample(frames)
    for _ in range(3):  # one session: 30 frames a second at 12 ms each
        clocks.advance(0.2, busy_cores=0.36, idle_cores=1.6)
        frames["a"] += 6
        admission.sample(frames)
    assert admission.frame_cost() == pytest.approx(0.012, rel=0.01)
    frames["b"] = 0
    for _ in range(3):  # a second starts: a core loading its model, three frames
        clocks.advance(0.2, busy_cores=1.36, idle_cores=0.6)
        frames["a"] += 6
        frames["b"] += 1
        admission.sample(frames)
    assert admission.frame_cost() == pytest.approx(0.012, rel=0.01)
    for _ in range(3):  # both end, with a burst of closing
        clocks.advance(0.2, busy_cores=0.5, idle_cores=1.5)
        admission.sample({})
    for _ in range(16):  # 4 s of an idle machine
        clocks.advance(0.25, busy_cores=0.0, idle_cores=1.95)
        admission.sample({})
    assert admission.frame_cost() == pytest.approx(0.012, rel=0.01)
    assert admission.refusal(0, 0, False) is None
    assert admission.refusal(1, 0, False) is None  # 2 x 0.36 cores in 0.8 x 1.95
    assert 2 * PRIOR_FRAME_CPU_S * PLANNED_FPS > 0.8 * 1.95  # the prior: 1.8 cores, no
    assert admission.refusal(2, 0, False) is None  # 3 x 0.36 = 1.08
    assert admission.refusal(3, 0, False) is None  # 1.44
    refusal = admission.refusal(4, 0, False)  # 1.8 > 1.56: the fifth waits
    # the cores quoted are for it and the four admitted moments ago, and it says so
    assert "with the 4 started moments ago, needs ~1.8 CPU cores" in refusal, refusal


def test_late_frames_are_dropped_at_the_source_and_reported() -> None:
    """A track whose frames reach us later and later (a backlog in the socket buffer):
    the source skips the stale ones, so what it hands on stays fresh."""
    import fractions
    import time

    import av
    from aiortc.mediastreams import MediaStreamTrack

    class Backlogged(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.n = 0
            self.t0 = time.monotonic()

        async def recv(self) -> av.VideoFrame:
            # captured at 30 fps; the first on time, then a 1 s stall, then the backlog
            # delivered at 60 fps: the frames after the stall are old when they arrive
            self.n += 1
            await asyncio.sleep(1.0 if self.n == 2 else 1 / 60)
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="bgr24")
            frame.pts, frame.time_base = int(self.n * 3000), fractions.Fraction(1, 90_000)
            return frame

    @asynctest
    async def scenario() -> tuple[list[float], dict]:
        source = TrackSource(Backlogged())
        ages = []
        start = time.monotonic()
        for _ in range(20):
            frame = await source.read()
            ages.append(time.monotonic() - start - (frame.pts - 1 / 30))
        return ages, source.stats()

    ages, stats = scenario()
    assert stats["stale_dropped"] > 10 and stats["overloaded"] is True
    assert max(ages) <= TrackSource.MAX_AGE_S + 0.1, ages


def test_an_offer_that_never_connects_is_released() -> None:
    """The answer is never applied: no ICE, no media. The slot comes back within
    seconds (it took 63–66 s before)."""
    from aiortc import RTCConfiguration, RTCPeerConnection, VideoStreamTrack

    from server_helpers import running_server, wait_until
    from live.serve import peer
    from live.serve.client import ControlClient

    @asynctest
    async def scenario() -> None:
        async with running_server() as server:
            async with ControlClient(server.url) as client:
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                pc.addTransceiver(VideoStreamTrack(), direction="sendrecv")
                await pc.setLocalDescription(await pc.createOffer())
                reply = await client.request("offer", sdp=pc.localDescription.sdp)
                assert reply["type"] == "ok", reply
                assert reply["session"] in server.sessions
                await wait_until(lambda: not server.sessions, peer.CONNECT_TIMEOUT_S + 20,
                                 "the unconnected session to be released")
                await pc.close()

    scenario()


# ------------------------------------------------------------------ 5. ownership, 7. error texts


def test_a_page_sees_and_steers_only_its_own_sessions_and_never_a_path(tmp_path: Path) -> None:
    import cv2

    from server_helpers import ServerThread, test_settings
    from live.io import NullSink
    from live.io.synthetic import SyntheticSource
    from live.pipeline import FrameProcessor, Pipeline
    from live.serve.client import ControlClient
    from live.serve.session import Session

    private = tmp_path / "holiday-of-the-operator.png"
    cv2.imwrite(str(private), np.full((90, 160, 3), 90, np.uint8))
    settings = test_settings(background={"mode": "image", "image": str(private)})
    processor = FrameProcessor(settings)
    run = Session(processor, Pipeline(SyntheticSource(160, 90, 10.0), [NullSink()], processor),
                  kind="run", session_id="run")

    @asynctest
    async def as_client(url: str) -> tuple[dict, dict, dict]:
        async with ControlClient(url) as client:
            listed = await client.request("sessions.list")
            steer = await client.request("settings.set", session="run",
                                         settings={"matte": {"feather": 2}})
            probe = await client.request("settings.get", session="nosuchsession")
            return listed, steer, probe

    with ServerThread(settings, sessions=[run]) as st:
        page = as_client(st.server.url)
        operator = as_client(st.server.operator_url)
    listed, steer, probe = page
    assert listed["sessions"] == [] and steer["type"] == "error"
    assert steer["error"].replace("'run'", "X") == probe["error"].replace("'nosuchsession'", "X")
    listed, steer, _ = operator
    assert steer["type"] == "ok" and processor.settings.matte.feather == 2
    assert listed["sessions"][0]["settings"]["background"]["image"] == private.name
    assert str(tmp_path) not in json.dumps(operator)
    processor.close()


def test_an_internal_error_is_a_reference_not_its_text(caplog) -> None:
    import logging

    from server_helpers import ServerThread
    from live.serve.client import ControlClient

    async def broken(client, msg):  # a bug in a handler, as KeyError: 'holdconn' was
        raise KeyError("holdconn")

    @asynctest
    async def ask(url: str) -> dict:
        async with ControlClient(url) as client:
            return await client.request("stats")

    with ServerThread() as st:
        st.server._on_stats = broken
        with caplog.at_level(logging.ERROR, logger="live.serve"):
            reply = ask(st.server.url)
    assert reply["type"] == "error" and "holdconn" not in reply["error"]
    ref = reply["error"].split("reference ")[1].split()[0]
    assert any(ref in r.getMessage() and "holdconn" in (r.exc_text or str(r.exc_info))
               for r in caplog.records)


def test_media_sockets_bind_where_the_server_listens(clip_path: Path) -> None:
    """A loopback-only server offered (and bound) its WebRTC UDP sockets on every
    interface; now only on loopback, and a peer on this machine still connects."""
    from server_helpers import ClipTrack, load_clip, recv_frames, running_server
    from live.serve.client import ControlClient

    frames = load_clip(clip_path, 10)

    @asynctest
    async def scenario() -> list[str]:
        async with running_server() as server:
            assert server.settings.server.host == "127.0.0.1"
            async with ControlClient(server.url) as client:
                track = await client.start_video(ClipTrack(frames))
                await recv_frames(track, 3)
                answer = client.pc.remoteDescription.sdp
        return [line.split()[4] for line in answer.splitlines()
                if line.startswith("a=candidate:")]

    addresses = scenario()
    assert addresses and set(addresses) == {"127.0.0.1"}, addresses
