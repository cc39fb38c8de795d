"""Streaming SAM 2 against the official SAM2VideoPredictor: same frames, weights, device.

    python -m bench.stream [--image-size 256] [--frames 300] [--model tiny]
                           [--checkpoint PATH] [--data DIR_OR_CLIP] [--device auto]
                           [--precision auto|fp32|bf16]
    python -m bench.stream --sessions K [--frames 12] [--rounds 3] [--lanes N] ...
    python -m bench.stream --serve K [--frames 12] [--rounds 3] [--image-size 256] ...


Both predictors get one click on frame 0 and track every frame. They run
interleaved, frame by frame (ours: ``track`` on the decoded frame, preprocessing
included; theirs: the next step of ``propagate_in_video`` on frames it loaded
up front), so the logits are compared as they come and machine load hits both
alike. Random weights unless ``--checkpoint`` is given. The official predictor
only reads JPEG folders, so a clip is first written out as JPEGs, and both read
those. Prints one JSON object as its last line.

With ``--sessions K`` it measures instead K sessions on one shared model (each
its own DAVIS sequence and click): frames per second with their stateless steps
batched (K threads, as K pipelines step, taking turns on the model's compute
lanes; live.segment.sam2_batch: by default a lane per torch thread, each lane
batching its sessions on its share of the threads; ``--lanes 1``: one lane on
all of them) vs the same K sessions stepped one after the other in one (other)
thread on all of torch's threads, in interleaved rounds (the order flips each
round, so machine load hits both alike), and the max |logit difference| of
every session's frames between the two.

With ``--serve K`` the same K sessions run through the Ray Serve deployment
(live.serve.sam2_serve) on a Ray head of its own started here (one replica
reserving every CPU, so as many torch threads as the local run; K threads
each with a ``RemoteStream``, as K session workers), vs the K sessions one
after the other in this process, in interleaved rounds; plus the max |logit
difference| between the two and the replica's mean encoder batch. The head
is stopped at the end (``ray.shutdown``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import live  # noqa: F401  (before torch: it sets torch's OpenMP wait policy, as in the service)
import numpy as np
import torch
from PIL import Image

from bench import DATA, report
from bench.data import load_davis
from bench.sam2_fixture import random_sam2
from live.checkpoints import SAM2_MODELS, sam2_config_name
from live.segment import Prompt
from live.segment.sam2_batch import SAM2Batcher
from live.segment.sam2_stream import (StreamingSAM2, build_model, pick_device, pick_precision,
                                      tensor_bytes)


def click_inside(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs[len(xs) // 2]), float(ys[len(ys) // 2])


def prepare_frames(data: Path, n: int, folder: Path
                   ) -> tuple[list[np.ndarray], tuple[float, float]]:
    """n frames as JPEGs in ``folder`` (for the official loader) and as BGR arrays, plus a click.

    A DAVIS folder is ping-ponged to reach n frames and clicked inside its
    ground-truth mask; a clip is decoded (looping) and clicked at the centre.
    """
    if data.is_dir():
        davis = load_davis(data, n, pingpong=True)
        davis.link_jpegs(folder)
        return davis.frames, click_inside(davis.masks[0])
    import av

    decoded: list[np.ndarray] = []
    with av.open(str(data)) as container:
        for frame in container.decode(video=0):
            decoded.append(frame.to_ndarray(format="rgb24"))
            if len(decoded) >= n:
                break
    for i in range(n):
        Image.fromarray(decoded[i % len(decoded)]).save(folder / f"{i:05d}.jpg", quality=95)
    frames = []
    for i in range(n):  # decode with PIL, exactly as the official loader does
        rgb = np.asarray(Image.open(folder / f"{i:05d}.jpg").convert("RGB"))
        frames.append(np.ascontiguousarray(rgb[..., ::-1]))  # as a camera delivers BGR
    h, w = frames[0].shape[:2]
    return frames, (w / 2, h / 2)


def measure(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=None,
                    help="frames per session (default 300, or 12 with --sessions)")
    ap.add_argument("--model", default="tiny", choices=list(SAM2_MODELS))
    ap.add_argument("--checkpoint", default=None,
                    help="SAM 2.1 checkpoint (default: random weights)")
    ap.add_argument("--data", type=Path, default=DATA / "davis-hike",
                    help="a davis-* folder or a video clip")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"],
                    help="both predictors run under the same autocast (default fp32)")
    ap.add_argument("--max-cond-frames", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=None,
                    help="K sessions on one model: batched vs one after the other")
    ap.add_argument("--serve", type=int, default=None, metavar="K",
                    help="K sessions through a Ray Serve deployment vs one after the other here")
    ap.add_argument("--lanes", type=int, default=None,
                    help="with --sessions: the batcher's compute lanes (default: its own, a "
                    "lane per torch thread on the CPU)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="with --sessions or --serve: interleaved rounds")
    args = ap.parse_args(argv)
    if args.sessions is not None:
        return measure_sessions(args)
    if args.serve is not None:
        return measure_serve(args)
    args.frames = args.frames or 300

    device = pick_device(args.device)
    precision = pick_precision(device, args.precision)
    model = (random_sam2(args.image_size, device, args.model) if args.checkpoint is None else
             build_model(sam2_config_name(args.model), args.checkpoint, args.image_size, device))
    stream = StreamingSAM2(model, max_cond_frames=args.max_cond_frames, precision=precision)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    encoder_ms: list[float] = []
    forward_image = model.forward_image

    def timed_forward_image(img: torch.Tensor) -> dict:
        sync()
        t0 = time.perf_counter()
        out = forward_image(img)
        sync()
        encoder_ms.append((time.perf_counter() - t0) * 1e3)
        return out

    preprocess_ms: list[float] = []
    preprocess = stream.preprocess

    def timed_preprocess(frame: np.ndarray) -> torch.Tensor:
        t0 = time.perf_counter()
        out = preprocess(frame)
        sync()
        preprocess_ms.append((time.perf_counter() - t0) * 1e3)
        return out

    stream.preprocess = timed_preprocess  # type: ignore[method-assign]
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    with tempfile.TemporaryDirectory() as tmp:
        frames, click = prepare_frames(args.data, args.frames, Path(tmp))
        n = len(frames)
        t0 = time.perf_counter()
        with autocast:
            state = model.init_state(tmp)
            model.add_new_points_or_box(state, 0, 1, points=np.array([click], np.float32),
                                        labels=np.array([1], np.int32))
        official_setup_s = time.perf_counter() - t0
        official = model.propagate_in_video(state)
        stream.add_prompt(Prompt(obj_id=1, points=((click[0], click[1], 1),)))

        ours_ms, theirs_ms, ours_enc, ours_pre = [], [], [], []
        worst = 0.0
        ours_bytes = {}
        theirs_bytes = {}
        model.forward_image = timed_forward_image  # instance attribute: both predictors call it
        for i in range(n):
            encoder_ms.clear()
            preprocess_ms.clear()
            sync()
            t0 = time.perf_counter()
            _, ours = stream.track(frames[i])
            sync()
            ours_ms.append((time.perf_counter() - t0) * 1e3)
            ours_enc.extend(encoder_ms)
            ours_pre.append(sum(preprocess_ms))
            t0 = time.perf_counter()
            with autocast:
                idx, _, theirs = next(official)
            sync()
            theirs_ms.append((time.perf_counter() - t0) * 1e3)
            assert idx == i
            worst = max(worst, float((ours - theirs).abs().max()))
            if i in (100, n - 1):
                ours_bytes[i] = stream.state_bytes()["total"]
                theirs_bytes[i] = tensor_bytes([state["output_dict_per_obj"],
                                                state["temp_output_dict_per_obj"],
                                                state["constants"]])
        model.forward_image = forward_image
        preloaded = tensor_bytes(state["images"])

    result = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(),
        "torch_threads": torch.get_num_threads(),
        "precision": precision,
        "model": args.model,
        "weights": args.checkpoint or "random",
        "data": str(args.data),
        "image_size": args.image_size,
        "frames": n,
        "max_abs_logit_diff": worst,
        "stream_state_bytes_at_100": ours_bytes.get(100),
        "stream_state_bytes_last": ours_bytes[n - 1],
        "official_state_bytes_at_100": theirs_bytes.get(100),
        "official_state_bytes_last": theirs_bytes[n - 1],
        "official_preloaded_frames_bytes": preloaded,
        "official_setup_s": round(official_setup_s, 3),
        "stream_ms_per_frame_p50": round(statistics.median(ours_ms), 2),
        "official_ms_per_frame_p50": round(statistics.median(theirs_ms), 2),
        # the same work as ours per frame: its up-front loading (decode, resize,
        # normalise every frame in init_state) spread over the frames it served
        "official_ms_per_frame_p50_incl_loading": round(
            statistics.median(theirs_ms) + official_setup_s * 1e3 / n, 2),
        "stream_ms_per_frame_mean": round(statistics.fmean(ours_ms), 2),
        "official_ms_per_frame_mean": round(statistics.fmean(theirs_ms), 2),
        "encoder_ms_p50": round(statistics.median(ours_enc), 2),
        # ours decodes each frame as it comes; the official predictor preloaded them all
        "stream_preprocess_ms_p50": round(statistics.median(ours_pre), 2),
        "stream_ms_per_frame_p50_excl_preprocess": round(statistics.median(
            [a - b for a, b in zip(ours_ms, ours_pre)]), 2),
    }
    return result


SEQUENCES = ("hike", "lucia", "parkour", "breakdance", "dance-twirl")


Clips = list[tuple[list[np.ndarray], tuple[float, float]]]  # a session's frames, first click


def session_setup(args: argparse.Namespace, k: int, n: int
                  ) -> tuple[torch.nn.Module, Clips, torch.device]:
    """The model, k sessions' frames (a DAVIS sequence each) and first clicks, the device."""
    if k < 1 or n < 1 or args.rounds < 1:
        raise SystemExit("--sessions/--serve, --frames and --rounds must be at least 1")
    device = pick_device(args.device)
    model = (random_sam2(args.image_size, device, args.model) if args.checkpoint is None else
             build_model(sam2_config_name(args.model), args.checkpoint, args.image_size, device))
    model.max_cond_frames_in_attn = args.max_cond_frames
    root = args.data.parent if args.data.is_dir() else DATA  # the davis-* folders
    clips = []
    for i in range(k):
        davis = load_davis(root / f"davis-{SEQUENCES[i % len(SEQUENCES)]}", n, pingpong=True)
        clips.append((davis.frames, click_inside(davis.masks[0])))
    return model, clips, device


