"""scripts/screenshot.py renders an HTML page to a PNG of the window size in headless Chromium."""

import shutil
import struct

import pytest

from .scripts import load_script


@pytest.fixture(scope="module")
def screenshot():
    return load_script("screenshot")


def test_missing_browser_or_page_exits_with_the_fix(screenshot, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match=r"No headless browser found .*apt-get install -y chromium"):
        screenshot.find_browser()
    with pytest.raises(SystemExit, match=r"No page to render at .*run scripts/evaluate\.py first"):
        screenshot.screenshot(tmp_path / "missing.html", tmp_path / "out.png", browser="unused")


@pytest.mark.skipif(not any(map(shutil.which, load_script("screenshot").BROWSERS)), reason="no Chromium installed")
def test_renders_page_at_window_size(screenshot, tmp_path):
    page = tmp_path / "page.html"
    page.write_text('<html><body style="margin:0;background:#ff0000"><h1>displaCy</h1></body></html>')
    png = screenshot.screenshot(page, tmp_path / "shot.png", width=320, height=200).read_bytes()
    assert png.startswith(screenshot.PNG_SIGNATURE)
    width, height = struct.unpack(">II", png[16:24])  # IHDR
    assert (width, height) == (320, 200)
    image = pytest.importorskip("matplotlib.image").imread(tmp_path / "shot.png")
    assert tuple(image[190, 10, :3]) == (1.0, 0.0, 0.0)  # the page's red background, not a blank window
