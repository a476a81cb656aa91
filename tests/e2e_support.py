"""Shared plumbing for the browser tests: start the app, launch Chromium, wait for Streamlit to be idle."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SEGCORE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
IDLE_JS = ("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
           " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(app_dir: Path = ROOT) -> list[str]:
    """How scripts/run.sh starts the app (scripts/serve.py), or plain ``streamlit run`` for older checkouts."""
    serve = app_dir / "scripts" / "serve.py"
    return [sys.executable, str(serve)] if serve.is_file() else [sys.executable, "-m", "streamlit", "run", "app.py"]


@contextlib.contextmanager
def streamlit_app(data_dir: Path, *, host: str = "127.0.0.1", port: int | None = None, extra_args=(),
                  app_dir: Path = ROOT):
    """Run ``streamlit run app.py`` on a free port with ``SEGCORE_DATA_DIR=data_dir``; yields its URL."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SEGCORE_DATA_DIR": str(data_dir), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log_path = data_dir / "streamlit.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*server_command(app_dir), "--server.port", str(port), "--server.headless",
             "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", *extra_args],
            cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://{host}:{port}"
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    time.sleep(0.5)
            else:
                raise RuntimeError("streamlit did not become healthy: " + log_path.read_text()[-2000:])
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def chromium():
    """Headless Debian Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"Chromium not found at {CHROMIUM}: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


def wait_idle(page, timeout: int = 120_000) -> None:
    page.wait_for_timeout(300)
    page.wait_for_function(IDLE_JS, timeout=timeout)
    page.wait_for_timeout(300)


def no_exception(page) -> None:
    errs = page.locator("[data-testid='stException']")
    assert errs.count() == 0, errs.all_inner_texts()
