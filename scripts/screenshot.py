"""Render an HTML page (e.g. evaluate.py's displaCy page) to PNG in a headless
Chromium, so that the README's picture can be redone from any evaluation."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import typer

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def find_browser() -> str:
    """The first Chromium-family browser on PATH."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    sys.exit(f"No headless browser found (looked for {', '.join(BROWSERS)}): apt-get install -y chromium")


def screenshot(page: Path, output: Path, *, width: int = 1400, height: int = 1000, browser: str | None = None) -> Path:
    """Render PAGE at WIDTH x HEIGHT CSS pixels into the PNG file OUTPUT."""
    if not page.is_file():
        sys.exit(f"No page to render at {page}: run scripts/evaluate.py first (it writes <metrics>.html).")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser or find_browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--screenshot={output.resolve()}",
            f"--window-size={width},{height}",
            page.resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not output.is_file() or not output.read_bytes().startswith(PNG_SIGNATURE):
        sys.exit(f"The browser did not write {output} (exit {result.returncode}): {result.stderr[-2000:]}")
    return output


def main(
    page: Path,
    output: Path,
    width: int = typer.Option(1400, help="Window width in CSS pixels"),
    height: int = typer.Option(1000, help="Window height in CSS pixels (the picture shows the top of the page)"),
):
    """Render PAGE (an HTML file) into OUTPUT (PNG)."""
    screenshot(page, output, width=width, height=height)
    print(f"{page} -> {output} ({output.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    typer.run(main)
