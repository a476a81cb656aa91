"""Browser latency of the app (headless Chromium + Playwright), warm server.

* upload of a 512x512 PNG -> raw and refined overlays visible (median of several uploads of
  distinct images, after one warm-up upload);
* a refinement slider change -> figure re-rendered and the script idle.

    .venv/bin/python bench/app_latency.py    # writes bench/results/app.json
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(n=5):
    from playwright.sync_api import sync_playwright

    from segcore.phantom import HU_OFFSET, make_phantom

    tmp = Path(tempfile.mkdtemp())
    pngs = []
    for i in range(n + 1):
        hu, _ = make_phantom(777 + i, 512)
        p = tmp / f"scan_{i}.png"
        cv2.imwrite(str(p), np.clip(hu + HU_OFFSET, 0, 4095).astype(np.uint16))
        pngs.append(p)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SEGCORE_DATA_DIR": str(tmp / "data"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--server.fileWatcherType", "none",
                             "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    idle = ("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
            " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')")
    uploads, sliders = [], []
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync"])
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
            page.wait_for_function(idle, timeout=120_000)
            page.get_by_text("Upload", exact=True).click()
            page.wait_for_function(idle, timeout=60_000)
            for i, png in enumerate(pngs):
                page.locator("input[type=file]").set_input_files(str(png))
                t0 = time.perf_counter()
                # the figure for this upload: the picker shows its name, then both overlays render
                # the caption under the figure names the scan once its overlays are rendered
                page.locator("[data-testid='stCaptionContainer']", has_text=png.name).wait_for(timeout=60_000)
                page.locator(".js-plotly-plot .annotation-text", has_text="Refined").first.wait_for(timeout=60_000)
                page.wait_for_timeout(50)
                page.wait_for_function(idle, timeout=60_000)
                page.locator(".js-plotly-plot image").nth(1).wait_for(timeout=60_000)
                dt = time.perf_counter() - t0
                if i > 0:
                    uploads.append(dt)
            import re

            cap = page.locator("[data-testid='stCaptionContainer']", has_text="close ").first
            track = page.locator("[data-testid='stSlider']", has_text="Closing kernel (px)").first
            track.scroll_into_view_if_needed()
            for i in range(n):
                before = re.search(r"close (\d+)px", cap.inner_text()).group(1)
                bb = track.bounding_box()
                x = bb["x"] + bb["width"] * (0.35 if i % 2 == 0 else 0.15)
                t0 = time.perf_counter()
                page.mouse.click(x, bb["y"] + bb["height"] * 0.75)
                # the caption is written after the re-rendered figure and names the new kernel size
                page.wait_for_function(
                    "([b]) => { const m = [...document.querySelectorAll('[data-testid=\"stCaptionContainer\"]')]"
                    ".map(e => e.innerText.match(/close (\\d+)px/)).find(Boolean); return m && m[1] !== b; }",
                    arg=[before], timeout=60_000)
                page.wait_for_function(idle, timeout=60_000)
                sliders.append(time.perf_counter() - t0)
            b.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    res = {"upload_png_512_to_overlays_s_median": round(statistics.median(uploads), 2),
           "upload_samples_s": [round(x, 2) for x in uploads],
           "slider_rerender_s_median": round(statistics.median(sliders), 2),
           "slider_samples_s": [round(x, 2) for x in sliders],
           "note": "warm server; timed from set_input_files until both overlays are in the DOM and the script "
                   "is idle; slider: mouse click on the Closing-kernel track until the caption under the figure shows the new size and the script is idle",
           "command": ".venv/bin/python bench/app_latency.py"}
    print(res)
    (ROOT / "bench" / "results" / "app.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
