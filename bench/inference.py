"""Default-model inference speed: one 512x512 scan end to end, and batch throughput at 256x256.

    .venv/bin/python bench/inference.py      # writes bench/results/inference.json
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(runs=50):
    from segcore.infer import predict_batch, predict_proba
    from segcore.io import load_scan
    from segcore.models import load_model

    model, config = load_model(ROOT / "sample_data" / "models" / "default")
    scan = load_scan(ROOT / "sample_data" / "demo" / "phantom_ct_512.dcm")
    img = scan.slice()
    for _ in range(3):
        predict_proba(model, img, config)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = predict_proba(model, img, config)
        ts.append((time.perf_counter() - t0) * 1000)
    assert p.shape == (512, 512, config.num_classes)
    imgs256 = [load_scan(p).slice() for p in sorted((ROOT / "sample_data/phantom/test/images").glob("*.png"))]
    imgs256 = (imgs256 * 4)[:96]
    predict_batch(model, imgs256[:16], config, batch_size=16)
    t0 = time.perf_counter()
    predict_batch(model, imgs256, config, batch_size=16)
    thr = len(imgs256) / (time.perf_counter() - t0)
    cfg_metrics = config.metrics
    res = {
        "single_512_ms_median": round(statistics.median(ts), 1),
        "single_512_ms_p90": round(float(np.percentile(ts, 90)), 1),
        "runs": runs,
        "note": "512x512 DICOM -> normalise, resize to the model's 256x256, U-Net, probabilities resized back",
        "batch_256_images_per_s": round(thr, 1),
        "batch_images": len(imgs256),
        "train_seconds_per_epoch": cfg_metrics.get("seconds_per_epoch"),
        "train_total_seconds": cfg_metrics.get("train_seconds"),
        "params": int(model.count_params()),
        "command": ".venv/bin/python bench/inference.py",
    }
    print(res)
    (ROOT / "bench" / "results" / "inference.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
