"""The control protocol over a real socket: every message type, every refusal,
authentication, static files, limits, and a fuzz run while another peer streams."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from live.serve import protocol
from server_helpers import ServerThread, StreamingPeer, load_clip, test_settings
from utils import asynctest


# --------------------------------------------------------------------------- helpers


def ws_connect(server, *, token: str | None = None, origin: str | None = None,
               host: str | None = None) -> ClientConnection:
    token = server.token if token is None else token
    headers = {"Origin": origin} if origin else None
    uri = f"ws://{host or '127.0.0.1'}:{server.port}/ws?token={token}"
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return connect(uri, sock=sock, additional_headers=headers, open_timeout=10,
                   max_size=protocol.MAX_MESSAGE_BYTES, compression=None)


def ask(ws: ClientConnection, raw: str | bytes | dict) -> dict:
    """Send one frame and return the next reply (pushes, which have no id, are skipped)."""
    ws.send(json.dumps(raw) if isinstance(raw, dict) else raw)
    while True:
        reply = json.loads(ws.recv(timeout=30))
        if "id" in reply:
            return reply


def png_b64(image: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return base64.b64encode(buf.tobytes()).decode()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims width x height (a pixel bomb)."""
    ok, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.tobytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.fixture(scope="module")
def frames(clip_path: Path) -> list[np.ndarray]:
    return load_clip(clip_path, 10)


@pytest.fixture
def st_server():
    with ServerThread() as st_:
        yield st_


# --------------------------------------------------------------------------- round trips


def test_every_message_type_round_trips(st_server, frames):
    server = st_server.server
    with ws_connect(server) as ws:
        hello = ask(ws, {"type": "hello", "id": 1})
        assert hello["type"] == "ok" and hello["id"] == 1 and hello["server"] == "live"
        assert set(hello["message_types"]) == set(protocol.MESSAGE_TYPES)
        assert "server" not in hello["settings"], "the token's section must never be sent"
        assert set(hello["schema"]) == set(protocol.CLIENT_SECTIONS)
        assert hello["schema"]["matte"]["ema"]["min"] == 0.05  # the page's sliders use these
        assert "blur" in hello["schema"]["background"]["mode"]["choices"]

        got = ask(ws, {"type": "settings.get", "id": "a"})
        assert got["type"] == "ok" and got["id"] == "a" and got["session"] is None
        assert got["settings"]["engine"]["name"] == "selfie"

        # Before any video, settings apply to this connection's next session.
        changed = ask(ws, {"type": "settings.set", "id": 2,
                           "settings": {"background": {"mode": "color", "color": "#123456"},
                                        "matte": {"feather": 9}}})
        assert changed["type"] == "ok", changed
        assert changed["settings"]["background"]["color"] == "#123456"
        assert changed["settings"]["matte"]["feather"] == 9

        upload = ask(ws, {"type": "background.upload", "id": 3,
                          "data": "data:image/png;base64," + png_b64(frames[0])})
        assert upload["type"] == "ok", upload
        assert upload["settings"]["background"]["image"] == upload["upload"]  # an id, no path
        image_path = server.uploads.path_of(upload["upload"])
        assert upload["settings"]["background"]["mode"] == "image" and image_path.is_file()
        assert cv2.imread(str(image_path)).shape == frames[0].shape

        for kind in ("prompt", "reset", "stats"):
            reply = ask(ws, {"type": kind, "id": 4, "points": [[1, 1, 1]]})
            assert reply["type"] == "error" and "no video session" in reply["error"], reply

        assert ask(ws, {"type": "sessions.list", "id": 5}) == {"type": "ok", "id": 5,
                                                               "sessions": []}

    peer = StreamingPeer(st_server, frames)  # offer → answer, through live.serve.client
    try:
        peer.wait_frames(5)
        with ws_connect(server) as ws:  # the page's token: another page's session is not its
            assert ask(ws, {"type": "sessions.list", "id": 6})["sessions"] == []
            refused = ask(ws, {"type": "reset", "id": 6, "session": peer.session})
            assert refused["type"] == "error" and "operator" in refused["error"]
        with ws_connect(server, token=server.operator_token) as ws:
            listed = ask(ws, {"type": "sessions.list", "id": 6})["sessions"]
            assert [s["session"] for s in listed] == [peer.session]
            assert listed[0]["kind"] == "webrtc" and listed[0]["own"] is False

            target = {"session": peer.session}
            stats = ask(ws, {"type": "stats", "id": 7, **target})
            assert stats["type"] == "ok" and stats["stats"]["frames"] > 0
            assert {"fps", "dropped", "stage_ms", "mask_age_ms", "engine"} <= set(stats["stats"])

            prompt = ask(ws, {"type": "prompt", "id": 8, "points": [[100, 80, 1]], **target})
            assert prompt["type"] == "error" and "selfie" in prompt["error"], prompt
            assert ask(ws, {"type": "reset", "id": 9, **target})["type"] == "ok"

            recolour = ask(ws, {"type": "settings.set", "id": 10, **target,
                                "settings": {"background": {"mode": "color",
                                                            "color": "#00ff00"}}})
            assert recolour["type"] == "ok" and recolour["session"] == peer.session
            assert server.sessions[peer.session].processor.settings.background.color == "#00ff00"

            # A change that cannot be applied is refused and changes nothing.
            missing = ask(ws, {"type": "settings.set", "id": 11, **target, "settings": {
                "engine": {"name": "sam2", "checkpoint": "/nonexistent/sam2.pt"}}})
            assert missing["type"] == "error" and "operator" in missing["error"]
            missing = ask(ws, {"type": "settings.set", "id": 11, **target, "settings": {
                "engine": {"name": "sam2", "sam2_model": "large"}}})
            assert missing["type"] == "error" and "live fetch sam2" in missing["error"]
            assert server.sessions[peer.session].processor.settings.engine.name == "selfie"

            # Stats are also pushed, unasked, about once a second.
            pushed = None
            for _ in range(10):
                msg = json.loads(ws.recv(timeout=5))
                if msg["type"] == "stats":
                    pushed = msg
                    break
            assert pushed and pushed["sessions"][0]["session"] == peer.session
        peer.wait_frames(5)
    finally:
        peer.close()
    assert server.received["offer"] == 1 and server.received["prompt"] >= 2


