"""Instance segmentation on whole images: compact Mask R-CNN vs the tuned classical pipeline, per data set.

Data sets (held-out parts only; see segcore/instances/datasets.py for the splits):

* ``phantoms``: the 40 committed 128x128 blob-phantom test images.
* ``phantom_scenes``: 4 large 512x512 phantom scenes (same object sizes, 100+ objects each).
* ``stardist``: the right part (columns 28-56) of all 31 slices of the real StarDist nuclei stack (61x29 each).
* ``stardist_strip``: the same 31 held-out parts side by side as one 61x899 image (no empty cells, whose
  zeros would distort the intensity normalisation and the Otsu threshold).

For each: mask AP50 and AP50:95 of whole-image ``MaskRCNN.detect`` (NumPy COCO AP, cross-checked with
pycocotools in the same run), of the *tiled evaluation* (the image cut into tiles of 128 model pixels, each
tile detected and scored as its own image against the ground truth cut the same way) where the image is
larger than one tile, and of the classical pipeline (Otsu or U-Net foreground, distance-transform seeds with
``min_distance`` and h-maxima, compact watershed) tuned by grid search on that data set's validation split
(phantoms: 20 new phantoms; StarDist: the left part of slices z < 8), next to the untuned default setting.
The U-Nets that give the probability foreground are trained here, in the same run, on the training splits.
Time per 512x512 image is measured on this machine's 2 cores (4 scenes, median of 3 passes).

    flock /tmp/segcore-cpu.lock .venv/bin/python bench/instances.py [--compare-model DIR]
    .venv/bin/python bench/instances.py --otsu-only --no-timing    # no training, no timing: no lock needed
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STARDIST = ROOT.parent / "shared" / "data" / "stardist"
if not STARDIST.is_dir():
    STARDIST = Path("/work/shared/data/stardist")
GRID = {"foreground": ["otsu", "probability"], "sigma": [0.0, 1.0, 2.0], "min_distance": [2, 3, 5, 7, 9],
        "h": [0.0, 0.5, 1.0, 2.0], "compactness": [0.0, 0.01, 0.1]}
UNTUNED = {"foreground": "probability", "sigma": 1.0, "min_distance": 3, "h": 0.0, "compactness": 0.0}


def r4(v):
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def tiles_of(sample, tile):
    """Non-overlapping tiles (the last row / column may be smaller) of a sample's image and ids."""
    h, w = sample.ids.shape
    out = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            out.append((np.asarray(sample.image)[y:y + tile, x:x + tile], sample.ids[y:y + tile, x:x + tile]))
    return out


def ap_both(gt, preds):
    from segcore.instances.evaluate import coco_mask_ap, mask_ap

    ours, ref = mask_ap(gt, preds), coco_mask_ap(gt, preds)
    return {"AP50": r4(ours["AP50"]), "AP50_95": r4(ours["AP50_95"]), "pycocotools_AP50": r4(ref["AP50"]),
            "pycocotools_AP50_95": r4(ref["AP50_95"]), "n_gt": ours["n_gt"],
            "n_detections": int(sum(len(p["scores"]) for p in preds))}


def eval_maskrcnn(model, samples, tiled: bool):
    out = {"whole": ap_both([s.ids for s in samples], [model.detect(s.image, pixel_scale=s.pixel_scale)
                                                        for s in samples])}
    if tiled:
        gt, preds = [], []
        for s in samples:
            tile = round(model.config.image_size / s.pixel_scale)
            for im, ids in tiles_of(s, tile):
                gt.append(ids)
                preds.append(model.detect(im, pixel_scale=s.pixel_scale))
        out["tiled"] = ap_both(gt, preds)
        out["tile_pixels"] = round(model.config.image_size / samples[0].pixel_scale)
        out["whole_minus_tiled_AP50"] = r4(out["whole"]["AP50"] - out["tiled"]["AP50"])
    return out


