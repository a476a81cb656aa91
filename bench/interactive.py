"""Click segmentation: the shipped click network vs OpenCV GrabCut vs the brush, on held-out real objects.

Per data set (phantom test lesions; radiomics lesions, per slice and connected component,
never trained on; stardist nuclei cross-sections of the 21 held-out nuclei) and method:

* NoC@85 / NoC@90: clicks of the standard simulator (first click at the object's
  interior-most point, then at the interior-most point of the deepest error region)
  to reach 85 / 90 % IoU, at most 20 (20 when never reached), mean over objects;
* IoU after 1, 3 and 5 clicks (mean), and IoU from a box prompt alone (the object's
  box widened by 10 % of its size on each side);
* the brush baseline: one round dab of radius 2 or 4 px per simulated click (paint on a
  miss, erase on a false region): dabs and painted pixels to reach 85 / 90 % IoU;
* objects that never reach 90 % (with their best IoU);
* time per click: ``segment()`` on a 512x512 CT slice (lung1), median of repeated
  first clicks and second clicks (with the previous mask), and GrabCut on the same.

    flock /tmp/segcore-cpu.lock .venv/bin/python bench/interactive.py   # writes bench/results/interactive.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = ROOT.parent / "shared" / "data"
MAX_CLICKS = 20
BRUSH_RADII = (2, 4)
# inference settings a fold model takes from the evaluated model (the network weights are the fold's own)
INFERENCE_FIELDS = ("threshold", "flip_average", "click_snap_radius", "reframe", "max_expansions",
                    "keep_clicked_components", "click_force_radius")


def datasets(shared: Path, limit: int | None):
    from segcore.interactive.data import phantom_lesion_objects, radiomics_objects, stardist_split

    sets = {"phantom_lesions": phantom_lesion_objects(ROOT / "sample_data" / "phantom" / "test")}
    if (shared / "radiomics").is_dir():
        sets["radiomics_lesions"] = radiomics_objects(shared / "radiomics")
    if (shared / "stardist").is_dir():
        sets["stardist_nuclei"] = stardist_split(shared / "stardist")[1]
    if limit:
        sets = {k: v[:: max(1, len(v) // limit)][:limit] for k, v in sets.items()}
    return sets


def loose_box(mask, frac=0.1):
    from segcore.interactive.geometry import mask_bbox

    r0, c0, r1, c1 = mask_bbox(mask)
    h, w = mask.shape
    pad_r, pad_c = max(1.0, frac * (r1 - r0 + 1)), max(1.0, frac * (c1 - c0 + 1))
    return (max(0.0, r0 - pad_r), max(0.0, c0 - pad_c), min(h - 1.0, r1 + pad_r), min(w - 1.0, c1 + pad_c))


def evaluate_method(fn, objects, fn_for=None):
    """Click sessions and box prompts of ``fn`` on ``objects``; ``fn_for(meta)`` picks a function per object."""
    from segcore.interactive import click_session, iou

    rows = []
    for image, gt, meta in objects:
        seg = fn_for(meta) if fn_for else fn

        def method(clicks, prev, image=image, seg=seg):
            return seg(image, clicks, previous=prev)

        s = click_session(method, gt, max_clicks=MAX_CLICKS, stop_iou=0.9, min_clicks=5)
        box_iou = iou(seg(image, [], box=loose_box(gt)), gt)
        rows.append({"meta": meta, "ious": [round(v, 4) for v in s.ious], "noc85": s.noc(0.85, MAX_CLICKS),
                     "noc90": s.noc(0.9, MAX_CLICKS), "iou1": s.iou_at(1), "iou3": s.iou_at(3), "iou5": s.iou_at(5),
                     "box_iou": box_iou, "ms_per_click": 1000 * float(np.median(s.seconds))})
    return summarise(rows)


def summarise(rows):
    never = [{**r["meta"], "best_iou": round(max(r["ious"]), 4)} for r in rows if r["noc90"] >= MAX_CLICKS
             and max(r["ious"]) < 0.9]
    return {"n_objects": len(rows),
            "noc85": round(float(np.mean([r["noc85"] for r in rows])), 3),
            "noc90": round(float(np.mean([r["noc90"] for r in rows])), 3),
            "iou_1_click": round(float(np.mean([r["iou1"] for r in rows])), 4),
            "iou_3_clicks": round(float(np.mean([r["iou3"] for r in rows])), 4),
            "iou_5_clicks": round(float(np.mean([r["iou5"] for r in rows])), 4),
            "iou_box_only": round(float(np.mean([r["box_iou"] for r in rows])), 4),
            "ms_per_click_median": round(float(np.median([r["ms_per_click"] for r in rows])), 1),
            "never_reach_90": never,
            "per_object": [{"meta": r["meta"], "noc85": r["noc85"], "noc90": r["noc90"],
                            "iou1": round(r["iou1"], 4)} for r in rows]}


def evaluate_brush(objects):
    from segcore.interactive import brush_session

    out = {"definition": "one round dab of the given radius per simulated click (paint at a positive click, erase at "
                         "a negative one), dabs and pixels changed until the IoU threshold; area = object pixels "
                         "(painting it pixel by pixel)",
           "object_area_px_median": float(np.median([gt.sum() for _, gt, _ in objects]))}
    for radius in BRUSH_RADII:
        res = {}
        for thr in (0.85, 0.9):
            runs = [brush_session(gt, radius, threshold=thr, max_dabs=2000) for _, gt, _ in objects]
            reached = [r for r in runs if r["dabs"] is not None]
            res[f"iou{int(thr * 100)}"] = {
                "reached_fraction": round(len(reached) / len(runs), 4),
                "dabs_mean_where_reached": round(float(np.mean([r["dabs"] for r in reached])), 2) if reached else None,
                "noc_capped_20": round(float(np.mean([min(r["dabs"], MAX_CLICKS) if r["dabs"] else MAX_CLICKS
                                                      for r in runs])), 3),
                "painted_px_median_where_reached": float(np.median([r["painted_px"] for r in reached]))
                if reached else None}
        out[f"radius_{radius}"] = res
    return out


def timing(model, shared: Path, repeats: int):
    from segcore.interactive import grabcut_segment, next_click, segment
    from segcore.interactive.data import radiomics_objects

    objs = [o for o in radiomics_objects(shared / "radiomics") if o[2]["source"] == "lung1"]
    image, gt, meta = max(objs, key=lambda o: o[2]["area"])
    if image.shape != (512, 512):
        raise RuntimeError(f"expected a 512x512 lung1 slice, got {image.shape}")
    first = next_click(gt, None)
    m1 = segment(image, [first], model=model)
    second = next_click(gt, m1) or first
    out = {"image": f"lung1 z={meta['z']} (512x512 CT, HU)", "repeats": repeats}
    for name, fn in (("network", lambda c, p: segment(image, c, previous=p, model=model)),
                     ("grabcut", lambda c, p: grabcut_segment(image, c, previous=p))):
        fn([first], None)  # warm-up
        t1, t2 = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn([first], None)
            t1.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fn([first, second], m1)
            t2.append(time.perf_counter() - t0)
        out[name] = {"first_click_ms_median": round(1000 * float(np.median(t1)), 1),
                     "second_click_ms_median": round(1000 * float(np.median(t2)), 1),
                     "first_click_ms_p90": round(1000 * float(np.percentile(t1, 90)), 1)}
    batch = 4 if model.config.flip_average else 1  # what one segment() window runs
    x = np.zeros((batch, model.config.net_size, model.config.net_size, model.config.channels), np.float32)
    model.predict(x)
    tn = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict(x)
        tn.append(time.perf_counter() - t0)
    out["network_forward_only_ms_median"] = round(1000 * float(np.median(tn)), 1)
    out["network_forward_batch"] = batch
    return out


def weights_digest(folder) -> str:
    """The first 12 hex digits of the sha256 of a model folder's ``model.keras``."""
    import hashlib

    return hashlib.sha256((Path(folder) / "model.keras").read_bytes()).hexdigest()[:12]


