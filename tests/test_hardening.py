"""The findings of the adversarial run (issue 13), each reproduced and held fixed.

One test per finding, on the real thing: real PNGs, real websocket clients,
real recordings and real signals. Memory is measured in a child process
(its peak RSS), so nothing else the test session did counts.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from live.composite import BackgroundError, Compositor
from live.config import BackgroundSettings

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