def train_unet(train_samples, seed=0, epochs=30):
    """Semantic foreground U-Net (base 16, depth 3) on normalised images, as the classical pipeline's foreground."""
    import keras

    from segcore.data import make_dataset
    from segcore.instances.preprocess import normalise_intensity, rescale
    from segcore.models import ModelConfig, build_unet
    from segcore.train import train

    keras.utils.set_random_seed(seed)
    xs, ys = [], []
    for s in train_samples:
        x = rescale(normalise_intensity(s.image), s.pixel_scale)
        y = rescale((s.ids > 0).astype(np.uint8), s.pixel_scale, labels=True)
        pad_h, pad_w = max(0, 128 - x.shape[0]), max(0, 128 - x.shape[1])
        xs.append(np.pad(x, ((0, pad_h), (0, pad_w)))[:128, :128])
        ys.append(np.pad(y, ((0, pad_h), (0, pad_w)))[:128, :128])
    cfg = ModelConfig(num_classes=2, class_names=("background", "object"), input_size=(128, 128))
    ds = make_dataset(np.stack(xs)[..., None].astype(np.float32), np.stack(ys), cfg, batch_size=8, shuffle=True,
                      augment_data=True, repeat=True, seed=seed)
    model = build_unet((None, None, 1), 2, base_filters=16, depth=3, batch_norm=False)
    t0 = time.perf_counter()
    train(model, ds, None, num_classes=2, epochs=epochs, steps_per_epoch=20, learning_rate=2e-3)
    return model, time.perf_counter() - t0