def compare_models(specs, settings, sets, command: str) -> dict:
    """Other model folders (``LABEL=FOLDER``) with optional inference settings, on the same objects.

    A model that trained on radiomics cases is not scored on the radiomics lesions (not held out; see
    ``--radiomics-folds`` for its leave-one-case-out figures).
    """
    from segcore.interactive import ClickModel, segment
    from segcore.interactive.data import trained_cases

    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in settings)}
    out = {}
    for spec in specs:
        label, folder = spec.split("=", 1)
        m = ClickModel.load(folder)
        m.config = dataclasses.replace(m.config, **overrides)
        st = (m.config.training or {}).get("settings") or {}
        out[label] = {"folder": folder, "settings": overrides, "results": {}, "command": command,
                      "weights": weights_digest(folder),
                      "training": {k: st.get(k) for k in ("init", "steps", "learning_rate", "seed", "max_sim_rounds",
                                                          "radiomics_cases")}}
        seen = trained_cases(m.config)
        for name, objs in sets.items():
            if name == "radiomics_lesions" and seen:
                out[label]["skipped"] = {name: f"trained on the radiomics cases {sorted(seen)}"}
                continue
            r = evaluate_method(lambda im, c, m=m, **kw: segment(im, c, model=m, **kw), objs)
            out[label]["results"][name] = {k: v for k, v in r.items() if k != "per_object"}
            print(label, name, json.dumps({k: r[k] for k in ("noc85", "noc90", "iou_1_click", "iou_5_clicks")}),
                  flush=True)
    return out