def test_a_settings_change_is_pushed_to_every_other_client_of_the_session(st_server, frames):
    """Two tabs on one session: whoever changes it, the other sees the new settings.
    (Tabs other than the session's own page steer it with the operator's token.)"""
    server = st_server.server
    owner = StreamingPeer(st_server, frames)  # the session's own page
    try:
        owner.wait_frames(3)
        target = {"session": owner.session}
        with ws_connect(server, token=server.operator_token) as steering, \
                ws_connect(server, token=server.operator_token) as watching, \
                ws_connect(server) as stranger:  # the page's token: not its session
            ask(watching, {"type": "hello", "id": 1})
            changed = ask(steering, {"type": "settings.set", "id": 2, **target,
                                     "settings": {"background": {"mode": "color",
                                                                 "color": "#0000ff"}}})
            assert changed["type"] == "ok", changed

            def next_settings_push(ws: ClientConnection) -> dict:
                for _ in range(20):
                    msg = json.loads(ws.recv(timeout=10))
                    if msg["type"] == "settings":
                        return msg
                raise AssertionError("no settings push")

            pushed = next_settings_push(watching)
            assert pushed == {"type": "settings", "session": owner.session,
                              "settings": changed["settings"]}
            assert "server" not in pushed["settings"]  # it holds the token
            # the session's owner (another connection too) hears of it, through live.serve.client
            deadline = time.monotonic() + 10
            while not owner.client.settings_pushed and time.monotonic() < deadline:
                time.sleep(0.05)
            assert owner.client.settings_pushed[-1]["settings"]["background"]["color"] == "#0000ff"

            # An upload is a settings change too; a refused change pushes nothing.
            upload = ask(watching, {"type": "background.upload", "id": 3, **target,
                                    "data": png_b64(frames[0])})
            assert upload["type"] == "ok", upload
            refused = ask(watching, {"type": "settings.set", "id": 4, **target,
                                     "settings": {"matte": {"feather": 1000}}})
            assert refused["type"] == "error"
            pushed = next_settings_push(steering)
            assert pushed["settings"]["background"]["mode"] == "image"

            def pushes_before_reply(ws: ClientConnection, msg_id: int) -> list[dict]:
                ws.send(json.dumps({"type": "sessions.list", "id": msg_id}))
                seen = []
                while (msg := json.loads(ws.recv(timeout=10))).get("id") != msg_id:
                    seen.append(msg)
                return [m for m in seen if m["type"] == "settings"]

            assert pushes_before_reply(steering, 5) == []  # the refused change pushed nothing
            assert pushes_before_reply(watching, 6) == []  # nor did its own upload, to itself
            assert pushes_before_reply(stranger, 7) == []  # another page hears nothing of it
        owner.wait_frames(3)
    finally:
        owner.close()


