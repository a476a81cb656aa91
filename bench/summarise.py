"""Write BENCHMARKS.md from bench/results/*.json and the default model's config (figures are never typed by hand).

    .venv/bin/python bench/summarise.py
"""

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
R = ROOT / "bench" / "results"


def load(name):
    p = R / name
    return json.loads(p.read_text()) if p.is_file() else None


def describe_model(cmp, shipped_weights):
    """Where a compared click model came from, from what the benchmark recorded of it."""
    w, tr = cmp.get("weights"), cmp.get("training") or {}
    if w and w == shipped_weights:
        return (f"the shipped weights (model.keras sha256 {w}) with the inference settings of its own config "
                "(the shipped config before this change)")
    if tr.get("init"):
        return (f"{tr['steps']} more training steps from `{tr['init']}` (then the shipped weights), peak lr "
                f"{tr['learning_rate']}, seed {tr['seed']}, up to {tr['max_sim_rounds']} simulator rounds"
                + (f", radiomics cases {', '.join(tr['radiomics_cases'])}" if tr.get("radiomics_cases") else "")
                + f" (model.keras sha256 {w})")
    return f"model.keras sha256 {w}"


def interactive_decision(it, compare, val):
    """What the comparison runs say about the shipped click model against the previous one and retrained stages
    (every figure computed from the results files)."""
    out = []
    prev = compare.get("previous")
    if prev and val and prev["folder"] in val["results"]:
        shipped = next((k for k in val["results"] if k.rstrip("/").endswith("sample_data/models/interactive")), None)
        if shipped:
            a, b = val["results"][prev["folder"]], val["results"][shipped]
            sets = [k for k in a if k in b]
            iou_up = sum(b[k]["iou_1_click"] > a[k]["iou_1_click"] for k in sets)
            noc_down = sum(b[k]["noc90"] < a[k]["noc90"] for k in sets)
            out += ["", f"The shipped model against `previous` on the validation objects below: 1-click IoU higher on "
                        f"{iou_up} of {len(sets)} sets, NoC@90 lower on {noc_down} of {len(sets)}."]
    seeds = {k: v for k, v in compare.items() if k.startswith("stage_seed")}
    rad = {k: v["results"]["radiomics_lesions"] for k, v in seeds.items() if "radiomics_lesions" in v["results"]}
    if len(rad) >= 2 and "radiomics_lesions" in it["grabcut"]:
        g = it["grabcut"]["radiomics_lesions"]
        spread = {m: max(r[m] for r in rad.values()) - min(r[m] for r in rad.values()) for m in ("noc85", "noc90")}
        beats = [k for k, r in rad.items() if r["noc85"] < g["noc85"] and r["noc90"] < g["noc90"]]
        out += ["", f"Retraining stages from the same recipe with different seeds ({', '.join(rad)}) differ on the "
                    f"real lesions by {spread['noc85']:.2f} clicks of NoC@85 and {spread['noc90']:.2f} of NoC@90; "
                    f"{len(beats)} of {len(rad)} beat GrabCut on both there"
                    + (f" ({', '.join(beats)})" if beats else "") + "."]
    return out


def instances_section(ins):
    """Whole-image AP per data set: Mask R-CNN (whole and tiled) vs the tuned classical pipeline."""
    def f(v):
        return "—" if v is None else f"{v:.4f}"

    cl_of = {"phantoms": "phantoms", "phantom_scenes": "phantoms", "stardist": "stardist",
             "stardist_strip": "stardist"}
    mr, cl = ins["maskrcnn"], ins["classical"]
    out = ["## Instance segmentation: compact Mask R-CNN vs the tuned classical pipeline", "",
           "Mask AP on held-out data, whole images through `MaskRCNN.detect` (native resolution, windows of "
           f"{mr['config']['tile_size']} model pixels overlapping by {mr['config']['tile_overlap']}, merged). "
           "*Tiled* = the image cut into 128-model-pixel tiles, each detected and scored as its own image against "
           "the ground truth cut the same way (shown where an image is larger than one tile). The classical "
           "pipeline (Otsu or U-Net foreground, distance-transform seeds with `min_distance` and h-maxima, "
           "compact watershed) is grid-searched on each data set's validation split; *untuned* is one fixed "
           "setting (σ 1, min_distance 3, no h-maxima, no compactness), close to the one used before. AP from segcore's NumPy COCO evaluation; pycocotools gives the same figures in "
           "the same run (columns checked below). StarDist: real nuclei (BSD-3), test = the right part "
           "(columns 28-56) of all 31 slices, never trained on, detected at pixel_scale 2; `stardist_strip` is the "
           "same 31 parts side by side as one wide image; `phantom_scenes` are 512×512 scenes with 100+ blobs.", "",
           "| data set | images | objects | Mask R-CNN AP50 | AP50:95 | tiled AP50 | tiled AP50:95 | "
           "tuned classical AP50 | AP50:95 | untuned classical AP50 |", "|---|---|---|---|---|---|---|---|---|---|"]
    agree = True
    for name, d in ins["datasets"].items():
        m = mr[name]
        t = m.get("tiled") or {}
        c = cl[cl_of[name]]["test"][name]
        agree &= all(r[k] == r[f"pycocotools_{k}"] for r in (m["whole"], t, c["tuned"]) if r
                     for k in ("AP50", "AP50_95"))
        size = "×".join(str(v) for v in d["image_size"])
        out.append(f"| {name} ({size}) | {d['n_images']} | {d['n_objects']} | **{f(m['whole']['AP50'])}** | "
                   f"{f(m['whole']['AP50_95'])} | {f(t.get('AP50'))} | {f(t.get('AP50_95'))} | "
                   f"{f(c['tuned']['AP50'])} | {f(c['tuned']['AP50_95'])} | {f(c['untuned']['AP50'])} |")
    out += ["", f"pycocotools agrees with every AP above to 4 decimals: {'yes' if agree else 'NO'}. Tuned "
            "classical settings: " + "; ".join(f"{k}: {v['chosen']} ({v['n_settings']} settings, best validation "
                                               f"AP50 {v['val_AP50_best']:.4f})"
                                               for k, v in cl.items() if isinstance(v, dict) and "chosen" in v) + ".", ""]
    cm = ins.get("compare_model")
    if cm:
        out += [f"Previous model (`{cm['path']}`) on the same data, whole images: "
                + ", ".join(f"{k} AP50 {f(cm[k]['AP50'])}" for k in ins["datasets"]) + ".", ""]
    tm = ins["timing_512"]
    cfg = mr["config"]
    timing = (f"Time per 512×512 image (2 CPU cores, median of {tm['runs']}): Mask R-CNN {tm['maskrcnn_ms_median']} "
              f"ms (p90 {tm['maskrcnn_ms_p90']} ms); classical (Otsu) {tm['classical_otsu_ms_median']} ms. " if tm
              else "Time per 512×512 image: not measured in this run. ")
    out += [timing + f"Anchors {cfg['anchor_sizes']} px (proposals for objects about {cfg['anchor_object_range'][0]:.0f}-"
            f"{cfg['anchor_object_range'][1]:.0f} px); trained on objects {cfg['object_diameter_range'][0]}-"
            f"{cfg['object_diameter_range'][1]} px across; up to {cfg['max_detections']} detections per image. "
            f"Command: `{ins['command']}`.", ""]
    return out


