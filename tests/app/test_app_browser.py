"""The Gradio demo in a real headless browser (Debian's chromium through Playwright), on tiny models.

    .venv/bin/python -m pytest -q tests/app/test_app_browser.py -s     # -s prints the screenshot's path

Types a prompt, moves the lam slider, asks for 3 one-second variations, clicks Generate and checks
that 3 audio players got a source and the served weights moved; the full-page screenshot is saved
in the test's tmp_path (path printed) for a person to look at.
"""

from pathlib import Path

import pytest
import torch
from conftest import free_port
from safetensors.torch import load_file

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PARAMETER = "decoder.lm_heads.0.weight"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # a Gradio server and headless chromium
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no {CHROMIUM} (apt-get install -y chromium)"),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from app.engine import Endpoint, Engine
    from app.ui import launch
    from musicgen_cfg.tiny import save_tiny_musicgen

    root = tmp_path_factory.mktemp("browser")
    quality = save_tiny_musicgen(root / "quality", seed=0)
    diversity = save_tiny_musicgen(root / "diversity", seed=1)
    engine = Engine.load(Endpoint("quality", str(quality), str(quality)),
                         Endpoint("diversity", str(diversity), str(diversity)), None, None,
                         "diversity is not measured in this test (no embedder)", "cpu", root / "out",
                         ["A note, as the demo shows for a missing shipped model."], lam=0.5, log=lambda message: None)
    blocks = launch(engine, "127.0.0.1", free_port(), prevent_thread_lock=True, log=lambda message: None)
    yield engine, blocks.local_url, quality, diversity
    blocks.close()


def test_page_generates_three_variations_after_moving_the_slider(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    engine, url, quality, diversity = served
    screenshot = tmp_path / "app_browser.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            # Not "networkidle": Gradio keeps a heartbeat stream open for as long as the page lives.
            page.goto(url, wait_until="load")
            expect(page.locator("#prompt textarea")).to_be_visible(timeout=30_000)
            page.locator("#prompt textarea").fill("a calm folk song on the piano")
            # Click at 80% of the lam track (the position is taken relative to the element when it is
            # stable, so a late layout shift cannot move the target); pointerup fires the slider's
            # release event, which applies theta(0.8) in place.
            track = page.locator("#lam input[type=range]")
            box = track.bounding_box()
            track.click(position={"x": 0.8 * box["width"], "y": box["height"] / 2})
            expect(page.get_by_text("applied in place")).to_be_visible(timeout=30_000)
            for slider, value in (("#variations", "3"), ("#duration", "1")):
                page.locator(f"{slider} input[type=number]").fill(value)
                page.locator(f"{slider} input[type=number]").press("Enter")
            page.locator("#generate").click()
            expect(page.locator("#status")).to_contain_text("no CFG (one pass)", timeout=60_000)
            sources = page.locator("audio[src]")
            expect(sources).to_have_count(3, timeout=30_000)
            assert all(sources.nth(i).get_attribute("src") for i in range(3))
            expect(page.get_by_text("Variation 3", exact=True)).to_be_visible()
            expect(page.get_by_text("Variation 4", exact=True)).to_have_count(0)
        finally:  # also on failure: the picture shows what the page looked like
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")
            browser.close()
    lam = engine.lam
    assert 0.7 <= lam <= 0.9  # where the click landed on the track, snapped to the 0.05 step
    q = load_file(str(quality / "model.safetensors"))[PARAMETER]
    d = load_file(str(diversity / "model.safetensors"))[PARAMETER]
    served_weights = engine.model.lm.state_dict()[PARAMETER].cpu()
    assert torch.allclose(served_weights, torch.lerp(q, d, lam), atol=1e-6)
    assert screenshot.stat().st_size > 10_000
