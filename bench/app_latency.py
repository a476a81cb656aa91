"""Browser latency of the app as a person feels it (headless Chromium + Playwright), action -> new figure visible.

Measured, each as a median over several tries on one server:

* first load: a fresh server (cold: the first page view after the server reports healthy; the model load is
  included, and so are TensorFlow's imports unless the server is started by scripts/serve.py, as scripts/run.sh
  does) and a new browser session on a warm server, from navigation until both overlays of the first figure
  are drawn;
* upload of a 512x512 PNG -> raw and refined overlays drawn;
* sample switch, view switch, display-window preset: each sequence is first run untimed, reading what the
  figures show once each action has settled; the timed pass then waits, per action, until the figures show
  exactly that and the app is idle (waiting for "any change" was fooled by intermediate figures while the server
  was still busy, and under-measured by up to 0.5 s);
* refinement slider (closing kernel), CRF iterations +1, 6 keyboard steps of a slider (each step is a rerun):
  from the action until the caption under the figure shows the new value and the app is idle;
* Smart click on Correct: from the mouse click inside the lesion until the caption counts the click, the click
  canvas (ui/click_canvas.js) has taken the new data and decoded its new layer image, and the script is idle,
  for the first and a second click, each try in a new browser session;
* the CRF step time the app reports under the figure vs the library's ``dense_crf`` on the same 512x512 slice
  with the same parameters, measured in this process in the same run (ratio).

    .venv/bin/python bench/app_latency.py                      # the app in this checkout
    .venv/bin/python bench/app_latency.py --app-dir ../before  # another checkout (before/after tables)
    writes bench/results/app.json (or --out)
"""

import argparse
import json
import os
import re
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
sys.path.insert(0, str(ROOT / "tests"))

from e2e_support import server_command  # noqa: E402

IDLE = ("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')")
# a signature of what the figures show: the data URIs of their images and their panel titles
SIGNATURE = ("() => [...document.querySelectorAll('.js-plotly-plot image')].map(i => (i.getAttribute('href') || "
             "'').length + ':' + (i.getAttribute('href') || '').slice(-40)).join('|') + '#' + "
             "[...document.querySelectorAll('.js-plotly-plot .annotation-text')].map(a => a.textContent).join('|')")
# the Smart click canvas has drawn new data and its layer image is decoded
LAYER_SHOWN = ("([root, seq]) => root.dataset.layerSeq !== seq && root.querySelector('.sc-layer').complete"
               " && root.querySelector('.sc-layer').naturalWidth > 0")