def main():
    out = ["# Benchmarks", "",
           "All figures are measured on this project's CI-class machine (2 CPU cores, no GPU) and written by the "
           "scripts under `bench/`; absolute times on shared 2-core machines are noisy, ratios against the peer "
           "are measured in the same run. Regenerate this file with `.venv/bin/python bench/summarise.py`.", ""]
    cfg = json.loads((ROOT / "sample_data/models/default/config.json").read_text())
    m = cfg["metrics"]
    ev = m["test"]
    out += ["## Default model (sample_data/models/default)", "",
            f"U-Net, base 16 filters, depth 4, dropout 0.1, no batch norm, input 256×256, "
            f"{cfg['normalisation']['type']} normalisation. Trained on the 120 phantom training images (random "
            "128×128 crops, batch 16, 30 steps per epoch, paired flips/rot90/affine + photometric augmentation), "
            "weighted CE (√ inverse class frequency) + batch soft Dice, Adam 2e-3 with cosine decay, early stopping "
            "on validation Dice.", "",
            "```bash", ".venv/bin/python -m segcore train --out sample_data/models/default --logs", "```", "",
            f"Epochs run: {m['epochs_run']}; training time {m['train_seconds']} s "
            f"({m['seconds_per_epoch']} s per 30-step epoch, median).", "",
            f"Held-out test set ({ev['n_images']} images), at full 256×256 resolution:", "",
            "| class | Dice | IoU | HD95 (px, median) |", "|---|---|---|---|"]
    for name, row in ev["per_class"].items():
        out.append(f"| {name} | {row['dice']:.4f} | {row['iou']:.4f} | {row['hd95']:.2f} |")
    out += ["", f"**Mean foreground Dice: {ev['mean_foreground_dice']:.4f}** (target ≥ 0.90). Reproduce with "
            "`.venv/bin/python -m segcore evaluate` (lesion HD95 is infinite on images where one of prediction or "
            "ground truth has no lesion; the median is over finite values).", ""]
    inf = load("inference.json")
    if inf:
        out += ["## Inference speed", "", "| measure | value | target |", "|---|---|---|",
                f"| one 512×512 DICOM, end to end (median of {inf['runs']}) | {inf['single_512_ms_median']} ms "
                f"(p90 {inf['single_512_ms_p90']} ms) | ≤ 150 ms |",
                f"| batch predict at 256×256 ({inf['batch_images']} images) | {inf['batch_256_images_per_s']} "
                f"images/s | ≥ 10 images/s |",
                f"| training, seconds per epoch (30 steps of 16 crops) | {inf['train_seconds_per_epoch']} s | — |",
                "", f"{inf['note']}. Command: `{inf['command']}`.", ""]
    crf = load("crf.json")
    if crf:
        out += ["## Dense CRF: segcore vs pydensecrf", "",
                f"Same parameters for both ({', '.join(f'{k}={v}' for k, v in crf['params'].items())}); "
                "grayscale image given to pydensecrf as its RGB replica. segcore's `dense_crf` runs mean field "
                "with a bilateral grid (splat with `np.bincount`, separable Gaussian on the grid, trilinear slice "
                "with `cv2.remap`), pydensecrf (`pydensecrf2`) with its permutohedral lattice.", "",
                "| size | classes | iterations | segcore (ms, median) | pydensecrf (ms, median) | speed-up |",
                "|---|---|---|---|---|---|"]
        for r in crf["speed"]:
            out.append(f"| {r['size']}² | {r['classes']} | {r['iterations']} | {r['segcore_ms']} | "
                       f"{r['pydensecrf_ms']} | {r['speedup']}× |")
        q = crf["quality"]
        out += ["", f"Quality on the {q['n_images']} held-out phantom test images with the default model's "
                "probabilities (mean foreground Dice):", "",
                "| | mean fg Dice | " + " | ".join(q["class_names"]) + " | gain |",
                "|---|---|" + "---|" * len(q["class_names"]) + "---|"]
        for key, label, gain in (("raw", "raw network", None), ("segcore_crf", "segcore CRF", q["gain_segcore"]),
                                 ("pydensecrf", "pydensecrf", q["gain_pydensecrf"])):
            row = q[key]
            out.append(f"| {label} | {row['mean_foreground_dice']:.4f} | "
                       + " | ".join(f"{v:.4f}" for v in row["per_class_dice"])
                       + f" | {'' if gain is None else f'{gain:+.4f}'} |")
        out += ["", f"Gain difference with DeepLab's parameters (segcore − pydensecrf): {q['gain_difference']:+.4f} "
                "(target: within ±0.005). With these parameters both CRFs *lower* Dice on this set: the strong, "
                "wide appearance kernel erodes small lesions. Command: `" + crf["command"] + "`.", ""]
    ref = load("refine.json")
    if ref:
        c = ref["chosen"]
        steps = [k for k, v in c["enabled"].items() if v]
        out += ["### Refinement defaults chosen on the validation split", "",
                "`bench/tune_refine.py` grid-searches the CRF's appearance kernel (sxy_bilateral, srgb, "
                "compat_bilateral) and the morphology steps on the 20 validation images, then reports the chosen "
                "configuration once on the 30 test images. These are `RefineConfig`'s defaults and the app's "
                "starting slider values.", "",
                f"Chosen: steps {steps}, CRF {c['crf']}, closing {c['close_size']} px, minimum component "
                f"{c['min_size']:.0f} px." + (
                    f" The CRF sees the slice as the model normalises it (segcore.pipeline.model_view); the "
                    f"existing defaults score {ref['val_current_defaults']:.4f} on validation and were kept "
                    f"(the grid's best, {ref['val_best_pipeline']:.4f}, is within 0.0005)."
                    if ref.get("kept_current_defaults") else ""), "",
                "| test split, mean foreground Dice | value | gain over raw |", "|---|---|---|",
                f"| raw network | {ref['test_raw']:.4f} | |",
                f"| segcore CRF (chosen parameters) | {ref['test_crf_only']:.4f} | {ref['test_gain_crf']:+.4f} |",
                f"| pydensecrf (same parameters) | {ref['test_pydensecrf_same_params']:.4f} | "
                f"{ref['test_gain_pydensecrf']:+.4f} |",
                f"| full default pipeline (CRF + closing + small-component removal) | {ref['test_pipeline']:.4f} | "
                f"{ref['test_gain_pipeline']:+.4f} |", "",
                f"Gain difference segcore − pydensecrf with the chosen parameters: "
                f"{ref['test_gain_crf'] - ref['test_gain_pydensecrf']:+.4f}. Command: `{ref['command']}`.", ""]
    ins = load("instances.json")
    if ins and "datasets" in ins:
        out += instances_section(ins)
    it = load("interactive.json")
    if it:
        names = {"phantom_lesions": "phantom lesions", "radiomics_lesions": "radiomics lesions (real CT/MR)",
                 "stardist_nuclei": "stardist nuclei (real)"}
        out += ["## Interactive segmentation: click network vs GrabCut vs brush", "",
                "Held-out objects only (`segcore.interactive`, model card in `sample_data/models/interactive/`). "
                f"Standard click simulator, at most {it['max_clicks']} clicks (NoC = {it['max_clicks']} when never "
                "reached), first click at the object's interior-most point, next click at the interior-most point of "
                "the deepest error region. GrabCut (OpenCV) gets the same prompts and window.", "",
                "| data set | objects | method | NoC@85 | NoC@90 | IoU 1 click | IoU 3 | IoU 5 | IoU box only | "
                "never 90 % |", "|---|---|---|---|---|---|---|---|---|---|"]
        for key, label in names.items():
            if key not in it["network"]:
                continue
            for method in ("network", "grabcut"):
                r = it[method][key]
                out.append(f"| {label} | {r['n_objects']} | {method} | {r['noc85']:.2f} | {r['noc90']:.2f} | "
                           f"{r['iou_1_click']:.3f} | {r['iou_3_clicks']:.3f} | {r['iou_5_clicks']:.3f} | "
                           f"{r['iou_box_only']:.3f} | {len(r['never_reach_90'])} |")
        out += ["", "Brush baseline (one round dab per simulated click, shrunk to fit thin error regions; "
                "dabs to 90 % IoU where reached, and the median object area = pixels to paint by hand):", "",
                "| data set | object area (px, median) | r=2: reached, dabs | r=4: reached, dabs |",
                "|---|---|---|---|"]
        for key, label in names.items():
            b = it["brush"].get(key)
            if b:
                cells = [f"{b[f'radius_{r}']['iou90']['reached_fraction']:.0%}, "
                         f"{b[f'radius_{r}']['iou90']['dabs_mean_where_reached']}" for r in (2, 4)]
                out.append(f"| {label} | {b['object_area_px_median']:.0f} | {cells[0]} | {cells[1]} |")
        t = it["timing"] or {"image": "—", "network": {"first_click_ms_median": "—", "second_click_ms_median": "—"},
                             "repeats": 0, "network_forward_only_ms_median": "—",
                             "grabcut": {"first_click_ms_median": "—"}}
        compare = it.get("compare") or {}
        if compare:
            out += ["", "Other models on the same objects in the same run (`--compare`; each with the inference "
                        "settings in its own config unless stated):", "",
                    "| model | settings | data set | NoC@85 | NoC@90 | IoU 1 click | IoU 5 clicks |",
                    "|---|---|---|---|---|---|---|"]
            for label, cmp in compare.items():
                for name, why in (cmp.get("skipped") or {}).items():
                    out.append(f"| {label} (`{cmp['folder']}`) | — | {names.get(name, name)} | not scored: {why} "
                               "| | | |")
                for name, r in cmp["results"].items():
                    out.append(f"| {label} (`{cmp['folder']}`) | {cmp['settings'] or '—'} | {names.get(name, name)} "
                               f"| {r['noc85']:.2f} | {r['noc90']:.2f} | {r['iou_1_click']:.3f} | "
                               f"{r['iou_5_clicks']:.3f} |")
            out += ["", f"Command: `{next(iter(compare.values())).get('command', it['command'])}`."]
            out += [""] + [f"- {label}: {describe_model(cmp, it.get('weights'))}" for label, cmp in compare.items()]
            out += interactive_decision(it, compare, load("interactive_validation.json"))
        val = load("interactive_validation.json")
        if val:
            out += ["", "Validation objects (never the test objects; `bench/interactive_validate.py`), where inference "
                        "settings and models are chosen:", "",
                    "| model | set | objects | NoC@85 | NoC@90 | IoU 1 click | IoU 5 clicks | clicks that lowered IoU |",
                    "|---|---|---|---|---|---|---|---|"]
            for folder, per_set in val["results"].items():
                for name, r in per_set.items():
                    out.append(f"| `{folder.replace(str(ROOT) + '/', '')}` | {name.replace('_', ' ')} | "
                               f"{r['n_objects']} | {r['noc85']:.2f} | {r['noc90']:.2f} | {r['iou_1_click']:.3f} | "
                               f"{r['iou_5_clicks']:.3f} | {r['drop_frac']:.0%} |")
            out += ["", f"Command: `{val['command']}`" + (f" (settings {val['settings']})" if val['settings'] else "")
                    + "."]
        cv = load("interactive_radiomics_cv.json")
        if cv and "radiomics_lesions" in cv.get("network", {}):
            r, g = cv["network"]["radiomics_lesions"], cv["grabcut"]["radiomics_lesions"]
            folds = "; ".join(f"{case}: `{f['folder']}` trained on {', '.join(f['trained_on'])}"
                              for case, f in cv.get("radiomics_folds", {}).items())
            ctrl = (compare.get("stage_seed1") or {}).get("results", {}).get("radiomics_lesions")
            out += ["", "Real lesions in training, leave one case out: each radiomics case segmented by a model that "
                        f"never trained on it ({folds}). Radiomics lesions: NoC@85 {r['noc85']:.2f}, NoC@90 "
                        f"{r['noc90']:.2f}, IoU 1 click {r['iou_1_click']:.3f}, IoU 5 clicks {r['iou_5_clicks']:.3f}"
                        + (f"; the same stage without lesions (`stage_seed1`): {ctrl['noc85']:.2f}, "
                           f"{ctrl['noc90']:.2f}, {ctrl['iou_1_click']:.3f}, {ctrl['iou_5_clicks']:.3f}" if ctrl else "")
                        + f"; GrabCut in the same run {g['noc85']:.2f} / {g['noc90']:.2f}. Command: `{cv['command']}`."]
        trial = load("interactive_stage2_trial.json")
        if trial:
            out += ["", f"Tried earlier and not adopted: {trial['note']}. Train: `{trial['train_command']}` "
                        f"({trial['train_seconds']:.0f} s).", "",
                    "| objects | model | NoC@85 | NoC@90 | IoU 1 click | IoU 5 clicks |", "|---|---|---|---|---|---|"]
            for part in ("validation", "test"):
                for s_name in trial[part]["shipped"]:
                    for m in ("shipped", "stage2"):
                        r = trial[part][m][s_name]
                        out.append(f"| {part}: {s_name.replace('_', ' ')} | {m} | {r['noc85']:.2f} | "
                                   f"{r['noc90']:.2f} | {r['iou_1_click']:.3f} | {r['iou_5_clicks']:.3f} |")
            out += ["", f"Decision: {trial['decision']}. Commands: `{trial['validation_command']}`, "
                        f"`{trial['test_command']}`."]
        out += ["", f"Time per click, `segment()` on {t['image']}: first click {t['network']['first_click_ms_median']} "
                f"ms, second click {t['network']['second_click_ms_median']} ms (median of {t['repeats']}; network "
                f"forward alone, a batch of {t.get('network_forward_batch', 1)}: "
                f"{t['network_forward_only_ms_median']} ms); GrabCut "
                f"{t['grabcut']['first_click_ms_median']} ms. Target ≤ 60 ms.", "",
                "Targets: " + "; ".join(f"{k}: {'met' if v else '**missed**'}" for k, v in it["targets"].items())
                + f". Commands: `{it['command']}`"
                + (f", then `{it['timing_command']}`" if it.get("timing_command") else "") + ".", ""]
    app, before = load("app.json"), load("app_before.json")
    if app:
        rows = [("first load, fresh server (cold, one try)", "first_load_cold_s", None),
                ("first load, new session on a warm server", "first_load_warm_s_median", None),
                ("upload a 512×512 PNG → overlays drawn", "upload_png_512_s_median", 3.0),
                ("switch sample scan", "sample_switch_s_median", None),
                ("switch view (overlay ↔ side by side)", "view_switch_s_median", None),
                ("display-window preset", "window_preset_s_median", None),
                ("refinement slider (closing kernel)", "refine_slider_s_median", 1.0),
                ("CRF iterations +1", "crf_iterations_plus1_s_median", 1.0),
                ("6 keyboard steps of a slider", "slider_6_keyboard_steps_s_median", None),
                ("Smart click on Correct: first click → outline drawn", "smart_click_first_s_median", 0.7),
                ("Smart click: second click → outline redrawn", "smart_click_second_s_median", 0.7)]
        head = f"| action | after ({app.get('git', 'this checkout')}) |"
        if before:
            head += f" before ({before.get('git', '')}) | after / before |"
        out += ["## App latency (headless Chromium)", "",
                "Each action timed from the browser event until the page's figures show the change and the script "
                "is idle (median of the tries; the cold first load is one try). The before column is the app at "
                "the commit named, measured by the same script in the same session.", "",
                head + " target |", "|---" * (head.count("|") - 1 + 1) + "|"]
        for label, key, target in rows:
            if key not in app:
                continue
            cells = f"| {label} | {app[key]} s |"
            if before:
                b = before.get(key)
                cells += f" {b} s | {app[key] / b:.2f} |" if b else " – | – |"
            out.append(cells + (f" ≤ {target:g} s |" if target else " |"))
        nofreeze = (app.get("ablation") or {}).get("no_gc_freeze")
        if nofreeze:
            out += ["", f"Ablation ({app['ablation']['note']}): " + ", ".join(
                f"{label.split(' →')[0]} {nofreeze[key]} s" for label, key, _ in rows if key in nofreeze) + "."]
        if "crf_in_app_over_library" in app:
            out += ["", f"CRF step inside the app {app['crf_in_app_ms_median']} ms vs the library's `dense_crf` "
                        f"{app['crf_library_ms_median']} ms on the same 512×512 slice and parameters in the same run "
                        f"(ratio {app['crf_in_app_over_library']})."]
        cmd = f"`{app['command']}`"
        if before:
            cmd += (f", `{before['command']} --out bench/results/app_before.json` (`--app-dir` a checkout of "
                    f"{before.get('git', 'the before commit')})")
        out += ["", f"Commands: {cmd}.", ""]
    hostile = load("hostile.json")
    if hostile:
        out += ["## Hostile uploads (peak memory while refusing)", "",
                "Each reproducer from issue #10, loaded by `load_scan` in a fresh process; peak = VmHWM of that "
                "process (baseline = after imports and reading the upload). Budget: 1 GiB decoded "
                "(`SEGCORE_MAX_DECODED_BYTES`); target: peak < 1.5 GB while refusing any bomb.", "",
                "| upload | bytes | outcome | peak MB | baseline MB | seconds |", "|---|---|---|---|---|---|"]
        for r in hostile["reproducers"]:
            out.append(f"| {r['case']} | {r['upload_bytes']:,} | {r['outcome']} | {r['peak_mb']} | "
                       f"{r['baseline_mb']} | {r['seconds']} |")
        fz = hostile["fuzz"]
        out += ["", f"Mutation fuzz: {fz['mutations']} seeded corruptions (seed {fz['seed']}) of "
                f"{len(fz['sources'])} real sample files: {fz['counts']['loaded']} loaded as valid scans, "
                f"{fz['counts']['ScanError']} refused with a ScanError, {fz['counts']['other']} other outcomes "
                f"(crashes or contract violations), in {fz['seconds']} s. Command: `{hostile['command']}`.", ""]
    out += scaling_sections()
    vol = load("volume.json")
    if vol:
        v, b = vol["segment_volume"], vol["per_slice_baseline"]
        t = v["timings"]
        out += ["## Whole-volume segmentation (512×512×300 CT)", "",
                f"`segment_volume` on a synthetic {'×'.join(str(s) for s in vol['shape'][::-1])} CT "
                f"(spacing {vol['spacing_mm']} mm), {vol['cores']} cores, in a fresh process: model in batches "
                "of 8 overlapped with the per-slice refinement (dense CRF, closing, small components; the slices of "
                "a batch refined in parallel threads), then the "
                "3-D refinement (hole filling, small components in mm³).", "",
                "| measure | value | target |", "|---|---|---|",
                f"| wall time of `segment_volume` | {v['wall_s']} s | ≤ {vol['target']['wall_s']} s |",
                *(["| other runs of the same code: wall time | "
                   + ", ".join(f"{o['wall_s']} s" for o in vol["other_runs_same_code"]) + f" | ≤ {vol['target']['wall_s']} s |"]
                  if vol.get("other_runs_same_code") else []),
                *([f"| previous code: wall time / 3-D refinement | "
                   f"{', '.join(f'{w} s' for w in pc['wall_s'])} / {pc['refine_3d_s']} s | |",
                   f"| before refinement threads (one refinement thread, loaded machine) | "
                   f"{pc['older']['wall_s']} s | |"] if (pc := vol.get("previous_code")) else []),
                *([f"| CPU time: all threads / main thread | {v['cpu_s_all_threads']} s / "
                   f"{v['cpu_s_main_thread']} s | |",
                   f"| estimated wall time on an idle 2-core machine (max of main-thread CPU, all CPU / 2) | "
                   f"{v['idle_machine_estimate_s']} s | ≤ {vol['target']['wall_s']} s |"]
                  if "cpu_s_all_threads" in v else []),
                f"| `load_series` of the {v.get('series_files')} shuffled DICOM files (before) | "
                f"{v.get('load_series_s')} s | |",
                f"| peak RSS (VmHWM, whole process) | {v['peak_rss_mb']} MB | ≤ {vol['target']['peak_rss_mb']} MB |",
                f"| busy time: model / per-slice refinement / 3-D refinement | {t['predict']} s / {t['refine_2d']} s"
                f" / {t['refine_3d']} s | |",
                f"| probabilities kept | {v['probs_dtype']}, {v['probs_mb']} MB | |",
                f"| one-slice pipeline (`segment` per slice, {b['slices']} slices extrapolated to 300) | "
                f"{b['extrapolated_300_s']} s | |",
                f"| speed-up over the one-slice pipeline | {vol['speedup_vs_per_slice']}× | |", "",
                f"{vol['note']}. Load average (1, 5, 15 min) before/after the run: "
                f"{vol.get('load_average_before_after')} on {vol['cores']} cores (other jobs on the shared machine "
                f"inflate the times). Command: `{vol['command']}`.", ""]
    prop = load("propagate.json")
    if prop:
        methods = [m for m in ("interpolation", "fine_tune", "propagate", "propagate_with_fine_tuned_model")
                   if m in prop["mean_dice"]]
        label = {"interpolation": "shape interpolation", "fine_tune": "fine-tune only", "propagate": "propagate",
                 "propagate_with_fine_tuned_model": "propagate + fine-tuned model"}
        out += ["## Propagating 3 corrected slices to the lesion (real radiomics volumes)", "",
                "Three slices spread over each lesion are given (the ground truth, as a user's corrections); Dice "
                "is pooled over every other lesion slice. The volume is re-oriented along each axis where the "
                "lesion spans ≥ 5 slices (breast1 and lung1 span only 3 acquired slices). FP = voxels labelled on "
                "the two empty slices on each side of the lesion.", "",
                "| case | slicing axis | annotated | " + " | ".join(f"{label[m]} Dice (FP)" for m in methods)
                + " | gain propagate − interpolation | propagate Dice inside / outside the annotated range |",
                "|---|---|---|" + "---|" * len(methods) + "---|---|"]
        for r in prop["rows"]:
            cells = " | ".join(f"{r[m]['dice']:.4f} ({r[m]['neighbour_fp_px']})" for m in methods)
            pi, po = r["propagate"]["dice_inside_range"], r["propagate"]["dice_outside_range"]
            ii, io_ = r["interpolation"]["dice_inside_range"], r["interpolation"]["dice_outside_range"]
            out.append(f"| {r['case']} | {r['axis']} | {r['annotated']} | {cells} | "
                       f"{r['gain_propagate_vs_interpolation']:+.4f} | {pi} / {po} (interpolation {ii} / {io_}) |")
        out.append("| **mean** | | | " + " | ".join(f"**{prop['mean_dice'][m]:.4f}**" for m in methods)
                   + f" | **{prop['mean_gain_propagate_vs_interpolation']:+.4f}** | |")
        inside = [(r["propagate"]["dice_inside_range"], r["interpolation"]["dice_inside_range"]) for r in prop["rows"]
                  if r["propagate"]["dice_inside_range"] is not None]
        not_worse = sum(p >= i for p, i in inside)
        out += ["", f"Inside the annotated range propagate is at least as good as shape interpolation on {not_worse} of "
                f"{len(inside)} configurations (mean {np.mean([p - i for p, i in inside]):+.4f}, worst "
                f"{min(p - i for p, i in inside):+.4f}); outside it, interpolation gives nothing and propagate "
                "extrapolates while the image supports it."]
        out += ["", f"Target: mean gain ≥ +0.05 and no case below −0.02. Mean gain "
                f"{prop['mean_gain_propagate_vs_interpolation']:+.4f}, worst case "
                f"{prop['worst_gain_propagate_vs_interpolation']:+.4f}: "
                f"{'met' if prop['meets_target'] else 'not met'}.", ""]
        for e in prop.get("extrapolation_only", []):
            out.append(f"- {e['case']}, {e['axis']}: all lesion slices {e['annotated']} annotated; propagate labels "
                       f"{e['propagate_neighbour_fp_px']} voxels ({e['propagate_neighbour_fp_mm2']} mm²) on the empty "
                       "neighbour slices (interpolation: 0).")
        nc = prop.get("nuclei_check")
        if nc:
            out += ["", f"Second check on other data (stardist 3-D nuclei, the {len(nc['rows'])} nuclei spanning most "
                    f"slices, 1 mm voxels): mean Dice shape interpolation {nc['mean_interpolation']:.4f}, propagate "
                    f"{nc['mean_propagate']:.4f} (mean gain {nc['mean_gain']:+.4f}, worst {nc['worst_gain']:+.4f})."]
        out += ["", f"{prop.get('note', '')} Fine-tuning: {prop['fine_tune']}. Command: `{prop['command']}`.", ""]
    out += finetune_section(load("finetune.json"))
    out += finetune_seeds_section(load("finetune_seeds.json"))
    out += finetune_rerun_section(load("finetune_rerun.json"))
    (ROOT / "BENCHMARKS.md").write_text("\n".join(out))
    print("\n".join(out))