def clicked_streams(model: torch.nn.Module, clips: Clips, args: argparse.Namespace,
                    precision: str, batcher: SAM2Batcher | None = None) -> list[StreamingSAM2]:
    """One local stream per clip, its first click queued."""
    out = []
    for _, (x, y) in clips:
        s = StreamingSAM2(model, max_cond_frames=args.max_cond_frames, precision=precision,
                          batcher=batcher)
        s.add_prompt(Prompt(obj_id=1, points=((x, y, 1),)))
        out.append(s)
    return out


def play(stream: StreamingSAM2, frames: list[np.ndarray], sink: list) -> None:
    try:
        for frame in frames:
            stream.step(frame)
            sink.append(stream.low_res_logits()[1])
    finally:
        stream.close()  # done: batched others must not wait for it


def sequential(model: torch.nn.Module, clips: Clips, args: argparse.Namespace, precision: str,
               frames_n: int) -> tuple[float, list[list[torch.Tensor]]]:
    """The sessions one after the other, a frame of each in turn, in one thread: seconds
    taken and each session's logits."""
    streams, logits = clicked_streams(model, clips, args, precision), [[] for _ in clips]

    def loop() -> None:
        for i in range(frames_n):
            for s, (frames, _), sink in zip(streams, clips, logits):
                play(s, frames[i:i + 1], sink)

    # in a thread of its own too, like the batched sessions (with libgomp's default
    # spinning, a process's only OpenMP team, here the main thread's, ran up to 8x slower)
    elapsed = timed_threads([loop])
    if any(len(sink) != frames_n for sink in logits):
        raise RuntimeError("a sequential session failed (see the traceback above)")
    return elapsed, logits


