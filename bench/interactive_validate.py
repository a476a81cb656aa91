"""Click segmentation on VALIDATION objects only: choose inference settings, decide whether a retrained model ships.

The held-out test objects of ``bench/interactive.py`` (phantom test lesions, radiomics
lesions, held-out stardist nuclei) are never touched here. Validation sets
(:func:`segcore.interactive.data.validation_objects`): phantom val lesions, nuclei of the
stardist training side (seen in training: a fit check), fresh synthetic scenes, fresh
512x512 phantoms (large lesions).

Per model (and settings) and set: NoC@85/90 (max 20), IoU after 1/3/5 clicks, best IoU, and
diagnostics of the failure modes: ``drop_frac`` (clicks after which the IoU fell),
``wrong_click_frac`` (clicks whose own pixel ended on the wrong side: an ignored click),
``area_ratio_1``/``_5`` (median predicted / true area after 1 and 5 clicks).

    .venv/bin/python bench/interactive_validate.py --model sample_data/models/interactive \\
        --model /tmp/candidate --set reframe=0 --set click_snap_radius=0     # writes interactive_validation.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = ROOT.parent / "shared" / "data"
MAX_CLICKS = 20


def session(fn, image, gt):
    """The standard simulator (as :func:`segcore.interactive.click_session`) with per-click diagnostics."""
    from segcore.interactive import iou, next_click

    clicks, pred, ious, wrong, areas = [], None, [], 0, []
    for _ in range(MAX_CLICKS):
        c = next_click(gt, pred)
        if c is None:
            ious.append(1.0)
        else:
            clicks.append(c)
            pred = np.asarray(fn(image, list(clicks), previous=pred), bool)
            ious.append(iou(pred, gt))
            areas.append(pred.sum() / gt.sum())
            wrong += int(pred[c[0], c[1]] != c[2])
        if len(ious) >= 5 and ious[-1] >= 0.9:
            break
    drops = [ious[i] < ious[i - 1] - 1e-9 for i in range(1, len(ious))]
    return {"ious": ious, "wrong": wrong / max(1, len(clicks)), "drop": float(np.mean(drops)) if drops else 0.0,
            "a1": areas[0], "a5": areas[min(4, len(areas) - 1)]}


def evaluate(fn, objects) -> dict:
    from segcore.interactive import noc

    rows = [session(fn, image, gt) for image, gt, _ in objects]

    def at(r, k):
        return r["ious"][min(k, len(r["ious"])) - 1]

    def mean(v):
        return round(float(np.mean(v)), 4)

    return {"n_objects": len(rows),
            "noc85": mean([noc(r["ious"], 0.85, MAX_CLICKS) for r in rows]),
            "noc90": mean([noc(r["ious"], 0.9, MAX_CLICKS) for r in rows]),
            "iou_1_click": mean([at(r, 1) for r in rows]), "iou_3_clicks": mean([at(r, 3) for r in rows]),
            "iou_5_clicks": mean([at(r, 5) for r in rows]), "best_iou": mean([max(r["ious"]) for r in rows]),
            "drop_frac": mean([r["drop"] for r in rows]), "wrong_click_frac": mean([r["wrong"] for r in rows]),
            "area_ratio_1": round(float(np.median([r["a1"] for r in rows])), 3),
            "area_ratio_5": round(float(np.median([r["a5"] for r in rows])), 3)}


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=None, help="model folder (repeat to compare)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="InteractiveConfig inference setting for every model (e.g. click_snap_radius=0)")
    ap.add_argument("--grabcut", action="store_true", help="also GrabCut")
    ap.add_argument("--sets", default=None, help="comma-separated subset of the validation sets")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "interactive_validation.json"))
    args = ap.parse_args(argv)

    from segcore.interactive import ClickModel, grabcut_segment, segment
    from segcore.interactive.data import validation_objects

    sets = validation_objects(ROOT, SHARED)
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides = {k: parse_value(v) for k, v in overrides.items()}
    res = {"command": "python bench/interactive_validate.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "n_objects": {k: len(v) for k, v in sets.items()}, "settings": overrides, "results": {}}
    methods = {}
    for folder in args.model or [str(ROOT / "sample_data" / "models" / "interactive")]:
        model = ClickModel.load(folder)
        model.config = dataclasses.replace(model.config, **overrides)
        methods[folder] = (lambda m: lambda im, c, **kw: segment(im, c, model=m, **kw))(model)
    if args.grabcut:
        methods["grabcut"] = grabcut_segment
    for name, fn in methods.items():
        res["results"][name] = {}
        for set_name, objs in sets.items():
            t0 = time.perf_counter()
            res["results"][name][set_name] = evaluate(fn, objs)
            print(name, set_name, json.dumps(res["results"][name][set_name]), f"{time.perf_counter() - t0:.0f} s",
                  flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