def targets(res):
    net, gc = res["network"], res["grabcut"]
    t = {}
    for name in ("phantom_lesions", "radiomics_lesions"):
        if name in net:
            t[f"{name}: NoC@90 <= 4"] = net[name]["noc90"] <= 4
            t[f"{name}: 1-click IoU >= 0.75"] = net[name]["iou_1_click"] >= 0.75
    if "stardist_nuclei" in net:
        t["stardist_nuclei: NoC@85 <= 4"] = net["stardist_nuclei"]["noc85"] <= 4
    for name in net:
        t[f"{name}: NoC@90 and NoC@85 better than GrabCut"] = (net[name]["noc90"] < gc[name]["noc90"]
                                                              and net[name]["noc85"] < gc[name]["noc85"])
    if res.get("timing"):
        first_ms = res["timing"]["network"]["first_click_ms_median"]
        t["time per click (512x512, first click, median) <= 60 ms"] = first_ms <= 60
    return t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many objects per data set (quick look)")
    ap.add_argument("--sets", default=None, help="comma-separated subset of phantom_lesions, radiomics_lesions, "
                                                 "stardist_nuclei")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "interactive.json"))
    ap.add_argument("--part", choices=("all", "quality", "timing"), default="all",
                    help="quality: the click sessions only (untimed); timing: only the timing, merged into --out")
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=FOLDER",
                    help="also evaluate this model folder on the same objects (e.g. the previous model, extracted "
                         "from git history), recorded under compare/LABEL")
    ap.add_argument("--compare-set", action="append", default=[], metavar="KEY=VALUE",
                    help="InteractiveConfig inference setting for the --compare models (e.g. click_snap_radius=0)")
    ap.add_argument("--radiomics-folds", default=None, metavar="DIR",
                    help="leave-one-case-out models DIR/fold_<case> for the radiomics lesions (required when the "
                         "model trained on radiomics cases)")
    ap.add_argument("--write-card", action="store_true",
                    help="also write the measured metrics into the model's MODEL_CARD.md and config.json")
    args = ap.parse_args(argv)

    from segcore.interactive import grabcut_segment, load_model, segment
    from segcore.interactive.data import held_out_models, trained_cases

    known = ("phantom_lesions", "radiomics_lesions", "stardist_nuclei")
    chosen = args.sets.split(",") if args.sets else list(known)
    if set(chosen) - set(known):
        ap.error(f"unknown --sets {sorted(set(chosen) - set(known))}: choose from {', '.join(known)}")
    model = load_model(args.model)
    if args.write_card and (args.sets or args.limit or trained_cases(model.config)):
        ap.error("--write-card writes the model's own metrics: not with --sets or --limit (a partial run), nor for a "
                 "model trained on radiomics cases (its radiomics figures come from other models)")
    run = shlex.join(["flock", "/tmp/segcore-cpu.lock", ".venv/bin/python", "bench/interactive.py",
                      *(sys.argv[1:] if argv is None else argv)])
    if args.part == "timing":
        res = json.loads(Path(args.out).read_text())
        sets = {}
    else:
        sets = {k: v for k, v in datasets(SHARED, args.limit).items() if k in chosen}
        missing = sorted(set(chosen) - set(sets))
        if missing:
            raise SystemExit(f"No objects for {missing}: is the shared data folder {SHARED} there?")
        res = {"max_clicks": MAX_CLICKS, "model": str(args.model or "sample_data/models/interactive"),
               "weights": weights_digest(args.model or ROOT / "sample_data" / "models" / "interactive"),
               "n_objects": {k: len(v) for k, v in sets.items()}, "network": {}, "grabcut": {}, "brush": {}}
    try:
        folds = held_out_models(model, args.radiomics_folds, inference=INFERENCE_FIELDS) \
            if "radiomics_lesions" in sets else {}
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if folds and any(m is not model for m in folds.values()):
        res["radiomics_folds"] = {case: {"folder": str(Path(args.radiomics_folds) / f"fold_{case}"),
                                         "trained_on": sorted(trained_cases(m.config))} for case, m in folds.items()}
    elif args.radiomics_folds:
        print(f"--radiomics-folds ignored: {args.model or 'the shipped model'} trained on no radiomics case",
              flush=True)
    for name, objs in sets.items():
        t0 = time.perf_counter()
        fn_for = (lambda meta: lambda im, c, **kw: segment(im, c, model=folds[meta["source"]], **kw)) \
            if name == "radiomics_lesions" else None
        res["network"][name] = evaluate_method(lambda im, c, **kw: segment(im, c, model=model, **kw), objs, fn_for)
        res["grabcut"][name] = evaluate_method(grabcut_segment, objs)
        res["brush"][name] = evaluate_brush(objs)
        print(name, json.dumps({m: {k: res[m][name][k] for k in ("noc85", "noc90", "iou_1_click", "iou_5_clicks")}
                                for m in ("network", "grabcut")}), f"{time.perf_counter() - t0:.0f} s", flush=True)
    if args.compare and sets:
        res["compare"] = compare_models(args.compare, args.compare_set, sets, run)
    res["timing"] = timing(model, SHARED, args.repeats) if args.part != "quality" else None
    res["targets"] = targets(res)
    res["timing_command" if args.part == "timing" else "command"] = run
    res["machine"] = f"{os.cpu_count()} CPU cores, no GPU"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({"timing": res["timing"], "targets": res["targets"]}, indent=1))
    if args.write_card:
        from segcore.interactive import DEFAULT_MODEL_DIR
        from segcore.interactive.card import write_card

        folder = Path(args.model or DEFAULT_MODEL_DIR)
        model.config.metrics = {name: {k: v for k, v in r.items() if k != "per_object"}
                                for name, r in res["network"].items()}
        if res["timing"]:
            model.config.metrics["timing"] = res["timing"]
        (folder / "config.json").write_text(model.config.to_json())
        write_card(folder, model.config, res)


if __name__ == "__main__":
    main()
