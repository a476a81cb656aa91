"""Choose the refinement defaults on the validation split, then report them on the test split.

Grid over the dense CRF's appearance kernel (segcore's CRF) and the morphology steps, scored by mean
foreground Dice of the default model's refined masks on sample_data/phantom/val. The CRF sees exactly what it
sees in the app and the CLI: the slice as the model normalises it (segcore.pipeline.model_view). The chosen values become
RefineConfig's defaults (the app's sliders start there); the test-split figures go to
bench/results/refine.json, with pydensecrf run on the same chosen parameters as the peer.

    .venv/bin/python bench/tune_refine.py
"""

import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def load(split, model, config):
    """Per image: what the CRF sees (segcore.pipeline.model_view), the model's probabilities, the ground truth."""
    from segcore.labels import load_gt_pairs
    from segcore.pipeline import model_view, predict

    _, masks, scans = load_gt_pairs(ROOT / "sample_data" / "phantom" / split)
    preds = [predict(s, model, config) for s in scans]
    return [model_view(p.image, config) for p in preds], [p.probs for p in preds], masks


TIE = 0.0005  # mean foreground Dice on the 20 validation images: differences below this are not a reason to change


def score(disp, probs, gts, cfg, k=3):
    from segcore.metrics import dice
    from segcore.refine import Refiner

    r = Refiner(cfg)
    return float(np.mean([dice(r.run(d, p).labels, g, k)[1:].mean() for d, p, g in zip(disp, probs, gts)]))


def main():
    import dataclasses

    from crf import pydensecrf_run
    from segcore.metrics import dice
    from segcore.models import load_model
    from segcore.refine import RefineConfig

    model, config = load_model(ROOT / "sample_data" / "models" / "default")
    vd, vp, vg = load("val", model, config)
    base = RefineConfig()
    off = {s: False for s in base.enabled}
    raw_val = score(vd, vp, vg, dataclasses.replace(base, enabled=off))
    best = (raw_val, None)
    trials = []
    for sxy, srgb, wb in itertools.product((20, 50, 80), (5, 13), (1, 3, 5, 10)):
        crf = {**base.crf, "sxy_bilateral": sxy, "srgb": srgb, "compat_bilateral": wb}
        cfg = dataclasses.replace(base, enabled={**off, "crf": True}, crf=crf)
        s = score(vd, vp, vg, cfg)
        trials.append({"sxy_bilateral": sxy, "srgb": srgb, "compat_bilateral": wb, "val_dice": round(s, 4)})
        if s > best[0]:
            best = (s, crf)
    crf = best[1] or base.crf
    crf_on = best[1] is not None
    morph = []
    for op, cl, fill, small in itertools.product((0, 3), (0, 5), (False, True), (0, 10, 30)):
        cfg = dataclasses.replace(base, enabled={"crf": crf_on, "open": op > 0, "close": cl > 0, "fill_holes": fill,
                                                 "remove_small": small > 0, "keep_largest": False},
                                  open_size=max(op, 1), close_size=max(cl, 1), min_size=float(small), crf=crf)
        morph.append((score(vd, vp, vg, cfg), cfg))
    best_val, chosen = max(morph, key=lambda t: t[0])
    # the current defaults stay unless the grid beats them on validation by more than noise
    default_val = score(vd, vp, vg, base)
    keep_defaults = best_val - default_val <= TIE
    if keep_defaults:
        best_val, chosen = default_val, base
    td, tp, tg = load("test", model, config)
    raw_test = score(td, tp, tg, dataclasses.replace(base, enabled=off))
    test_chosen = score(td, tp, tg, chosen)
    crf_only = dataclasses.replace(base, enabled={**off, "crf": True}, crf=crf)
    test_crf = score(td, tp, tg, crf_only)
    peer = float(np.mean([dice(pydensecrf_run(d, p, {**crf}).argmax(-1), g, 3)[1:].mean()
                          for d, p, g in zip(td, tp, tg)]))
    res = {"val_raw": round(raw_val, 4), "val_best_crf": round(best[0], 4), "val_best_pipeline": round(best_val, 4),
           "val_current_defaults": round(default_val, 4), "kept_current_defaults": keep_defaults,
           "chosen": {"enabled": chosen.enabled, "open_size": chosen.open_size, "close_size": chosen.close_size,
                      "min_size": chosen.min_size, "crf": chosen.crf},
           "test_raw": round(raw_test, 4), "test_crf_only": round(test_crf, 4),
           "test_pydensecrf_same_params": round(peer, 4), "test_pipeline": round(test_chosen, 4),
           "test_gain_crf": round(test_crf - raw_test, 4), "test_gain_pydensecrf": round(peer - raw_test, 4),
           "test_gain_pipeline": round(test_chosen - raw_test, 4), "crf_grid": trials,
           "command": ".venv/bin/python bench/tune_refine.py"}
    print(json.dumps({k: v for k, v in res.items() if k != "crf_grid"}, indent=1))
    (ROOT / "bench" / "results" / "refine.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
