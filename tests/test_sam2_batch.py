"""Several SAM 2 sessions on one model: batched encoder, separate memory banks.

Each session runs in its own thread, as pipelines do, on one shared randomly
initialised model; its logits must equal those of the same session run alone
(no batcher, nothing else on the model). A batcher that waits for every live
session (huge ``max_wait_ms`` and ``idle_s``) makes each step one full batch, so
the batching is deterministic and counted, with no timing in the test.
"""

from __future__ import annotations

import gc
import threading

import pytest
import torch

from live.config import EngineSettings
from live.segment import Prompt, create_segmenter, model_cache
from live.segment.sam2_batch import SAM2Batcher
from live.segment.sam2_stream import StreamingSAM2
from test_sam2_stream import Event, inside_point, make_clip, model, run_stream  # noqa: F401

FRAMES = 4
TOLERANCE = 1e-3  # the bound; measured on the CPU in fp32: 0.0 to 3e-7
SEQUENCES = ("hike", "lucia", "parkour", "breakdance")
PATIENT = dict(max_wait_ms=600_000, idle_s=600)  # batches wait for every session


def run_batched(streams, clips, events, n):
    """Each session in its own thread, as pipelines step; per-session track() logits."""
    results: list = [None] * len(streams)
    errors: list[BaseException] = []

    def play(i: int) -> None:
        try:
            results[i] = run_stream(streams[i], clips[i], events[i], n)[0]
        except BaseException as exc:
            errors.append(exc)
        finally:
            streams[i].batcher.unregister(streams[i])  # the others must not wait for it

    threads = [threading.Thread(target=play, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def run_alone(model, clip, events, n):
    return run_stream(StreamingSAM2(model, precision="fp32"), clip, events, n)[0]


def max_diff(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    assert all(a[i].shape == b[i].shape for i in a)
    return max(float((a[i] - b[i]).abs().max()) for i in a)


@pytest.mark.parametrize("k, lanes", [(2, 1), (4, 1), (4, 2)])
def test_batched_sessions_equal_each_alone(model, data_dir, tmp_path, k, lanes):
    """On one lane every step batches all k sessions; on two, each lane batches its
    half, the lanes computing side by side on one torch thread each."""
    clips = [make_clip(data_dir, tmp_path, seq, FRAMES) for seq in SEQUENCES[:k]]
    events = [[Event(0, "next", Prompt(obj_id=1, points=(inside_point(c.masks[0]),)))]
              for c in clips]
    batcher = SAM2Batcher(model, max_batch=k, lanes=lanes, **PATIENT)
    streams = [StreamingSAM2(model, precision="fp32", batcher=batcher) for _ in clips]
    together = run_batched(streams, clips, events, FRAMES)
    # really batched: every step of every frame ran once for each lane's k / lanes sessions
    assert batcher.counts["encoder"] == [lanes * FRAMES, k * FRAMES]
    assert batcher.counts["memory_attention"] == [lanes * (FRAMES - 1), k * (FRAMES - 1)]
    assert batcher.counts["memory_encoder"] == [lanes * FRAMES, k * FRAMES]
    for clip, ev, got in zip(clips, events, together):
        alone = run_alone(model, clip, ev, FRAMES)
        assert max_diff(got, alone) <= TOLERANCE
        assert any(float(alone[i].max()) > -1000 for i in alone)  # real logits compared


def test_reset_and_prompts_in_one_session_leave_the_others_alone(model, data_dir, tmp_path):
    """Session 0 gets a second object, a correction click, then a reset and a mask
    prompt; session 1 is prompted once. Each still equals itself run alone."""
    n = 5
    clips = [make_clip(data_dir, tmp_path, seq, n) for seq in SEQUENCES[:2]]
    m0, m1 = clips[0].masks, clips[1].masks
    busy = [Event(0, "next", Prompt(obj_id=1, points=(inside_point(m0[0]),))),
            Event(1, "next", Prompt(obj_id=5, points=(inside_point(m0[1], 0),))),
            Event(2, "correct", Prompt(obj_id=1, points=(inside_point(m0[2]),))),
            Event(3, "reset", Prompt()),
            Event(3, "next", Prompt(obj_id=2, mask=m0[3]))]
    quiet = [Event(0, "next", Prompt(obj_id=1, points=(inside_point(m1[0]),)))]
    batcher = SAM2Batcher(model, max_batch=2, **PATIENT)
    streams = [StreamingSAM2(model, precision="fp32", batcher=batcher) for _ in clips]
    out = run_batched(streams, clips, [busy, quiet], n)
    assert batcher.counts["encoder"][1] == 2 * n
    assert max_diff(out[1], run_alone(model, clips[1], quiet, n)) <= TOLERANCE
    assert max_diff(out[0], run_alone(model, clips[0], busy, n)) <= TOLERANCE
    # the reset dropped objects 1 and 5 of session 0 only
    assert streams[0].obj_ids == [2] and streams[1].obj_ids == [1]
    assert streams[0].stats()["frames"] == n - 3 and streams[1].stats()["frames"] == n


def test_a_stalled_session_does_not_block_the_others(model, data_dir, tmp_path):
    """A live session that stops stepping (its peer sends nothing) costs the others
    at most max_wait_ms per step: they go on alone, with the same outputs."""
    clip = make_clip(data_dir, tmp_path, "hike", 2)
    events = [Event(0, "next", Prompt(obj_id=1, points=(inside_point(clip.masks[0]),)))]
    batcher = SAM2Batcher(model, max_batch=2, max_wait_ms=1, idle_s=600, lanes=1)
    stalled = StreamingSAM2(model, precision="fp32", batcher=batcher)  # never steps
    active = StreamingSAM2(model, precision="fp32", batcher=batcher)
    got = run_stream(active, clip, events, 2)[0]
    assert batcher.counts["encoder"] == [2, 2] and stalled.frame_idx == -1
    assert max_diff(got, run_alone(model, clip, events, 2)) <= TOLERANCE


def test_lanes_share_the_threads_while_several_have_sessions(model):
    """Sessions are spread over the lanes; a lane computes on its share of torch's
    threads while another lane has a live session, and on all of them alone."""
    threads = torch.get_num_threads()
    batcher = SAM2Batcher(model, lanes=2, idle_s=600)
    a, b, c = (type("Session", (), {})() for _ in range(3))  # weakly referenced, as streams
    for session in (a, b, c):
        batcher.register(session)
    assert batcher.lane_of(a) is batcher.lane_of(c) is not batcher.lane_of(b)
    with batcher.serving(a):
        assert torch.get_num_threads() == max(1, threads // 2)
    assert torch.get_num_threads() == threads  # put back for threads started later
    batcher.unregister(b)
    with batcher.serving(a):
        assert torch.get_num_threads() == threads
    assert batcher.stats()["lanes"] == 2 and batcher.stats()["sessions"] == 2


def test_a_failing_step_reaches_its_caller_and_the_batcher_recovers(model):
    batcher = SAM2Batcher(model, max_batch=2, max_wait_ms=0)
    with pytest.raises(RuntimeError):
        batcher.encode(torch.zeros(1, 4, 128, 128))  # four channels: the patch embed refuses
    assert batcher.encode(torch.zeros(1, 3, 128, 128))["vision_features"].shape[0] == 1
    with pytest.raises(ValueError, match="its own model"):
        StreamingSAM2(model, precision="fp32", batcher=SAM2Batcher(model, precision="bf16"))


def test_factory_loads_the_model_once_for_many_sessions(model, tmp_path):
    """Sessions built by the segmenter factory share one model until the last one goes."""
    ckpt = tmp_path / "random.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    settings = EngineSettings(name="sam2", checkpoint=str(ckpt), device="cpu", image_size=128)
    before = sum(model_cache.builds.values())
    a, b, c = (create_segmenter(settings) for _ in range(3))
    assert sum(model_cache.builds.values()) == before + 1
    assert a.stream.model is b.stream.model is c.stream.model
    assert a.stream.batcher is b.stream.batcher and a.stream.batcher.stats()["sessions"] == 3
    assert a.stream is not b.stream  # each session its own memory bank
    other = create_segmenter(EngineSettings(name="sam2", checkpoint=str(ckpt), device="cpu",
                                            image_size=96))
    assert other.stream.model is not a.stream.model and other.stream.image_size == 96
    assert sum(model_cache.builds.values()) == before + 2
    del a, b, c, other
    gc.collect()  # no session holds the models any more: freed, and built again on demand
    assert not [k for k in model_cache.live_keys() if str(ckpt.resolve()) in k]
    create_segmenter(settings)
    assert sum(model_cache.builds.values()) == before + 3


def test_the_sessions_benchmark_runs_its_rounds_and_compares_the_logits(data_dir):
    """``bench.stream --sessions`` (the README's figures): every round of both modes,
    and the batched sessions' logits within the bound of the same sessions in turn."""
    from bench.stream import measure

    out = measure(["--sessions", "2", "--frames", "2", "--rounds", "2", "--image-size", "128",
                   "--data", str(data_dir / "davis-hike")])
    assert len(out["fps_batched"]) == len(out["fps_sequential"]) == 2
    assert min(out["fps_batched"] + out["fps_sequential"]) > 0
    assert out["max_abs_logit_diff"] <= TOLERANCE
    assert out["lanes"] == torch.get_num_threads()  # the default: a lane per torch thread