def measure_sessions(args: argparse.Namespace) -> dict:
    k, n = args.sessions, args.frames or 12
    model, clips, device = session_setup(args, k, n)
    precision = pick_precision(device, args.precision)
    alone = functools.partial(sequential, model, clips, args, precision)

    batchers: list[SAM2Batcher] = []

    def batched(frames_n: int) -> tuple[float, list[list[torch.Tensor]]]:
        batcher = SAM2Batcher(model, precision=precision, max_batch=k, idle_s=60.0,
                              lanes=args.lanes)
        batchers.append(batcher)
        streams = clicked_streams(model, clips, args, precision, batcher)
        logits: list[list[torch.Tensor]] = [[] for _ in range(k)]
        elapsed = timed_threads([functools.partial(play, s, frames[:frames_n], sink)
                                 for s, (frames, _), sink in zip(streams, clips, logits)])
        if any(len(sink) != frames_n for sink in logits):
            raise RuntimeError("a batched session failed (see the traceback above)")
        return elapsed, logits

    alone(min(2, n))  # warm-up: first-call allocations and kernel choices
    batched(min(2, n))
    batchers.clear()
    seq_fps, bat_fps, worst = [], [], 0.0
    cpu = {"sequential": 0.0, "batched": 0.0}
    for r in range(args.rounds):
        runs = {}
        for mode in (("sequential", "batched") if r % 2 == 0 else ("batched", "sequential")):
            c0 = time.process_time()
            runs[mode] = (alone if mode == "sequential" else batched)(n)
            cpu[mode] += time.process_time() - c0
        seq_fps.append(k * n / runs["sequential"][0])
        bat_fps.append(k * n / runs["batched"][0])
        for one_by_one, together in zip(runs["sequential"][1], runs["batched"][1]):
            for a, b in zip(one_by_one, together):
                worst = max(worst, float((a - b).abs().max()))
    steps = {step for b in batchers for step in b.counts}
    mean_batch = {step: round(sum(b.counts[step][1] for b in batchers)
                              / sum(b.counts[step][0] for b in batchers), 2) for step in steps}
    return {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "precision": precision,
        "model": args.model,
        "weights": args.checkpoint or "random",
        "image_size": args.image_size,
        "sessions": k,
        "frames_per_session": n,
        "rounds": args.rounds,
        "fps_batched": [round(x, 3) for x in bat_fps],
        "fps_sequential": [round(x, 3) for x in seq_fps],
        "fps_batched_median": round(statistics.median(bat_fps), 3),
        "fps_sequential_median": round(statistics.median(seq_fps), 3),
        "speedup_median": round(statistics.median(b / s for b, s in zip(bat_fps, seq_fps)), 3),
        "lanes": len(batchers[0].lanes),
        "mean_batch": mean_batch,
        # process CPU seconds per frame (both cores count): what load cannot skew
        "cpu_s_per_frame_batched": round(cpu["batched"] / (args.rounds * k * n), 3),
        "cpu_s_per_frame_sequential": round(cpu["sequential"] / (args.rounds * k * n), 3),
        "max_abs_logit_diff": worst,
        "bit_identical": worst == 0.0,
    }