def scaling_sections() -> list[str]:
    """Compiled runtimes (bench/runtime.py) and batch segmentation on Ray (bench/batch.py), issue #17."""
    out: list[str] = []
    rt = load("runtime.json")
    if rt:
        out += ["## CPU runtimes: Keras vs OpenVINO vs ONNX Runtime", "",
                "The shipped U-Net, one forward pass per call as `segcore.infer.predict_batch` makes it, runtimes "
                f"interleaved in one process ({rt['rounds']} rounds, median ms per image; CPU flags "
                f"{', '.join(rt['cpu_flags']) or 'unknown'}).", "",
                "| runtime | " + " | ".join(f"{i} ms (× Keras)" for i in dict.fromkeys(r["input"] for r in rt["speed"]))
                + " | pixel agreement | mean fg Dice (Δ vs Keras) | max prob. diff | passes |",
                "|---|" + "---|" * (len({r["input"] for r in rt["speed"]}) + 4)]
        agree = {r["runtime"]: r for r in rt["agreement"]}
        for name in agree:
            cells = [f"{r['ms_per_image_median']} ({r['speedup_vs_keras']}×)" for r in rt["speed"]
                     if r["runtime"] == name]
            a = agree[name]
            out.append(f"| {name} | " + " | ".join(cells) + f" | {a['pixel_agreement'] * 100:.3f} % | "
                       f"{a['mean_fg_dice']:.4f} ({a['dice_diff_vs_keras']:+.4f}) | {a['max_prob_diff']} | "
                       f"{'yes' if a['passes'] else 'no'} |")
        out += ["", f"Bar: ≥ {rt['bar']['pixel_agreement_min'] * 100:.1f} % of argmax pixels equal to Keras and "
                f"|Δ Dice| ≤ {rt['bar']['abs_dice_diff_max']} on the {rt['agreement'][0]['n_images']} held-out "
                f"phantom test images. Command: `{rt['command']}`.", ""]
    bt = load("batch.json")
    if bt:
        out += ["## Batch segmentation (python -m segcore predict)", "",
                f"{bt['scans']} scans ({bt['input']['images_256']} phantom PNGs at 256², volumes "
                f"{', '.join(bt['input']['volumes'])}, {bt['input']['corrupt']} corrupt files), refinement on, "
                f"{bt['cpus']} CPU cores. Each run is a fresh `python -m segcore predict` process into a fresh "
                "folder.", "",
                "| engine | workers | runtime | wall s | scans/s (steady) | × local (steady) | failed | "
                "identical to local |", "|---|---|---|---|---|---|---|---|"]
        for r in bt["runs"]:
            same = "yes" if r["identical_to_local"] else f"no ({r['label_maps_differing']} maps differ)"
            out.append(f"| {r['engine']} | {r['workers']} | {r['runtime']} | {r['wall_s']} | {r['scans_per_s']} | "
                       f"{r['speedup_vs_local_rate']}× | {r['failed']} | {same} |")
        out += ["", "Recovery (2 Ray workers):", "",
                "| killed | scans done at kill | run finished by itself | rerun: segmented / skipped | "
                "all recorded | label maps identical to the uninterrupted run |", "|---|---|---|---|---|---|"]
        for k in bt["recovery"]:
            out.append(f"| {'one Ray worker' if k['mode'] == 'worker' else 'the driver (crash)'} | "
                       f"{k['manifests_at_kill']} | {'yes' if k['completed_without_rerun'] else 'no'} | "
                       f"{k['rerun_processed']} / {k['rerun_skipped']} | {'yes' if k['all_scans_recorded'] else 'no'}"
                       f" | {'yes' if k['identical_to_uninterrupted'] else 'no'} ({k['label_maps']} maps) |")
        out += ["", f"{bt['note']}. Command: `{bt['command']}`.", ""]
    return out


