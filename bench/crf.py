"""Dense CRF benchmark: segcore.refine.dense_crf vs pydensecrf (the peer), same run, same inputs.

Speed: median wall time over repeated runs at 256² and 512², 2 classes, 5 iterations, DeepLab parameters.
Quality: on the sample test set with the default model's probabilities, mean foreground Dice raw /
segcore CRF / pydensecrf and each CRF's gain.

    .venv/bin/python bench/crf.py            # writes bench/results/crf.json
"""

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARAMS = dict(iterations=5, sxy_gaussian=3, compat_gaussian=3, sxy_bilateral=80, srgb=13, compat_bilateral=10)


def pydensecrf_run(img_u8, probs, p=PARAMS):
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    h, w, k = probs.shape
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.transpose(2, 0, 1))))
    d.addPairwiseGaussian(sxy=p["sxy_gaussian"], compat=p["compat_gaussian"])
    rgb = np.ascontiguousarray(np.repeat(img_u8[..., None], 3, -1))
    d.addPairwiseBilateral(sxy=p["sxy_bilateral"], srgb=p["srgb"], rgbim=rgb, compat=p["compat_bilateral"])
    return np.array(d.inference(p["iterations"])).reshape(k, h, w).transpose(1, 2, 0)


def timed(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000


def speed(repeats=15):
    import cv2

    from segcore.io import window
    from segcore.phantom import make_phantom
    from segcore.refine import dense_crf

    rows = []
    for size in (256, 512):
        hu, lab = make_phantom(123, size)
        lab = (lab > 0).astype(np.uint8)
        img = window(hu, 40, 400)
        rng = np.random.default_rng(0)
        logits = np.eye(2)[lab] * 2.0 + cv2.GaussianBlur(rng.standard_normal((size, size, 2)).astype(np.float32),
                                                         (0, 0), 2) * 2
        probs = np.exp(logits)
        probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
        # interleave to share machine noise
        ours = timed(lambda: dense_crf(img, probs, **PARAMS), repeats)
        peer = timed(lambda: pydensecrf_run(img, probs), repeats)
        rows.append({"size": size, "classes": 2, "iterations": 5, "segcore_ms": round(ours, 1),
                     "pydensecrf_ms": round(peer, 1), "speedup": round(peer / ours, 2)})
        print(rows[-1], flush=True)
    return rows


def quality():
    from segcore.infer import predict_batch
    from segcore.labels import load_gt_pairs
    from segcore.metrics import dice
    from segcore.models import load_model
    from segcore.pipeline import model_view
    from segcore.refine import dense_crf

    model, config = load_model(ROOT / "sample_data" / "models" / "default")
    scans, gts, _ = load_gt_pairs(ROOT / "sample_data" / "phantom" / "test")
    probs = predict_batch(model, scans, config)
    k = config.num_classes
    raw, ours, peer = [], [], []
    for s, p, g in zip(scans, probs, gts):
        disp = model_view(s, config)  # what the pipeline's CRF sees
        raw.append(dice(p.argmax(-1), g, k))
        ours.append(dice(dense_crf(disp, p, **PARAMS).argmax(-1), g, k))
        peer.append(dice(pydensecrf_run(disp, p).argmax(-1), g, k))
    raw, ours, peer = (np.array(x) for x in (raw, ours, peer))
    out = {"n_images": len(scans), "class_names": list(config.class_names)}
    for name, arr in (("raw", raw), ("segcore_crf", ours), ("pydensecrf", peer)):
        out[name] = {"mean_foreground_dice": round(float(arr[:, 1:].mean()), 4),
                     "per_class_dice": [round(float(v), 4) for v in arr.mean(0)]}
    out["gain_segcore"] = round(out["segcore_crf"]["mean_foreground_dice"] - out["raw"]["mean_foreground_dice"], 4)
    out["gain_pydensecrf"] = round(out["pydensecrf"]["mean_foreground_dice"] - out["raw"]["mean_foreground_dice"], 4)
    out["gain_difference"] = round(out["gain_segcore"] - out["gain_pydensecrf"], 4)
    print(out, flush=True)
    return out


if __name__ == "__main__":
    res = {"machine": f"{platform.machine()} {platform.processor() or ''} cpus={__import__('os').cpu_count()}",
           "params": PARAMS, "speed": speed(), "quality": quality(),
           "command": ".venv/bin/python bench/crf.py"}
    out = ROOT / "bench" / "results" / "crf.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