CAPTION = ("() => [...document.querySelectorAll('[data-testid=\"stCaptionContainer\"]')].map(e => e.innerText)"
           ".find(t => t.includes('step times')) || ''")


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(app_dir: Path, data_dir: Path):
    port = _port()
    env = {**os.environ, "SEGCORE_DATA_DIR": str(data_dir), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([*server_command(app_dir), "--server.port", str(port),
                             "--server.headless", "true", "--server.fileWatcherType", "none",
                             "--browser.gatherUsageStats", "false"], cwd=app_dir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("server did not start")


def wait_figure(page, timeout=180_000):
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot image').length >= 2", timeout=timeout)
    page.wait_for_function(IDLE, timeout=timeout)


def shown(page, expected: str, timeout=120_000):
    """Wait until the figures show exactly ``expected`` (a SIGNATURE read once the same action had settled)."""
    page.wait_for_function(f"([e]) => ({SIGNATURE})() === e", arg=[expected], timeout=timeout)
    page.wait_for_function(IDLE, timeout=timeout)


def settled_signatures(page, actions) -> list[str]:
    """Run ``actions`` untimed, each until the page has been idle for a while, and read what the figures show.

    Timing until "the figures differ from before" under-measures: while the server is still busy (e.g. in its
    post-run garbage collection) the browser can show an intermediate figure, measured as done although the
    final one came 0.3-0.5 s later. The timed pass waits for exactly these signatures instead."""
    out = []
    for act in actions:
        act()
        page.wait_for_timeout(1500)
        page.wait_for_function(IDLE, timeout=120_000)
        page.wait_for_timeout(500)
        out.append(page.evaluate(SIGNATURE))
    return out


def timed_action(page, action, until):
    """Run ``action()`` on a settled page and wait for ``until()``; returns seconds."""
    page.wait_for_function(IDLE, timeout=120_000)
    page.wait_for_timeout(400)
    t0 = time.perf_counter()
    action()
    until()
    return time.perf_counter() - t0


def pick_option(page, label: str, option: str):
    box = page.locator("[data-testid='stSelectbox']", has_text=label).first
    box.locator("input").click()
    page.keyboard.type(option)
    page.keyboard.press("Enter")


def caption_value(page, pattern: str) -> str | None:
    m = re.search(pattern, page.evaluate(CAPTION))
    return m.group(1) if m else None


def wait_caption(page, pattern: str, old: str | None, timeout=120_000):
    page.wait_for_function(
        "([p, o]) => { const t = (" + CAPTION + ")(); const m = t.match(new RegExp(p)); return m && m[1] !== o; }",
        arg=[pattern, old], timeout=timeout)
    page.wait_for_timeout(30)
    page.wait_for_function(IDLE, timeout=timeout)


def lesion_points() -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Two points inside the largest lesion of the demo DICOM (its interior-most pixel and a second interior pixel
    away from it), and the image shape."""
    from segcore.io import load_scan
    from segcore.models import load_model
    from segcore.pipeline import segment

    scan = load_scan(ROOT / "sample_data" / "demo" / "phantom_ct_512.dcm")
    seg = segment(scan, *load_model(ROOT / "sample_data" / "models" / "default"))
    n, comp, stats, _ = cv2.connectedComponentsWithStats((seg.refined == 2).astype(np.uint8))
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    dist = cv2.distanceTransform((comp == k).astype(np.uint8), cv2.DIST_L2, 5)
    first = np.unravel_index(int(np.argmax(dist)), dist.shape)
    rr, cc = np.nonzero(dist >= max(2.0, dist.max() / 3))
    far = int(np.argmax((rr - first[0]) ** 2 + (cc - first[1]) ** 2))
    return (int(first[0]), int(first[1])), (int(rr[far]), int(cc[far])), scan.pixels.shape[-2:]


def smart_click_samples(b, url: str, n: int) -> dict[str, list[float]]:
    """Time Smart click round trips on Correct: first and second click, each try in a new session."""
    (r1, c1), (r2, c2), (h, w) = lesion_points()
    out = {"smart_click_first": [], "smart_click_second": []}
    for _ in range(n):
        ctx = b.new_context(viewport={"width": 1400, "height": 1000})
        pg = ctx.new_page()
        pg.goto(url + "/?reviewer=Bench")
        wait_figure(pg)
        pg.get_by_role("link", name="Correct").first.click()
        pg.get_by_role("heading", name="Correct", exact=True).wait_for(timeout=60_000)
        pg.wait_for_function(IDLE, timeout=120_000)
        view = pg.get_by_test_id("sc-click-canvas")  # ui/click_canvas.js
        view.wait_for(timeout=60_000)
        view.scroll_into_view_if_needed()
        for key, (r, c), count in (("smart_click_first", (r1, c1), "1 click"),
                                   ("smart_click_second", (r2, c2), "2 clicks")):
            bb = view.bounding_box()
            x, y = bb["x"] + (c + 0.5) / w * bb["width"], bb["y"] + (r + 0.5) / h * bb["height"]
            root = pg.locator(".sc-root").element_handle()  # inside the component's shadow root
            seq = root.get_attribute("data-layer-seq")
            out[key].append(timed_action(
                pg, lambda: pg.mouse.click(x, y),
                lambda: (pg.get_by_text(re.compile(f"^{count} on this object")).wait_for(timeout=60_000),
                         pg.wait_for_function(LAYER_SHOWN, arg=[root, seq], timeout=60_000),
                         pg.wait_for_function(IDLE, timeout=120_000))))
        ctx.close()
    return out


def library_crf_ms(repeats=7) -> tuple[float, dict]:
    """dense_crf on the 512x512 demo DICOM with the app's default parameters and the default model's probs."""
    from segcore.io import load_scan
    from segcore.models import load_model
    from segcore.pipeline import model_view, predict
    from segcore.refine import RefineConfig, dense_crf

    model, config = load_model(ROOT / "sample_data" / "models" / "default")
    scan = load_scan(ROOT / "sample_data" / "demo" / "phantom_ct_512.dcm")
    pred = predict(scan, model, config)
    img = model_view(pred.image, config)
    params = RefineConfig().crf
    dense_crf(img, pred.probs, **params)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dense_crf(img, pred.probs, **params)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000, params


def git_label(app_dir) -> str:
    """The checkout's short commit, with '+ uncommitted changes' when tracked files differ from it."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=app_dir, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--app-dir", default=str(ROOT))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "app.json"))
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    app_dir = Path(args.app_dir).resolve()
    n = args.n
    from playwright.sync_api import sync_playwright

    from segcore.phantom import HU_OFFSET, make_phantom

    tmp = Path(tempfile.mkdtemp())
    pngs = []
    for i in range(n + 1):
        hu, _ = make_phantom(777 + i, 512)
        p = tmp / f"scan_{i}.png"
        cv2.imwrite(str(p), np.clip(hu + HU_OFFSET, 0, 4095).astype(np.uint16))
        pngs.append(p)
    res: dict = {"server": " ".join(Path(a).name for a in server_command(app_dir)[1:]), "app_dir": str(app_dir),
                 "git": git_label(app_dir)}
    proc, url = start_server(app_dir, tmp / "data")
    samples = {k: [] for k in ("first_load_warm", "sample_switch", "view_switch", "window_preset", "refine_slider",
                               "crf_iterations_plus1", "slider_6_keyboard_steps", "upload_png_512")}
    app_crf = []
    short_slider_tries: list[int] = []
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync"])
            t0 = time.perf_counter()
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            wait_figure(page)
            res["first_load_cold_s"] = round(time.perf_counter() - t0, 2)
            for _ in range(n):
                ctx = b.new_context(viewport={"width": 1400, "height": 1000})
                pg = ctx.new_page()
                t0 = time.perf_counter()
                pg.goto(url)
                wait_figure(pg)
                samples["first_load_warm"].append(time.perf_counter() - t0)
                ctx.close()

            names = ["phantom test/test_000.png", "phantom_ct_512.dcm", "phantom test/test_001.png",
                     "phantom_ct_512.dcm", "phantom test/test_002.png", "phantom_ct_512.dcm"]
            acts = [lambda name=name: pick_option(page, "Sample scan", name) for name in names[:n + 1]]
            final = settled_signatures(page, acts)
            for act, sig in zip(acts, final):
                samples["sample_switch"].append(timed_action(page, act, lambda: shown(page, sig)))

            views = ["Contours", "Overlay", "Difference", "Overlay", "Side by side", "Overlay"]
            acts = [lambda v=v: page.get_by_role("radiogroup", name="View").get_by_text(v, exact=True).click()
                    for v in views[:n + 1]]
            for act, sig in zip(acts, settled_signatures(page, acts)):
                samples["view_switch"].append(timed_action(page, act, lambda: shown(page, sig)))

            presets = ["lung", "bone", "brain", "soft tissue", "lung", "bone"]
            acts = [lambda w=w: pick_option(page, "Display window", w) for w in presets[:n + 1]]
            for act, sig in zip(acts, settled_signatures(page, acts)):
                samples["window_preset"].append(timed_action(page, act, lambda: shown(page, sig)))

            for i in range(n):
                app_ms = caption_value(page, r"crf (\d+(?:\.\d+)?) ms")
                if app_ms:
                    app_crf.append(float(app_ms))
                track = page.locator("[data-testid='stSlider']", has_text="Closing kernel (px)").first
                track.scroll_into_view_if_needed()
                before = caption_value(page, r"close (\d+)px")
                bb = track.bounding_box()
                x = bb["x"] + bb["width"] * (0.35 if i % 2 == 0 else 0.15)
                samples["refine_slider"].append(timed_action(
                    page, lambda: page.mouse.click(x, bb["y"] + bb["height"] * 0.75),
                    lambda: wait_caption(page, r"close (\d+)px", before)))

            for i in range(n):
                track = page.locator("[data-testid='stSlider']", has_text="CRF iterations").first
                track.scroll_into_view_if_needed()
                thumb = track.get_by_role("slider")
                before = caption_value(page, r"CRF (\d+) it")
                key = "ArrowRight" if i % 2 == 0 else "ArrowLeft"
                thumb.focus()
                samples["crf_iterations_plus1"].append(timed_action(
                    page, lambda: page.keyboard.press(key), lambda: wait_caption(page, r"CRF (\d+) it", before)))
                app_ms = caption_value(page, r"crf (\d+(?:\.\d+)?) ms")
                if app_ms:
                    app_crf.append(float(app_ms))

            for i in range(n):
                track = page.locator("[data-testid='stSlider']", has_text="Closing kernel (px)").first
                thumb = track.get_by_role("slider")
                thumb.focus()
                start = int(caption_value(page, r"close (\d+)px"))
                key = "ArrowRight" if start < 12 else "ArrowLeft"
                target = start + 6 if key == "ArrowRight" else start - 6
                page.wait_for_timeout(400)
                t0 = time.perf_counter()
                for _ in range(6):
                    page.keyboard.press(key)
                # the slider's own value: a rerun can redraw the slider between presses and drop the focus, and
                # then fewer than 6 steps are made (seen in 2 of 4 runs); such a try is timed but not counted
                final = int(track.get_by_test_id("stSliderThumbValue").first.inner_text())
                page.wait_for_function(
                    "([t]) => { const m = (" + CAPTION + ")().match(/close (\\d+)px/); return m && +m[1] === t; }",
                    arg=[final], timeout=120_000)
                page.wait_for_timeout(30)
                page.wait_for_function(IDLE, timeout=120_000)
                if final == target:
                    samples["slider_6_keyboard_steps"].append(time.perf_counter() - t0)
                else:
                    short_slider_tries.append(abs(final - start))

            if (app_dir / "segcore" / "interactive").is_dir():  # apps before the tool have nothing to time
                samples.update(smart_click_samples(b, url, n))

            page.get_by_text("Upload", exact=True).first.click()
            page.wait_for_function(IDLE, timeout=60_000)
            for i, png in enumerate(pngs):
                page.locator("input[type=file]").first.set_input_files(str(png))
                t0 = time.perf_counter()
                page.wait_for_function("([n]) => (" + CAPTION + ")().includes(n)", arg=[png.name], timeout=120_000)
                page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot image').length >= 2",
                                       timeout=60_000)
                page.wait_for_timeout(30)
                page.wait_for_function(IDLE, timeout=120_000)
                if i > 0:
                    samples["upload_png_512"].append(time.perf_counter() - t0)
            b.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    lib_ms, params = library_crf_ms()
    for k, v in samples.items():
        if v:
            res[k + "_s_median"] = round(statistics.median(v), 2)
            res[k + "_samples_s"] = [round(x, 2) for x in v]
    res["crf_in_app_ms_median"] = round(statistics.median(app_crf), 1) if app_crf else None
    res["crf_library_ms_median"] = round(lib_ms, 1)
    res["crf_in_app_over_library"] = round(res["crf_in_app_ms_median"] / lib_ms, 2) if app_crf else None
    res["crf_params"] = params
    if short_slider_tries:
        res["slider_6_keyboard_steps_short_tries"] = short_slider_tries  # steps made when focus was lost
    res["note"] = ("each figure from the action until the page's figures show the change (sample, view and window "
                   "switches: exactly the figure an untimed first pass settled on; sliders and clicks: the caption "
                   "under them) and the script is idle; warm server unless 'cold'")
    res["command"] = ".venv/bin/python bench/app_latency.py" + (f" --app-dir {args.app_dir}"
                                                               if app_dir != ROOT else "")
    print(json.dumps(res, indent=1))
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