def finetune_seeds_section(sd) -> list[str]:
    """The defaults and the best manual cell over the same seeds (bench/finetune.py --seeds)."""
    if not sd:
        return []
    seeds = ", ".join(map(str, sd["seeds"]))
    runs = sd.get("runs") or [{"seeds": sd["seeds"], "commit": sd["commit"], "command": sd["command"]}]
    when = "; ".join(f"seeds {', '.join(map(str, r['seeds']))} at {r['commit']}" for r in runs)
    out = ["", f"### Seed-averaged comparison ({when}; `adapt` unchanged between them)", "",
           ("One run per case picks the best of 9 grid cells by its test Dice, which favours the grid by the "
            "run-to-run noise (the seed changes the hold-out split, the crops and the augmentation). Here the "
            "defaults and the best cell are each trained with the same seeds and compared by their means over the "
            "seeds the pick did not see (seed 0 of the best cell is the grid's own run: shown, not compared). "
            ), "",
           f"| case | corrections | best cell | default Dice, seeds {seeds} | best cell Dice, seeds {seeds} | "
           "compared seeds | default mean | best cell mean | gap of means | within 0.02 | default time |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in sd["cases"]:
        d, m, b = c["default"], c["manual"], c["best_cell"]
        dd, mm = (", ".join(f"{r['dice']:.4f}" for r in rows) for rows in (d, m))
        out.append(f"| {c['case']} | {c['n_corrections']} | {b['epochs']} ep, {b['learning_rate']:g} | "
                   f"{dd} | {mm} | {', '.join(map(str, c['compared_seeds']))} | {c['default_mean']:.4f} | "
                   f"{c['manual_mean']:.4f} | {c['gap_of_means']:+.4f} | {'yes' if c['within_0.02'] else 'no'} | "
                   f"{min(r['seconds'] for r in d)}–{max(r['seconds'] for r in d)} s |")
    n_ok = sum(c["within_0.02"] for c in sd["cases"])
    cmds = ", then ".join(f"`{r['command']}`" for r in runs)
    return out + ["", f"Within 0.02 by the means: {n_ok} of {len(sd['cases'])} cases. Commands: {cmds}.", ""]


def finetune_rerun_section(rr) -> list[str]:
    """A later run of the defaults alone (same grid), to show the run-to-run spread."""
    if not rr:
        return []
    out = ["", f"### Defaults measured again (commit {rr.get('commit', '?')})", "",
           "| case | corrections | default Dice | default time | steps | best manual Dice | gap | within 0.02 |",
           "|---|---|---|---|---|---|---|---|"]
    for c in rr["cases"]:
        d = c["default"]
        out.append(f"| {c['case']} | {c['n_corrections']} | {d['dice']:.4f} | {d['seconds']} s | {d['steps']} | "
                   f"{c['best_manual']['dice']:.4f} | {c['gap']:+.4f} | {'yes' if c['within_0.02'] else 'no'} |")
    if rr.get("repeats"):
        rp = rr["repeats"]
        dd, mm = [r["dice"] for r in rp["default"]], [r["dice"] for r in rp["manual_90_epochs_lr_1e-3"]]
        out += ["", f"Repeated runs of {rp['case']} with {rp['n_corrections']} corrections ({rp['note']}):", "",
                "| | runs | Dice | mean | time per run |", "|---|---|---|---|---|",
                f"| default | {len(dd)} | {', '.join(f'{v:.4f}' for v in dd)} | {sum(dd) / len(dd):.4f} | "
                f"{min(r['seconds'] for r in rp['default'])}–{max(r['seconds'] for r in rp['default'])} s |",
                f"| best manual cell (90 epochs, 1e-3) | {len(mm)} | {', '.join(f'{v:.4f}' for v in mm)} | "
                f"{sum(mm) / len(mm):.4f} | {min(r['seconds'] for r in rp['manual_90_epochs_lr_1e-3'])}–"
                f"{max(r['seconds'] for r in rp['manual_90_epochs_lr_1e-3'])} s |"]
        if rp.get("default_crop_96_not_adopted"):
            cc = rp["default_crop_96_not_adopted"]
            dice = ", ".join(f"{r['dice']:.4f}" for r in cc)
            out.append(f"| default with 96 px crops (tried, not adopted: {cc[0]['steps']}–{cc[-1]['steps']} steps) | "
                       f"{len(cc)} | {dice} | "
                       f"{sum(r['dice'] for r in cc) / len(cc):.4f} | {min(r['seconds'] for r in cc)}–"
                       f"{max(r['seconds'] for r in cc)} s |")
        tried = rp.get("tried_later")
        if tried:
            best = next(c["best_manual"]["dice"] for c in rr["cases"]
                        if c["case"] == rp["case"] and c["n_corrections"] == rp["n_corrections"])
            out += ["", f"Settings tried later (commit {tried['commit']}): {tried['note']}.", "",
                    f"| setting | seeds | Dice | mean | within 0.02 of {best:.4f} | time per run |",
                    "|---|---|---|---|---|---|"]
            for row in tried["rows"]:
                dice = row["dice"]
                out.append(f"| {row['setting']} | {', '.join(map(str, row['seeds']))} | "
                           f"{', '.join(f'{v:.4f}' for v in dice)} | {sum(dice) / len(dice):.4f} | "
                           f"{sum(v >= best - 0.02 for v in dice)} of {len(dice)} | "
                           f"{min(row['seconds'])}–{max(row['seconds'])} s |")
            if tried.get("brain1_8"):
                b8 = tried["brain1_8"]
                boost, plain = b8["final_lr_boost"], b8["no_boost"]
                out += ["", f"{b8['note']}: with the final-run boost {', '.join(f'{v:.4f}' for v in boost)} "
                            f"(mean {sum(boost) / len(boost):.4f}), without it {', '.join(f'{v:.4f}' for v in plain)} "
                            f"(mean {sum(plain) / len(plain):.4f})."]
            out += [""] + [f"- {row['setting']}, not adopted: {row['not_adopted']}." for row in tried["rows"]
                           if row.get("not_adopted")] + [f"- {line}." for line in tried.get("other", [])]
    return out + ["", f"{rr.get('load_note', '')} Command: `{rr['command']}`.", ""]


def finetune_section(ft) -> list[str]:
    """Fine-tuning on real data: adapt() defaults vs the best manual grid cell, per case (bench/finetune.py)."""
    if not ft:
        return []
    out = ["## Fine-tuning on real data: automatic defaults vs the best manual setting", "",
           ("`segcore.finetune.adapt` with `FineTuneSettings()` (a hold-out / leave-one-out run watches held-out "
            "Dice; the early-stopping point is used only if Dice then falls after training settled, by more than "
            "the curve's own noise, otherwise that run's model goes on with all corrections for the rest of the "
            "50 s time budget; half the crops drawn from corrections with foreground and centred on it; "
            "warm-up + cosine, "
            "decoder/head peak 3e-3 below 4 corrections and 1e-3 from 4 out of domain (2e-3 in the final run), "
            "2e-4 in domain, encoder 0.3×; "
            "replay only in domain) against a grid of manual settings (epochs × peak learning rate, same "
            "augmentation, trained on all corrections) on real scans never seen by the shipped model. Starting "
            "point: the shipped U-Net retargeted to the case's classes. Dice = foreground Dice pooled over the test "
            "slices (other slices of the same scan, never trained on) at the model's 256×256 input. The best manual "
            "cell is picked by its TEST Dice, so it is an optimistic upper bound; it sits at the grid's longest "
            "training in every case. 'Previous app default' is `segcore.train.fine_tune` with 5 epochs at 1e-4. "
            "Target: default within 0.02 of the best manual cell, ≤ 60 s for 8 "
            "corrections."), "",
           ("| case | corrections | test slices | Dice before | previous app default (5 ep, 1e-4) | **default** Dice "
            "| default time | default chose | best manual (epochs, lr) | best manual Dice | gap | within 0.02 |"),
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ft["cases"]:
        d, b, p = r["default"], r["best_manual"], r["previous_default"]
        chose = f"{d['epochs']:g} ep ({d['steps']} steps), lr {d['learning_rate']:g}, replay {'on' if d['replay'] else 'off'}"
        out.append(f"| {r['case']} | {r['n_corrections']} | {len(r['test_slices'])} | {r['dice_before']:.4f} | "
                   f"{p['dice']:.4f} ({p['seconds']} s) | **{d['dice']:.4f}** | {d['seconds']} s | {chose} | "
                   f"{b['epochs']}, {b['learning_rate']:g} | {b['dice']:.4f} ({b['seconds']} s) | {r['gap']:+.4f} | "
                   f"{'yes' if r['within_0.02'] else 'no'} |")
    for key, what in (("same_code_runs", "Another run of this code"), ("earlier_runs", "Earlier runs"),
                      ("previous_code", "Previous code")):
        if not ft.get(key):
            continue
        pc = ft[key]
        out += ["", f"{what} ({pc['note']}): default Dice per case in its runs, best manual Dice of its grid.",
                "", "| case | corrections | default Dice (runs) | default time (runs) | best manual Dice |",
                "|---|---|---|---|---|"]
        for r in pc["cases"]:
            out.append(f"| {r['case']} | {r['n_corrections']} | {' / '.join(f'{d:.4f}' for d in r['dice'])} | "
                       f"{' / '.join(f'{t} s' for t in r['seconds'])} | {r['best_manual']:.4f} |")
    if ft.get("gate"):
        out += ["", ("Promotion gate. The 8 corrections of each case fine-tuned again keeping the shipped class set "
                     "(nuclei as `organ`, lesions as `lesion`) by a real fine-tune job (`segcore.jobs`), which "
                     "evaluates candidate and shipped model on the 30 phantom test images + the case's test slices "
                     "and stores the metrics with the version; `Workspace.gate` decides. The in-domain row uses 8 "
                     "corrected phantom validation images (8 more held out)."), "",
                ("| case | domain Dice → replay, lr | case test Dice: candidate / shipped | phantom test Dice: "
                 "candidate / shipped | gate held-out: candidate / shipped | promotable | job time |"),
                "|---|---|---|---|---|---|---|"]
        for g in ft["gate"]:
            out.append(f"| {g['case']} | {g['domain_dice']:.3f} → {'on' if g['replay'] else 'off'}, "
                       f"{g['learning_rate']:g} | {g['case_test_dice_candidate']:.4f} / "
                       f"{g['case_test_dice_shipped']:.4f} | {g['phantom_test_dice_candidate']:.4f} / "
                       f"{g['phantom_test_dice_shipped']:.4f} | {g['gate_held_out_candidate']:.4f} / "
                       f"{g['gate_held_out_shipped']:.4f} | {'yes' if g['gate_passed'] else 'no (refused)'} | "
                       f"{g['job_seconds']} s |")
        out += ["", ("With the shipped classes the case test Dice is the mean over organ and lesion, and a class "
                     "absent from both truth and prediction scores 1, so it is not comparable with the table above.")]
        if ft.get("gate_source"):
            out += ["", f"Gate rows: {ft['gate_source']}."]
    out += ["", (f"{ft['note']} Grid: epochs {ft['grid']['epochs']} × lr {ft['grid']['learning_rates']} "
                 f"({ft.get('grid_source', 'measured in this run')}). Command: `{ft['command']}`."
                 + (f" {ft['load_note'].capitalize()}." if ft.get("load_note") else "")), ""]
    return out


if __name__ == "__main__":
    main()