def measure_serve(args: argparse.Namespace) -> dict:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # stay on 127.0.0.1
    import ray

    from live.config import Settings
    from live.serve import cluster
    from live.serve.sam2_serve import RemoteStream, deploy, undeploy

    k, n = args.serve, args.frames or 12
    model, clips, device = session_setup(args, k, n)
    precision = pick_precision(device, args.precision)
    cpus = os.cpu_count() or 1
    run_local = functools.partial(sequential, model, clips, args, precision, n)

    def run_served(deployed: Any) -> tuple[float, list[list[torch.Tensor]], list[Any]]:
        streams = [RemoteStream(deployed) for _ in clips]
        logits: list[list[torch.Tensor]] = [[] for _ in clips]

        def play(s: Any, frames: list[np.ndarray], click: tuple[float, float],
                 sink: list) -> None:
            s.add_prompt(Prompt(obj_id=1, points=((click[0], click[1], 1),)))
            for frame in frames[:n]:
                s.step(frame)
                sink.append(s.low_res_logits()[1])

        elapsed = timed_threads([functools.partial(play, s, f, c, sink) for s, (f, c), sink
                                 in zip(streams, clips, logits)])
        if any(len(sink) != n or s.restarts for s, sink in zip(streams, logits)):
            raise RuntimeError("a served session failed (see the log above)")
        for s in streams:
            s.close()
        return elapsed, logits, streams

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.pt"
        torch.save({"model": model.state_dict()}, checkpoint)
        settings = Settings().merged({
            "engine": {"name": "sam2", "checkpoint": str(checkpoint),
                       "image_size": args.image_size, "device": device.type,
                       "sam2_model": args.model, "max_cond_frames": args.max_cond_frames},
            "server": {"sam2_replicas": 1, "sam2_max_batch": k, "sam2_replica_cpus": cpus}})
        ray.init(num_cpus=cpus, num_gpus=0, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False, runtime_env=cluster._runtime_env())
        try:
            t0 = time.perf_counter()
            deployed = deploy(settings, precision=precision)
            deploy_s = time.perf_counter() - t0
            run_local()  # warm-up
            run_served(deployed)
            local_fps, served_fps, worst, remote_ms, batch = [], [], 0.0, [], 0.0
            for r in range(args.rounds):
                order = ("local", "served") if r % 2 == 0 else ("served", "local")
                runs = {m: run_local() if m == "local" else run_served(deployed) for m in order}
                local_fps.append(k * n / runs["local"][0])
                served_fps.append(k * n / runs["served"][0])
                for a, b in zip(runs["local"][1], runs["served"][1]):
                    worst = max(worst, max(float((x - y).abs().max()) for x, y in zip(a, b)))
                stats = [s.stats() for s in runs["served"][2]]
                remote_ms += [st["remote_ms"] for st in stats]
                batch = max(st["encoder_mean_batch"] for st in stats)
            undeploy(deployed)
        finally:
            ray.shutdown()
    return {
        "device": str(device), "cpus": cpus, "load_avg_1min": round(os.getloadavg()[0], 2),
        "precision": precision, "model": args.model, "weights": args.checkpoint or "random",
        "image_size": args.image_size, "sessions": k, "frames_per_session": n,
        "rounds": args.rounds, "deploy_s": round(deploy_s, 1),
        "fps_served": [round(x, 3) for x in served_fps],
        "fps_local_sequential": [round(x, 3) for x in local_fps],
        "fps_served_median": round(statistics.median(served_fps), 3),
        "fps_local_sequential_median": round(statistics.median(local_fps), 3),
        "ratio_median": round(statistics.median(a / b for a, b in zip(served_fps, local_fps)),
                              3),
        # frames per encoder batch on the replica, since it started (warm-up included)
        "replica_encoder_mean_batch": batch,
        "remote_ms_last_frame_p50": round(statistics.median(remote_ms), 1),
        "max_abs_logit_diff": worst,
    }


def timed_threads(targets: list[Callable[[], None]]) -> float:
    """Seconds to run each target in a thread of its own, all at once."""
    threads = [threading.Thread(target=t) for t in targets]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


if __name__ == "__main__":
    report(measure)