# --------------------------------------------------------------------------- refusals


def _settings_set(patch: dict) -> str:
    return json.dumps({"type": "settings.set", "id": 1, "settings": patch})


BAD_MESSAGES = [
    ("not json", "malformed JSON"),
    ('{"type": "hello", "id": 1', "malformed JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('"hello"', "must be a JSON object"),
    ('{"id": 1}', "needs a string 'type'"),
    ('{"type": 5, "id": 1}', "needs a string 'type'"),
    ('{"type": "launch.missiles", "id": 1}', "unknown message type"),
    ('{"type": "hello"}', "needs an 'id'"),
    ('{"type": "hello", "id": [1]}', "id must be"),
    ('{"type": "hello", "id": true}', "id must be"),
    ('{"type": "settings.set", "id": 1, "settings": {"matte": {"ema": NaN}}}', "NaN"),
    ("[" * 50_000 + "]" * 50_000, "at most 512 lists"),           # refused unparsed
    ("[" * 500 + "]" * 499, "malformed JSON"),
    ('{"type": "settings.set", "id": 1}', "needs \"settings\""),
    (_settings_set({"matte": {"feather": "wide"}}), "matte.feather must be a number"),
    (_settings_set({"matte": {"feather": 1000}}), "between 0 and 64"),
    (_settings_set({"matte": {"feather": 2.5}}), "whole number"),
    ('{"type": "settings.set", "id": 1, "settings": {"matte": {"feather_eps": 1%s}}}' % ("0" * 400),
     "matte.feather_eps must be a finite number"),             # float() of it overflows
    (_settings_set({"background": {"color": "green"}}), "#RRGGBB"),
    (_settings_set({"background": {"mode": "sparkles"}}), "must be one of"),
    (_settings_set({"background": {"mode": "image"}}), "needs background.image"),
    (_settings_set({"background": {"brightness": 2}}), "unknown setting background.brightness"),
    (_settings_set({"server": {"host": "0.0.0.0"}}), "cannot be changed"),
    (_settings_set({"server": {"token": "mine"}}), "cannot be changed"),
    (_settings_set({"nonsense": {}}), "unknown settings section"),
    (_settings_set({"matte": 3}), "must be an object"),
    ('{"type": "prompt", "id": 1, "points": [[1, 2]]}', "each point"),
    ('{"type": "prompt", "id": 1, "points": [[1, 2, 7]]}', "each point"),
    ('{"type": "prompt", "id": 1, "points": [[-5, 2, 1]]}', "outside the frame"),
    ('{"type": "prompt", "id": 1, "points": [[1%s, 2, 1]]}' % ("0" * 400), "each point"),
    ('{"type": "prompt", "id": 1, "points": "here"}', "points must be a list"),
    ('{"type": "prompt", "id": 1, "obj_id": 0, "points": [[1, 2, 1]]}', "obj_id"),
    ('{"type": "prompt", "id": 1, "box": [5, 5, 1, 1]}', "box must be"),
    ('{"type": "prompt", "id": 1}', "needs points or a box"),
    ('{"type": "stats", "id": 1, "session": "nope"}', "no session 'nope'"),
    ('{"type": "stats", "id": 1, "session": 12}', "session must be"),
    ('{"type": "offer", "id": 1}', "offer needs 'sdp'"),
    ('{"type": "offer", "id": 1, "sdp": "hello"}', "offer needs 'sdp'"),
    ('{"type": "offer", "id": 1, "sdp": "v=0\\r\\nnonsense"}', ""),
    ('{"type": "background.upload", "id": 1}', "needs 'data'"),
    ('{"type": "background.upload", "id": 1, "data": "@@@not base64@@@"}', "not valid base64"),
    (json.dumps({"type": "background.upload", "id": 1,
                 "data": base64.b64encode(b"GIF89a not really").decode()}), "not a readable"),
    (json.dumps({"type": "background.upload", "id": 1,
                 "data": base64.b64encode(png_claiming_size(10_000, 6_000)).decode()}),
     "megapixels"),
    (json.dumps({"type": "background.upload", "id": 1,
                 "data": base64.b64encode(png_claiming_size(64, 64)).decode()}), "damaged"),
    (json.dumps({"type": "settings.get", "id": 1, "pad": "x" * (protocol.MAX_CONTROL_BYTES + 1)}),
     f"over the {protocol.MAX_CONTROL_BYTES}-byte limit"),
    (json.dumps({"type": "settings.get", "id": 1, "pad": [[1]] * 600}), "at most 512 lists"),
    (b"\x00\x01binary", "binary messages are not supported"),
]


def test_bad_messages_get_clear_errors_and_the_connection_stays_open(st_server):
    with ws_connect(st_server.server) as ws:
        for raw, expected in BAD_MESSAGES:
            reply = ask(ws, raw)
            assert reply["type"] == "error", (raw[:80], reply)
            assert expected in reply["error"], (raw[:80], reply["error"])
            if _json_id(raw) == 1 and _json_id(raw) is not True:  # refusals are matched to their request when possible
                assert reply["id"] == 1, reply
        assert ask(ws, {"type": "hello", "id": 99})["type"] == "ok"


def _json_id(raw: str | bytes) -> object:
    """The id of a message that is valid JSON (NaN is not), else None."""
    def no_constants(name: str) -> None:
        raise ValueError(name)

    try:
        msg = json.loads(raw, parse_constant=no_constants)
    except (ValueError, RecursionError):
        return None
    return msg.get("id") if isinstance(msg, dict) else None


def test_message_over_the_socket_limit_closes_only_that_connection(st_server):
    server = st_server.server
    with ws_connect(server) as other, ws_connect(server) as ws:
        ws.send("x" * (protocol.MAX_MESSAGE_BYTES + 1))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # too big
        assert ask(other, {"type": "hello", "id": 1})["type"] == "ok"


def test_rate_limit_refuses_a_flood_then_recovers():
    with ServerThread(rate=5, burst=5) as st_:
        with ws_connect(st_.server) as ws:
            for i in range(20):
                ws.send(json.dumps({"type": "hello", "id": i}))
            replies = [json.loads(ws.recv(timeout=10)) for _ in range(20)]
            refused = [r for r in replies if r["type"] == "error"]
            assert len(refused) >= 10 and all("too many messages" in r["error"] for r in refused)
            import time

            time.sleep(1.2)
            assert ask(ws, {"type": "hello", "id": "later"})["type"] == "ok"


# --------------------------------------------------------------------------- auth


def test_token_and_origin_are_checked(st_server):
    server = st_server.server
    own = f"http://127.0.0.1:{server.port}"
    for token in ("", "wrong-" + server.token, server.token[:-1]):
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(server, token=token)
        assert refused.value.response.status_code == 401
        assert b"token" in refused.value.response.body
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(server, origin="http://evil.example")
    assert refused.value.response.status_code == 403
    # DNS rebinding: evil.example resolving to 127.0.0.1 is same-origin with itself.
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(server, origin=f"http://evil.example:{server.port}",
                   host="evil.example")
    assert refused.value.response.status_code == 403
    for origin in (None, own):  # non-browser client, and the page itself
        with ws_connect(server, origin=origin) as ws:
            assert ask(ws, {"type": "hello", "id": 1})["type"] == "ok"


def test_token_check_endpoint_tells_a_stale_link_from_a_good_one(st_server):
    """The page probes /ws-check first: a browser sees a refused upgrade only as 1006."""
    server = st_server.server
    status, headers, body = http_get(server.port, f"/ws-check?token={server.token}")
    assert status == 200 and body == b"ok\n"
    assert headers["cache-control"] == "no-store"
    for token in ("", "wrong", server.token[:-1]):
        status, _, body = http_get(server.port, f"/ws-check?token={token}")
        assert status == 401 and b"token" in body, token
    assert http_get(server.port, "/ws-check")[0] == 401


def http_get(port: int, path: str) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def test_static_files_are_served_and_confined(st_server):
    port = st_server.server.port
    status, headers, body = http_get(port, "/?token=abc")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'id="processed"' in body
    assert headers["referrer-policy"] == "no-referrer"  # the token must not leak
    assert "default-src 'self'" in headers["content-security-policy"]
    status, headers, body = http_get(port, "/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    status, headers, body = http_get(port, "/favicon.svg")  # no 404 in the console
    assert status == 200 and headers["content-type"] == "image/svg+xml" and b"<svg" in body
    for path in ("/../pyproject.toml", "/%2e%2e/pyproject.toml", "/..%2fpyproject.toml",
                 "/%2e%2e%2flive%2fconfig.py", "//etc/passwd", "/web_client/../README.md",
                 "/missing.js", "/%00index.html", "/style.css%00.png"):
        status, _, body = http_get(port, path)
        assert status == 404, path
        assert b"[project]" not in body and b"root:" not in body


# --------------------------------------------------------------------------- fuzz


# aiortc, streaming on the server thread meanwhile, draws from `random`; hypothesis
# would take that for the strategy's doing.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_fuzzed_messages_get_replies_and_another_peer_keeps_streaming(frames):
    with ServerThread(rate=10_000, burst=10_000) as st_:
        peer = StreamingPeer(st_, frames)
        try:
            peer.wait_frames(3)
            _fuzz(st_.server, peer)
            peer.wait_frames(10)  # the other session still runs...
            assert peer.session in st_.server.sessions
            with ws_connect(st_.server) as ws:  # ...and the server still answers
                assert ask(ws, {"type": "hello", "id": 1})["type"] == "ok"
        finally:
            peer.close()


def _fuzz(server, peer: StreamingPeer) -> None:
    names = ["mode", "color", "blur", "image", "video", "fit", "feather", "smoothing", "ema",
             "name", "subjects", "selfie_model", "image_size", "host", "token", "x"]
    leaf = (st.none() | st.booleans() | st.integers(-10**6, 10**6)
            | st.floats(allow_nan=False, width=32) | st.text(max_size=12)
            | st.sampled_from(["#00ff00", "blur", "color", "selfie", "off", "cover", "main"]))
    value = st.recursive(leaf, lambda c: st.lists(c, max_size=4)
                         | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=12)
    patch = st.dictionaries(st.sampled_from(["engine", "matte", "background", "server", "x"]),
                            st.dictionaries(st.sampled_from(names), value, max_size=3)
                            | value, max_size=3)
    message = st.fixed_dictionaries(
        {"type": st.sampled_from(list(protocol.MESSAGE_TYPES) + ["bogus"]), "id": st.integers(1)},
        optional={"settings": patch, "session": st.sampled_from([peer.session, "zz"]) | value,
                  "points": st.lists(st.lists(leaf, max_size=4), max_size=4) | value,
                  "obj_id": value, "box": value, "data": st.text(max_size=40) | value,
                  "sdp": st.text(max_size=40).map(lambda s: "v=0\r\n" + s) | value})
    frame = (message.map(json.dumps) | st.text(max_size=200) | st.binary(max_size=64)
             | value.map(json.dumps))

    with ws_connect(server) as ws:
        @hsettings(max_examples=200, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))
        @given(raw=frame)
        def one(raw):
            ws.send(raw)
            while True:
                reply = json.loads(ws.recv(timeout=30))
                if reply.get("type") != "stats":
                    break
            assert reply["type"] in ("ok", "error")
            if reply["type"] == "error":
                assert isinstance(reply["error"], str) and reply["error"]
                assert "internal error" not in reply["error"], reply

        one()


# --------------------------------------------------------------------------- attached


@asynctest
async def test_an_attached_pipeline_is_steered_and_left_to_its_owner():
    """`live run` hands its virtual-camera pipeline to the control server: the
    panel can list and steer it, and stopping the server does not stop it."""
    import asyncio

    from live.pipeline import FrameProcessor, Pipeline
    from live.serve.server import ControlServer
    from live.io import NullSink
    from live.io.synthetic import SyntheticSource
    settings = test_settings()
    processor = FrameProcessor(settings)
    sink = NullSink()
    pipeline = Pipeline(SyntheticSource(320, 180, 30.0), [sink], processor, name="run")
    task = asyncio.create_task(pipeline.run())
    server = ControlServer(settings, sessions={"run": (processor, pipeline)})
    await server.start()
    try:
        from live.serve.client import ControlClient

        async with ControlClient(server.url) as client:  # the page's token: not its session
            listed = await client.request("sessions.list")
            assert listed["sessions"] == []
            refused = await client.request("settings.set", session="run",
                                           settings={"background": {"mode": "color"}})
            assert refused["type"] == "error" and "operator" in refused["error"]
        async with ControlClient(server.operator_url) as client:  # what `live run` prints
            listed = await client.request("sessions.list")
            assert [s["session"] for s in listed["sessions"]] == ["run"]
            changed = await client.request("settings.set", session="run",
                                           settings={"background": {"mode": "color"}})
            assert changed["type"] == "ok" and changed["session"] == "run"
            assert processor.settings.background.mode == "color"
            for _ in range(100):
                if sink.frames > 3:
                    break
                await asyncio.sleep(0.05)
            stats = await client.request("stats", session="run")
            assert stats["type"] == "ok" and stats["stats"]["frames"] > 0
    finally:
        await server.stop()
    assert pipeline.running and not task.done(), "the owner's pipeline was stopped"
    pipeline.stop()
    await asyncio.wait_for(task, 10)


def upload_dirs() -> set[Path]:
    import tempfile

    return set(Path(tempfile.gettempdir()).glob("live-uploads-*"))


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_serve_prints_its_url_serves_the_page_and_stops_cleanly_on_a_signal(sig):
    """Ctrl-C and SIGTERM (systemd, docker stop, kill) both close everything and
    delete the uploaded images with their folder."""
    import signal
    import subprocess
    import sys
    from urllib.parse import urlsplit

    code = ("from live.config import Settings; from live.serve.server import serve; "
            "serve(Settings().merged({'server': {'port': 0}, 'engine': {'name': 'selfie'}}))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line and "?token=" in line, line
        url = urlsplit(line.split()[-1])
        assert len(url.query.removeprefix("token=")) >= 32  # secrets.token_urlsafe(24)
        assert http_get(url.port, "/")[0] == 200
        with connect(f"ws://127.0.0.1:{url.port}/ws?{url.query}", open_timeout=10,
                     max_size=protocol.MAX_MESSAGE_BYTES) as ws:
            image = np.full((36, 64, 3), 200, np.uint8)
            reply = ask(ws, {"type": "background.upload", "id": 1, "data": png_b64(image)})
        assert reply["type"] == "ok", reply
        uploaded = next(folder / reply["upload"] for folder in upload_dirs()
                        if (folder / reply["upload"]).is_file())
        proc.send_signal(getattr(signal, sig))
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "stopped" in out
    assert not uploaded.parent.exists(), "the uploads folder outlived the server"


def test_a_busy_port_fails_to_start_and_leaves_no_folder_behind():
    from live.serve.server import ControlServer

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        before = upload_dirs()
        server = ControlServer(test_settings(server={"port": port}))
        with pytest.raises(OSError):
            asynctest(server.start)()
        assert upload_dirs() - before == set()


def test_the_uploads_folder_is_made_on_first_upload_and_removed_at_stop(frames):
    before = upload_dirs()
    st_ = ServerThread()
    try:
        assert upload_dirs() - before == set(), "a folder before any upload"
        with ws_connect(st_.server) as ws:
            reply = ask(ws, {"type": "background.upload", "id": 1, "data": png_b64(frames[0])})
        assert reply["type"] == "ok", reply
        assert reply["settings"]["background"]["image"] == reply["upload"]  # never a path
        folder = st_.server.uploads.path_of(reply["upload"]).parent
        assert folder in upload_dirs() - before
    finally:
        st_.close()
    assert not folder.exists()


def test_serve_on_a_busy_port_says_so_without_a_traceback():
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "live.cli", "serve", "--port", str(port)],
                              cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr
    assert "Traceback" not in proc.stderr
