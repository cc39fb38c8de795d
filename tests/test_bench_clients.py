"""bench.capacity's cheap clients: a loop of stamped frames encoded once, sent as
packets through a real ``live serve`` (processing on), and every frame that
comes back matched to the send it came from, past the end of the first loop."""

from __future__ import annotations

import time
from pathlib import Path

import av
import pytest

from bench.capacity import LOOP_FRAMES, client_track, encoded_loop, median_of, run_peer
from bench.webrtc import read_stamp
from server_helpers import running_server
from utils import asynctest


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_the_loop_decodes_to_its_stamps_each_time_round(clip_path: Path, codec: str):
    packets = encoded_loop(clip_path, (320, 240), codec, count=12)
    decoder = av.CodecContext.create("libvpx" if codec == "VP8" else "h264", "r")
    stamps = [read_stamp(frame.to_ndarray(format="gray"))
              for packet in packets * 2 for frame in decoder.decode(av.Packet(packet))]
    assert stamps == list(range(12)) * 2


@pytest.mark.parametrize("codec", ["VP8", "H264"])
@asynctest
async def test_pre_encoded_frames_come_back_matched_through_a_real_server(clip_path: Path,
                                                                         codec: str):
    track = client_track(clip_path, (320, 240), codec, 30.0)
    async with running_server() as server:
        start = time.monotonic() + 5.0  # connect and first keyframe first
        result = await run_peer(server.url, track, codec, (start, start + 4.0))
    assert "refused" not in result
    assert result["frames"] > 0 and result["unmatched"] == 0, result
    assert all(0 < ms < 5000 for ms in result["rtt_ms"])
    # sends past the first loop came back: matched by RTP time (the stamp repeats)
    assert result["last_sent"] >= LOOP_FRAMES


def test_repeated_one_peer_steps_are_reported_by_their_median_run():
    runs = [{"server_cpu_ms_per_frame": ms, "rtt_p95": rtt}
            for ms, rtt in ((17.8, 91.0), (15.3, 84.0), (16.0, 86.0), (19.1, 95.0))]
    chosen = median_of(runs)
    assert chosen["server_cpu_ms_per_frame"] == 16.0 and chosen["rtt_p95"] == 86.0  # lower middle
    assert chosen["server_cpu_ms_per_frame_runs"] == [17.8, 15.3, 16.0, 19.1]  # in run order
    assert "server_cpu_ms_per_frame_runs" not in runs[2]  # the run itself is left as it was
    odd = median_of(runs[:3] + [{"server_cpu_ms_per_frame": None, "rtt_p95": None}])
    assert odd["server_cpu_ms_per_frame"] == 16.0  # a run that delivered nothing is not a median
