"""The real page in a real browser: headless Debian chromium whose fake camera
plays a clip, talking WebRTC and the control socket to ``live serve``."""

from __future__ import annotations

import os
import shutil
import signal
import time

import cv2
import numpy as np
import pytest

from bench.browser import CHROMIUM, launch_chromium, write_y4m
from server_helpers import (ServerThread, StreamingPeer, load_clip, pipeline_threads,
                            test_settings)

pytestmark = pytest.mark.browser

CAMERA = (1280, 720)  # what a webcam gives: the page must get it back at this size


# The processed video's size, and the size, rate limit and degradation preference
# of what the page's camera sender encodes.
SIZES_JS = """async () => {
  const v = document.getElementById("processed");
  const pc = window.liveClient.pc;
  const out = { received: [v.videoWidth, v.videoHeight] };
  if (!pc) return out;
  (await pc.getStats()).forEach((r) => {
    if (r.type === "outbound-rtp" && r.kind === "video") {
      out.sent = [r.frameWidth, r.frameHeight];
      out.limit = r.qualityLimitationReason;
    }
  });
  const sender = pc.getSenders().find((s) => s.track && s.track.kind === "video");
  out.degradation = sender && sender.getParameters().degradationPreference;
  return out;
}"""


# Fraction of a video's pixels within 50 of an RGB colour, read through a canvas.
COLOR_FRACTION_JS = """([id, r, g, b]) => {
  const v = document.getElementById(id);
  if (!v || !v.videoWidth) return null;
  const c = document.createElement("canvas");
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(v, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let hit = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.abs(d[i] - r) < 50 && Math.abs(d[i + 1] - g) < 50 && Math.abs(d[i + 2] - b) < 50) hit++;
  }
  return hit / (d.length / 4);
}"""


def wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def browser_paths():
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright (Python) is not installed (pip install playwright)")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(browser_paths, clip_path, tmp_path_factory):
    """One headless chromium for this module, its fake camera playing the clip."""
    from playwright.sync_api import sync_playwright

    y4m = write_y4m(load_clip(clip_path, 90, CAMERA),  # 3 s, looped by chromium
                    tmp_path_factory.mktemp("camera") / "camera.y4m")
    with sync_playwright() as pw:
        browser = launch_chromium(pw, y4m)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, viewport=(1280, 800)):
    """A new page at ``url``; returns it and the list its uncaught exceptions go to
    (its console errors, such as failed loads, go to ``page.console_errors``)."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    errors: list[str] = []
    page.console_errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: page.console_errors.append(f"{m.text} {m.location}")
            if m.type == "error" else None)
    page.goto(url)
    return page, errors


def test_page_replaces_background_takes_no_selfie_clicks_and_follows_the_panel(browser, clip_path,
                                                                      tmp_path):
    # A SAM 2 checkpoint that is not there: picking SAM 2 must fail, with help.
    settings = test_settings(background={"mode": "color", "color": "#00ff00"},
                             engine={"checkpoint": "/nonexistent/sam2.pt"})
    with ServerThread(settings) as st:
        server = st.server
        page, errors = open_page(browser, server.operator_url)  # it steers another session too
        try:
            page.wait_for_selector("#status[data-state='connected']", timeout=10_000)
            assert not page.is_visible("#preview"), "an empty camera thumbnail"
            assert page.text_content("#session-select option[value='']") == "this browser"

            page.click("#connect")
            wait_for(lambda: server.sessions and not page.is_disabled("#disconnect"), 20,
                     "the page's WebRTC session")
            frac = lambda rgb: page.evaluate(COLOR_FRACTION_JS, ["processed", *rgb])  # noqa: E731

            # The processed video: mostly green background, but not all (the man stays).
            green = wait_for(lambda: (f := frac((0, 255, 0))) and f > 0.4 and f, 20,
                             "a green background in the processed video")
            assert green < 0.99, "everything turned green: the subject was replaced too"
            raw = page.evaluate(COLOR_FRACTION_JS, ["preview", 0, 255, 0])
            assert raw is not None and raw < 0.05, "the raw preview should not be green"
            # The camera goes out and comes back at full size (left alone, chromium's
            # bandwidth estimate scales it down to 320x180 within ~15 s).
            sizes = wait_for(lambda: (s := page.evaluate(SIZES_JS)) and s["received"] ==
                             list(CAMERA) and s, 20, "the processed video at full size")
            assert sizes["sent"] == list(CAMERA) and sizes["degradation"] == \
                "maintain-resolution", sizes
            started = time.monotonic()

            # The selfie engine takes no clicks: the page says so and sends none, and
            # Reset (the main subject, the smoothing history) still works. The reset is
            # sent after the click on the same socket, so a prompt would have come first.
            assert page.is_visible("text=The selfie engine takes no clicks")
            assert not page.is_visible("text=Click the person to follow")
            box = page.locator("#processed").bounding_box()
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.click("#reset")
            wait_for(lambda: page.text_content("#message") == "tracking reset", 5, "the reset")
            assert server.received["prompt"] == 0 and server.received["reset"] == 1
            assert page.text_content("#prompt-status") == ""

            # The colour picker changes the output within a few seconds (wait_for fails after 5).
            page.fill("#bg-color", "#ff0000")
            wait_for(lambda: (frac((255, 0, 0)) or 0) > 0.4, 5, "the background to turn red")
            session = next(iter(server.sessions.values()))
            assert session.processor.settings.background.color == "#ff0000"
            message = page.text_content("#message")
            assert "#ff0000" in message and "error" not in page.get_attribute("#message", "class")

            # SAM 2 without its checkpoint: refused, the engine stays, and the page
            # says what to do in a browser user's terms.
            page.select_option("#engine-name", "sam2")
            help_line = wait_for(lambda: page.is_visible("#message-help")
                                 and page.text_content("#message-help"), 10, "the help line")
            assert "live fetch sam2 --model tiny" in help_line, help_line
            assert "not found" in page.text_content("#message")
            assert session.processor.settings.engine.name == "selfie"
            assert page.input_value("#engine-name") == "selfie"

            # A video background is a file of the server's media folder: said before sending.
            sent = server.received["settings.set"]
            page.fill("#bg-video", "")
            page.click("#bg-video-apply")
            assert "enter the name of a video in the server's media folder" in \
                page.text_content("#message")
            page.select_option("#bg-mode", "video")
            assert "enter the name" in page.text_content("#message")
            assert page.input_value("#bg-mode") == "color"  # what still runs
            assert not page.is_visible("#message-help")  # the old help went with its error
            assert server.received["settings.set"] == sent
            # An image chosen in the panel is uploaded and becomes the background.
            blue = tmp_path / "blue.png"
            cv2.imwrite(str(blue), np.full((180, 320, 3), (255, 0, 0), np.uint8))
            page.set_input_files("#bg-image", str(blue))
            wait_for(lambda: (frac((0, 0, 255)) or 0) > 0.4, 10, "the uploaded blue background")
            assert session.processor.settings.background.mode == "image"
            in_use = session.processor.settings.background.image
            # A refused file leaves the old image in use, and the file box says so.
            bogus = tmp_path / "notes.png"
            bogus.write_text("not an image")
            page.set_input_files("#bg-image", str(bogus))
            wait_for(lambda: "not a readable image" in page.text_content("#message"), 10,
                     "the refusal")
            assert page.input_value("#bg-image") == ""
            assert session.processor.settings.background.image == in_use
            big = tmp_path / "huge.png"  # over the upload limit: refused before sending
            big.write_bytes(b"\0" * (12 << 20))
            page.set_input_files("#bg-image", str(big))
            wait_for(lambda: "limit is 11 MiB" in page.text_content("#message"), 5,
                     "the size refusal")
            assert page.input_value("#bg-image") == "" and server.clients  # still connected

            stats = wait_for(lambda: page.text_content("#stats"), 5, "the pushed stats line")
            assert "fps" in stats and "segment" in stats, stats

            # Still full size both ways after the ramp (the blue background is the
            # newest frame's, so the size is too).
            time.sleep(max(0.0, 15 - (time.monotonic() - started)))
            sizes = page.evaluate(SIZES_JS)
            assert sizes["received"] == list(CAMERA) and sizes["sent"] == list(CAMERA), sizes
            assert (frac((0, 0, 255)) or 0) > 0.4, "the background is no longer replaced"

            # Another session (here a Python peer) shows up in the picker and can be steered.
            other = StreamingPeer(st, load_clip(clip_path, 5))
            try:
                page.wait_for_selector(f"#session-select option[value='{other.session}']",
                                       state="attached", timeout=10_000)
                label = page.text_content(f"#session-select option[value='{other.session}']")
                assert label == "other browser 1", label
                page.select_option("#session-select", other.session)
                # Another browser's WebRTC video cannot carry alpha either.
                assert page.is_disabled("#bg-mode option[value='transparent']")
                page.select_option("#bg-mode", "blur")
                wait_for(lambda: server.sessions[other.session].processor.settings.background
                         .mode == "blur", 5, "the other session to follow the panel")
                assert session.processor.settings.background.mode == "image"  # untouched
            finally:
                other.close()

            page.select_option("#session-select", "")
            page.click("#disconnect")
            wait_for(lambda: not server.sessions and not pipeline_threads(), 20,
                     "the server to drop the page's session")
            # Nothing of the stopped session stays up.
            time.sleep(1.5)  # a stats push or two
            assert page.text_content("#stats") == ""
            assert page.text_content("#message") == "camera stopped"
            assert page.text_content("#prompt-status") == ""
            assert not page.is_visible("#preview")
            assert not errors, errors
            assert not page.console_errors, page.console_errors  # no 404 (favicon) either
        finally:
            page.close()


def test_a_page_whose_worker_died_starts_its_camera_again_on_a_fresh_one(browser):
    """Sessions run in worker processes: killing one ends its session, the server
    tells the page (session.ended), and the page offers again, no reload."""
    with ServerThread(test_settings(server={"workers": 1})) as st:
        server = st.server
        page, errors = open_page(browser, server.url)
        try:
            page.wait_for_selector("#status[data-state='connected']", timeout=10_000)
            page.click("#connect")
            first = wait_for(lambda: page.evaluate("() => window.liveClient.ownSession"), 30,
                             "the page's session")
            pid = server.sessions[first].worker.pid
            assert pid != os.getpid()
            os.kill(pid, signal.SIGKILL)
            second = wait_for(lambda: (s := page.evaluate("() => window.liveClient.ownSession"))
                              not in (None, first) and s, 60, "the page to start again")
            assert second in server.sessions and server.sessions[second].worker.pid != pid
            wait_for(lambda: page.evaluate(
                "() => document.getElementById('processed').videoWidth") > 0, 30,
                "the processed video back on the page")
            assert not errors, errors
        finally:
            page.close()


def test_a_stale_link_says_so_and_the_panel_stays_disabled(browser):
    with ServerThread() as st:
        server = st.server
        stale = server.url.replace(server.token, "a-token-from-yesterday")
        page, errors = open_page(browser, stale)
        try:
            page.wait_for_selector("#status[data-state='error']", timeout=10_000)
            status = page.text_content("#status")
            assert "out of date" in status and "live serve" in status, status
            assert "1006" not in status
            assert page.is_disabled("#connect")
            assert page.evaluate("[...document.querySelectorAll('fieldset[data-needs-server]')]"
                                 ".every((f) => f.disabled)")
            assert page.is_disabled("#bg-mode") and page.is_disabled("#matte-feather")
            # No made-up values: the blur slider and its figure are not shown.
            assert not page.is_visible("#bg-blur") and not page.is_visible("#bg-color")
            page.evaluate("document.getElementById('connect').click()")
            time.sleep(0.5)
            assert page.evaluate("window.liveClient.camera") is None
            assert not server.clients and not server.sessions
            assert not errors, errors
        finally:
            page.close()

        page, errors = open_page(browser, server.url.replace("?token=" + server.token, ""))
        try:
            page.wait_for_selector("#status[data-state='error']", timeout=10_000)
            assert "no token" in page.text_content("#status")
        finally:
            page.close()


def test_when_the_server_stops_the_page_says_so_and_start_does_nothing(browser):
    st = ServerThread()
    page, errors = open_page(browser, st.server.url)
    try:
        page.wait_for_selector("#status[data-state='connected']", timeout=10_000)
        # "connected" shows on the socket's open; the panel unlocks after the hello reply
        page.wait_for_selector("#connect:enabled", timeout=10_000)
        assert not page.is_disabled("#connect")
        assert page.input_value("#bg-blur") == str(st.server.settings.background.blur)
        # slider bounds are the settings schema's (live/config.py), not copies in the HTML
        assert page.get_attribute("#matte-ema", "min") == "0.05"
        assert page.get_attribute("#bg-blur", "max") == "200"
        # the steady-edges slider shows the setting as it is (its step does not round it)
        assert page.get_attribute("#matte-steady", "max") == "1"
        assert float(page.input_value("#matte-steady")) == st.server.settings.matte.steady
        st.close()
        page.wait_for_selector("#status[data-state='error']", timeout=10_000)
        status = page.text_content("#status")
        assert "server stopped" in status and "live serve" in status, status
        assert page.is_disabled("#connect")
        page.evaluate("document.getElementById('connect').click()")
        time.sleep(0.5)
        assert page.evaluate("window.liveClient.camera") is None
        assert not errors, errors
    finally:
        page.close()


# Drags the colour picker: `count` input events, one every `every_ms`, ending on blue.
DRAG_COLOUR_JS = """async ([count, everyMs]) => {
  const el = document.getElementById("bg-color");
  el.focus();
  for (let i = 0; i < count; i++) {
    el.value = i === count - 1 ? "#0000ff" : "#" + (i * 977 % 0xffffff).toString(16).padStart(6, "0");
    el.dispatchEvent(new Event("input", { bubbles: true }));
    await new Promise((r) => setTimeout(r, everyMs));
  }
  el.blur();
}"""


def test_dragging_the_colour_picker_or_a_flood_of_requests_stays_under_the_rate_limit(browser):
    # A strict server (10 messages a second, bursts of 10) makes any excess show.
    with ServerThread(rate=10, burst=10) as st:
        server = st.server
        page, errors = open_page(browser, server.url)
        try:
            page.wait_for_selector("#status[data-state='connected']", timeout=10_000)
            page.evaluate(DRAG_COLOUR_JS, [200, 5])  # 200 events in about a second
            wait_for(lambda: server.clients and next(iter(server.clients)).settings.background
                     .color == "#0000ff", 10, "the last colour of the drag to arrive")
            sent = server.received["settings.set"]
            assert 2 <= sent <= 30, sent  # throttled, not one per event
            time.sleep(0.5)
            assert page.input_value("#bg-color") == "#0000ff"  # no snap back
            message = page.text_content("#message")
            assert "too many" not in message and "#0000ff" in message, message

            # Any burst of requests is paced to the server's limit, none refused.
            replies = page.evaluate("""async () => {
              const all = [];
              for (let i = 0; i < 25; i++) all.push(window.liveClient.request("settings.get"));
              return (await Promise.all(all)).map((r) => r.type === "ok" ? "ok" : r.error);
            }""")
            assert replies == ["ok"] * 25, replies
            assert not errors, errors
        finally:
            page.close()


@pytest.fixture
def run_session():
    """A `live run`-like attached session: a synthetic source into a null sink."""
    from live.pipeline import FrameProcessor, Pipeline
    from live.serve.session import Session
    from live.io import NullSink
    from live.io.synthetic import SyntheticSource

    processor = FrameProcessor(test_settings())
    pipeline = Pipeline(SyntheticSource(320, 180, 15.0), [NullSink()], processor, name="run")
    return Session(processor, pipeline, kind="run", session_id="run")


def test_transparent_is_offered_only_for_live_run_sessions(browser, run_session):
    import asyncio

    with ServerThread(sessions=[run_session]) as st:
        running = asyncio.run_coroutine_threadsafe(run_session.pipeline.run(), st.loop)
        page, errors = open_page(browser, st.server.operator_url)  # steers `live run`
        try:
            page.wait_for_selector("#status[data-state='connected']", timeout=10_000)
            # This page's own session: WebRTC, so no alpha; the page says why.
            assert page.is_disabled("#bg-mode option[value='transparent']")
            note = page.text_content("#transparent-note")
            assert page.is_visible("#transparent-note") and "live run" in note \
                and "black" in note, note
            # `live run`'s virtual camera can record alpha: there it is offered.
            assert page.text_content("#session-select option[value='run']") == \
                "virtual camera (live run)"
            page.select_option("#session-select", "run")
            assert not page.is_disabled("#bg-mode option[value='transparent']")
            assert not page.is_visible("#transparent-note")
            page.select_option("#bg-mode", "transparent")
            wait_for(lambda: run_session.processor.settings.background.mode == "transparent", 5,
                     "the live run session to turn transparent")
            assert not errors, errors
        finally:
            page.close()
            run_session.pipeline.stop()
            running.result(10)


def test_phone_layout_keeps_the_thumbnail_and_stats_out_of_the_way(browser):
    with ServerThread() as st:
        page, errors = open_page(browser, st.server.url, viewport=(390, 844))
        try:
            page.wait_for_selector("#status[data-state='connected']", timeout=10_000)
            page.click("#connect")
            wait_for(lambda: page.evaluate("document.getElementById('processed').videoWidth"),
                     20, "the processed video")
            wait_for(lambda: page.text_content("#stats"), 5, "the stats line")
            video = page.locator("#processed").bounding_box()
            thumb = page.locator("#preview").bounding_box()
            assert thumb["y"] >= video["y"] + video["height"] - 1, (video, thumb)  # below
            header = page.locator("header").bounding_box()
            stats = page.locator("#stats").bounding_box()
            status = page.locator("#status").bounding_box()
            assert stats["y"] >= status["y"] + status["height"] - 1  # a line of its own
            assert stats["x"] + stats["width"] <= 390 and header["y"] + header["height"] <= video["y"]
            page.click("#disconnect")
            assert not errors, errors
        finally:
            page.close()


def test_start_with_a_missing_sam2_checkpoint_says_how_to_get_it(browser):
    settings = test_settings(engine={"name": "sam2", "sam2_model": "small",
                                     "checkpoint": "/nonexistent/sam2.pt"})
    with ServerThread(settings) as st:
        page, errors = open_page(browser, st.server.url)
        try:
            page.wait_for_selector("#status[data-state='connected']", timeout=10_000)
            page.click("#connect")
            help_line = wait_for(lambda: page.is_visible("#message-help")
                                 and page.text_content("#message-help"), 20, "the help line")
            assert "live fetch sam2 --model small" in help_line and "press Start again" \
                in help_line, help_line
            assert page.text_content("#message").startswith("could not start")
            assert page.evaluate("window.liveClient.camera") is None  # the camera went off
            assert not page.is_visible("#preview") and not page.is_disabled("#connect")
            assert not st.server.sessions
            assert not errors, errors
        finally:
            page.close()