def unet_probability(unet, sample):
    from segcore.instances.preprocess import normalise_intensity, rescale

    x = rescale(normalise_intensity(sample.image), sample.pixel_scale)
    h, w = x.shape
    ph, pw = -(-h // 8) * 8, -(-w // 8) * 8
    xp = np.pad(x, ((0, ph - h), (0, pw - w)))
    p = np.asarray(unet.predict(xp[None, ..., None], verbose=0))[0, :h, :w, 1]
    return rescale(p, 1.0 / sample.pixel_scale)[: sample.ids.shape[0], : sample.ids.shape[1]]


def eval_classical(unet, val, tests: dict):
    from segcore.instances.classical import ClassicalConfig, classical_predict, tune_classical

    scale = val[0].pixel_scale
    base = ClassicalConfig(scale=1.0, min_size=max(4, int(10 / scale**2)))
    probs_val = None if unet is None else [unet_probability(unet, s) for s in val]
    t0 = time.perf_counter()
    best, table = tune_classical([s.image for s in val], [s.ids for s in val], GRID, probs_val, base)
    tune_s = time.perf_counter() - t0
    untuned = dataclasses.replace(base, **UNTUNED)
    out = {"chosen": {k: getattr(best, k) for k in GRID}, "grid": GRID, "n_settings": len(table),
           "val_AP50_best": max(r["AP50"] for r in table), "tune_seconds": round(tune_s, 1), "test": {}}
    for name, samples in tests.items():
        probs = [None if unet is None else unet_probability(unet, s) for s in samples]
        out["test"][name] = {
            "tuned": ap_both([s.ids for s in samples], [classical_predict(s.image, best, p)
                                                        for s, p in zip(samples, probs)]),
            "untuned": ap_both([s.ids for s in samples], [classical_predict(s.image, untuned, p)
                                                          for s, p in zip(samples, probs)])}
    return out


def timing_512(model, scenes):
    from segcore.instances.classical import classical_predict

    model.detect(scenes[0].image)  # warm-up (graph building)
    runs = []
    for _ in range(3):
        for s in scenes:
            t0 = time.perf_counter()
            model.detect(s.image)
            runs.append(time.perf_counter() - t0)
    cl = []
    for s in scenes:
        t0 = time.perf_counter()
        classical_predict(s.image)
        cl.append(time.perf_counter() - t0)
    return {"maskrcnn_ms_median": round(1000 * float(np.median(runs)), 1),
            "maskrcnn_ms_p90": round(1000 * float(np.percentile(runs, 90)), 1),
            "classical_otsu_ms_median": round(1000 * float(np.median(cl)), 1), "runs": len(runs)}


def main():
    import tensorflow as tf

    from segcore.instances.datasets import mosaic, phantom_samples, phantom_scenes, stardist_split
    from segcore.instances.maskrcnn import MaskRCNN
    from segcore.instances.preprocess import normalise_intensity

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "sample_data" / "models" / "maskrcnn"))
    ap.add_argument("--compare-model", default=None, help="also score this model folder (e.g. a previous version)")
    ap.add_argument("--compare-label", default=None, help="what --compare-model is (e.g. 'v1, git show REV:path')")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "instances.json"))
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny grid, 1-epoch U-Nets (not for results)")
    ap.add_argument("--otsu-only", action="store_true", help="classical baseline with Otsu foreground only "
                    "(no U-Net training)")
    ap.add_argument("--no-timing", action="store_true", help="skip the timed part (for runs outside the CPU lock)")
    args = ap.parse_args()
    if args.quick:
        GRID.update({"sigma": [1.0], "min_distance": [3], "h": [0.0], "compactness": [0.0]})
    tf.config.threading.set_intra_op_parallelism_threads(2)
    model = MaskRCNN.load(args.model)
    sd = stardist_split(STARDIST)
    tests = {"phantoms": phantom_samples("test"), "phantom_scenes": phantom_scenes(4),
             "stardist": sd["test"], "stardist_strip": [mosaic(sd["test"], len(sd["test"]), "strip")]}
    tiled = {"phantoms": False, "phantom_scenes": True, "stardist": False, "stardist_strip": True}
    res = {"datasets": {k: {"n_images": len(v), "image_size": list(v[0].ids.shape),
                            "n_objects": int(sum(s.n_objects for s in v)), "pixel_scale": v[0].pixel_scale}
                        for k, v in tests.items()}}
    res["maskrcnn"] = {k: eval_maskrcnn(model, v, tiled[k]) for k, v in tests.items()}
    res["maskrcnn"]["config"] = {"anchor_sizes": model.config.anchor_sizes,
                                 "anchor_object_range": model.config.anchor_object_range,
                                 "object_diameter_range": model.config.object_diameter_range,
                                 "tile_size": model.config.tile_size, "tile_overlap": model.config.tile_overlap,
                                 "max_detections": model.config.max_detections}
    if args.compare_model:
        other = MaskRCNN.load(args.compare_model)
        note = "as configured"
        if other.config.normalisation == "none":  # a model trained on [0, 1] phantoms: give it that scale
            note = "phantoms scaled /255 as it was trained; other images percentile-normalised"
            tests_other = {k: [dataclasses.replace(s, image=np.asarray(s.image, np.float32) / 255.0
                                                   if s.group.startswith("phantom") else normalise_intensity(s.image))
                               for s in v] for k, v in tests.items()}
        else:
            tests_other = tests
        res["compare_model"] = {"path": args.compare_model, "label": args.compare_label, "input": note,
                                **{k: eval_maskrcnn(other, v, False)["whole"] for k, v in tests_other.items()}}
    epochs = 1 if args.quick else 30
    if args.otsu_only:
        GRID["foreground"] = ["otsu"]
        UNTUNED["foreground"] = "otsu"
        ph_unet = sd_unet = None
        ph_s = sd_s = 0.0
    else:
        ph_unet, ph_s = train_unet(phantom_samples("train"), epochs=epochs)
        sd_unet, sd_s = train_unet(sd["train"], epochs=epochs)
    res["classical"] = {
        "phantoms": eval_classical(ph_unet, phantom_samples("val"),
                                   {"phantoms": tests["phantoms"], "phantom_scenes": tests["phantom_scenes"]}),
        "stardist": eval_classical(sd_unet, sd["val"],
                                   {"stardist": tests["stardist"], "stardist_strip": tests["stardist_strip"]}),
        "unet_train_seconds": {"phantoms": round(ph_s, 1), "stardist": round(sd_s, 1)}}
    res["timing_512"] = None if args.no_timing else timing_512(model, tests["phantom_scenes"])
    heavy = not (args.otsu_only and args.no_timing)  # trains U-Nets or times: run under the CPU lock
    res["command"] = ("flock /tmp/segcore-cpu.lock " if heavy else "") + ".venv/bin/python bench/instances.py" + "".join(
        f" {flag}" for flag, on in (("--otsu-only", args.otsu_only), ("--no-timing", args.no_timing)) if on) + (
        f" --compare-model {args.compare_model}" if args.compare_model else "")
    res["model"] = {"path": args.model, "train_log": json.loads((Path(args.model) / "train_log.json").read_text())
                    .get("best")}
    text = json.dumps(res, indent=1)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
