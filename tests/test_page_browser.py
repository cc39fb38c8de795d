"""The page as a user meets it, in real Chromium: the video stays in view while the
panel is used, settings survive a reload, two tabs on one session agree, and the
stats line says what its figures mean."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from server_helpers import ServerThread, test_settings
from test_server_browser import (COLOR_FRACTION_JS, browser, browser_paths,  # noqa: F401
                                 open_page, wait_for)

pytestmark = pytest.mark.browser


def in_viewport(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    view = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= view["height"] \
        and box["x"] >= 0 and box["x"] + box["width"] <= view["width"]


def test_at_1366x768_the_video_stays_in_view_while_any_control_is_used(browser):
    with ServerThread() as st:
        page, errors = open_page(browser, st.server.url, viewport=(1366, 768))
        try:
            page.wait_for_selector("#status[data-state='connected']", timeout=10_000)
            # The moving average's weight shows only in that mode.
            assert not page.is_visible("#matte-ema")
            page.select_option("#matte-smoothing", "ema")
            page.wait_for_selector("#matte-ema", state="visible", timeout=5_000)
            # Every control is scrolled to, and the processed video stays entirely on screen.
            page.click("#connect")
            wait_for(lambda: page.evaluate("document.getElementById('processed').videoWidth"),
                     20, "the processed video")
            controls = page.locator("#panel :is(input, select, button):visible")
            assert controls.count() >= 12
            for i in range(controls.count()):
                controls.nth(i).scroll_into_view_if_needed()
                handle = controls.nth(i).element_handle()
                assert page.evaluate("(el) => { const r = el.getBoundingClientRect(); "
                                     "return r.bottom <= innerHeight && r.top >= 0; }", handle)
                assert in_viewport(page, "#processed"), f"video out of view at control {i}"
            assert page.evaluate("document.scrollingElement.scrollTop") == 0

            # Stats: latency (never "mask age"), drops explained, fps counted in the page.
            wait_for(lambda: (page.evaluate("window.liveClient.shown.fps") or 0) > 1, 10,
                     "frames counted as the page shows them")
            stats = wait_for(lambda: page.text_content("#stats"), 5, "the stats line")
            assert "latency" in stats and "mask age" not in stats, stats
            dropped = page.locator("#stats span", has_text="dropped")
            assert "never queues" in dropped.get_attribute("title")
            # the line is redrawn on the server's next stats push (about once a second),
            # which may come after the page's first count
            fps = page.locator("#stats span", has_text="fps")
            wait_for(lambda: "this page showed" in (fps.get_attribute("title") or ""), 5,
                     "the fps the page showed, in the stats line")
            assert not errors, errors
        finally:
            page.close()


def test_settings_survive_a_reload_including_an_uploaded_image(browser, tmp_path):
    with ServerThread(test_settings()) as st:
        server = st.server
        page, errors = open_page(browser, server.url)
        try:
            page.wait_for_selector("#status[data-state='connected']", timeout=10_000)
            page.select_option("#matte-smoothing", "ema")
            page.select_option("#engine-subjects", "main")
            blue = tmp_path / "blue.png"
            cv2.imwrite(str(blue), np.full((180, 320, 3), (255, 0, 0), np.uint8))
            page.set_input_files("#bg-image", str(blue))
            client = lambda: next(iter(server.clients))  # noqa: E731  (one page, one client)
            wait_for(lambda: server.clients and client().settings.background.mode == "image", 10,
                     "the upload")
            uploaded = client().settings.background.image

            page.reload()
            page.wait_for_selector("#status[data-state='connected']", timeout=10_000)
            wait_for(lambda: "restored" in page.text_content("#message"), 10,
                     "the saved settings to be sent again")
            assert len(server.clients) == 1
            restored = client().settings
            assert restored.background.mode == "image" and restored.background.image == uploaded
            assert restored.matte.smoothing == "ema" and restored.engine.subjects == "main"
            assert page.input_value("#matte-smoothing") == "ema"
            assert page.is_visible("#matte-ema")

            # And they are what the camera starts with: the uploaded blue behind the man.
            page.click("#connect")
            blue_share = wait_for(
                lambda: (f := page.evaluate(COLOR_FRACTION_JS, ["processed", 0, 0, 255]))
                and f > 0.4 and f, 20, "the restored blue background")
            assert blue_share < 0.99
            assert not errors, errors
        finally:
            page.close()


def test_a_session_changed_from_another_tab_shows_the_change_in_its_own_panel(browser):
    with ServerThread(test_settings(background={"mode": "color", "color": "#00ff00"})) as st:
        owner, owner_errors = open_page(browser, st.server.url)
        # another tab steers the owner's session: that takes the operator's token
        steering, steering_errors = open_page(browser, st.server.operator_url)
        try:
            for page in (owner, steering):
                page.wait_for_selector("#status[data-state='connected']", timeout=10_000)
            owner.click("#connect")
            session = wait_for(lambda: owner.evaluate("window.liveClient.ownSession"), 20,
                               "the owner's session")
            steering.wait_for_selector(f"#session-select option[value='{session}']",
                                       state="attached", timeout=10_000)
            steering.select_option("#session-select", session)
            steering.fill("#bg-color", "#0000ff")

            wait_for(lambda: owner.input_value("#bg-color") == "#0000ff", 10,
                     "the owner's panel to show the new colour")
            assert "another control panel" in owner.text_content("#message")
            wait_for(lambda: (owner.evaluate(COLOR_FRACTION_JS, ["processed", 0, 0, 255]) or 0)
                     > 0.4, 20, "the owner's video to turn blue")
            steering.select_option("#matte-smoothing", "ema")
            owner.wait_for_selector("#matte-ema", state="visible", timeout=10_000)
            assert owner.input_value("#matte-smoothing") == "ema"
            assert not owner_errors and not steering_errors, (owner_errors, steering_errors)
        finally:
            owner.close()
            steering.close()
