"""Keras vs compiled CPU runtimes (OpenVINO f32/bf16, ONNX Runtime) on the shipped U-Net: speed and agreement.

    flock /tmp/segcore-cpu.lock .venv/bin/python bench/runtime.py

Speed: one forward pass of a ``1,S,S,1`` batch (S = 256, 512) and of an ``8,256,256,1`` batch, each runtime called
the way :func:`segcore.infer.predict_batch` calls the model, interleaved round-robin so that machine noise is
shared; median and p90 over ``--rounds`` rounds after warm-up. Agreement: argmax masks of each runtime vs Keras
on the held-out phantom test set (pixel agreement, mean foreground Dice against ground truth, and the difference),
and the largest probability difference. Writes bench/results/runtime.json.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNTIMES = ("keras", "openvino-f32", "openvino-bf16", "onnxruntime-f32")


def _predictors(model_dir):
    from segcore.runtime import RuntimeSpec, compiled_predictor, load_predictor

    _, model, config = load_predictor(model_dir, "keras")
    preds = {"keras": model}
    for label in RUNTIMES[1:]:
        p = compiled_predictor(model, model_dir, RuntimeSpec.parse(label)).load()
        if p.active != label:
            raise SystemExit(f"{label} did not load: {p.fallback_reason}")
        preds[label] = p
    return model, config, preds


def _speed(preds, rounds: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for shape in ((1, 256, 256, 1), (1, 512, 512, 1), (8, 256, 256, 1)):
        x = rng.random(shape, dtype=np.float32)
        for p in preds.values():  # warm-up (first calls compile/allocate)
            for _ in range(3):
                np.asarray(p(x, training=False))
        times = {k: [] for k in preds}
        for _ in range(rounds):
            for k, p in preds.items():
                t0 = time.perf_counter()
                np.asarray(p(x, training=False))
                times[k].append((time.perf_counter() - t0) * 1000 / shape[0])
        base = float(np.median(times["keras"]))
        for k, ts in times.items():
            rows.append({"input": f"{shape[0]}x{shape[1]}x{shape[2]}", "runtime": k,
                         "ms_per_image_median": round(float(np.median(ts)), 2),
                         "ms_per_image_p90": round(float(np.percentile(ts, 90)), 2),
                         "speedup_vs_keras": round(base / float(np.median(ts)), 2)})
    return rows


def _agreement(model_dir, config, preds) -> list[dict]:
    from segcore import metrics
    from segcore.data import list_pairs, load_mask
    from segcore.infer import predict_batch
    from segcore.io import load_scan

    imgs, masks = list_pairs(ROOT / "sample_data/phantom/test")
    images = [load_scan(p).slice() for p in imgs]
    gts = [load_mask(p) for p in masks]
    k = config.num_classes
    probs = {name: predict_batch(p, images, config) for name, p in preds.items()}
    ref = [p.argmax(-1) for p in probs["keras"]]
    ref_dice = float(np.mean([metrics.dice(r, g, k)[1:].mean() for r, g in zip(ref, gts)]))
    rows = []
    for name, ps in probs.items():
        lab = [p.argmax(-1) for p in ps]
        dice = float(np.mean([metrics.dice(m, g, k)[1:].mean() for m, g in zip(lab, gts)]))
        rows.append({"runtime": name, "n_images": len(images),
                     "pixel_agreement": round(float(np.mean([(a == b).mean() for a, b in zip(lab, ref)])), 6),
                     "min_image_agreement": round(float(min((a == b).mean() for a, b in zip(lab, ref))), 6),
                     "mean_fg_dice": round(dice, 5), "dice_diff_vs_keras": round(dice - ref_dice, 5),
                     "max_prob_diff": round(float(max(np.abs(a - b).max() for a, b in zip(ps, probs["keras"]))), 5)})
    return rows


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "sample_data/models/default"))
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench/results/runtime.json"))
    args = ap.parse_args()
    import onnxruntime
    import openvino

    t0 = time.perf_counter()
    _model, config, preds = _predictors(args.model)
    export_s = round(time.perf_counter() - t0, 1)
    speed = _speed(preds, args.rounds)
    agree = _agreement(args.model, config, preds)
    bar = {"pixel_agreement_min": 0.999, "abs_dice_diff_max": 0.001}
    for r in agree:
        r["passes"] = r["pixel_agreement"] >= bar["pixel_agreement_min"] and abs(
            r["dice_diff_vs_keras"]) <= bar["abs_dice_diff_max"]
    out = {"command": "flock /tmp/segcore-cpu.lock .venv/bin/python bench/runtime.py", "machine": platform.platform(),
           "cpu_flags": _cpu_flags(), "versions": {"openvino": openvino.__version__,
                                                   "onnxruntime": onnxruntime.__version__},
           "rounds": args.rounds, "load_or_export_seconds": export_s, "speed": speed, "agreement": agree,
           "bar": bar,
           "note": "ms per image for one forward pass (batch 1 at 256² and 512², batch 8 at 256²), runtimes "
                   "interleaved in the same process; agreement of argmax masks with Keras on the 30 held-out "
                   "phantom test images through segcore.infer.predict_batch"}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
