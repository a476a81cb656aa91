"""Instance segmentation on the held-out instance set: Mask R-CNN vs semantic U-Net + components + watershed.

Mask AP50 and AP50:95 with pycocotools (the COCO reference implementation), and the recall (IoU >= 0.5) of
objects that touch or overlap another object. The classical baseline's U-Net is trained here, in the same run,
on the same training split (seeded).

    .venv/bin/python bench/instances.py     # writes bench/results/instances.json
"""

import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def coco_eval(gt_ids, preds):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    import pycocotools.mask as mu

    images, anns, dets = [], [], []
    aid = 1
    for i, ids in enumerate(gt_ids, 1):
        h, w = ids.shape
        images.append({"id": i, "height": h, "width": w})
        for j in range(1, int(ids.max()) + 1):
            m = np.asfortranarray((ids == j).astype(np.uint8))
            rle = mu.encode(m)
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": aid, "image_id": i, "category_id": 1, "iscrowd": 0, "segmentation": rle,
                         "area": float(m.sum()), "bbox": list(mu.toBbox(rle))})
            aid += 1
        for m, s in zip(preds[i - 1]["masks"], preds[i - 1]["scores"]):
            rle = mu.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            dets.append({"image_id": i, "category_id": 1, "segmentation": rle, "score": float(s)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]}
    gt.createIndex()
    if not dets:
        return 0.0, 0.0
    dt = gt.loadRes(dets)
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0])


def touching_recall(gt_ids, preds):
    found = total = 0
    for ids, p in zip(gt_ids, preds):
        for j in range(1, int(ids.max()) + 1):
            g = ids == j
            ring = cv2.dilate(g.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~g
            if not ((ids[ring] > 0) & (ids[ring] != j)).any():
                continue  # isolated object
            total += 1
            ious = [(g & m).sum() / max((g | m).sum(), 1) for m in p["masks"]]
            found += max(ious, default=0.0) >= 0.5
    return found / max(total, 1), total


def classical(train_imgs, train_ids, test_imgs, seed=0):
    import keras

    from segcore.data import make_dataset
    from segcore.models import ModelConfig, build_unet
    from segcore.train import train

    keras.utils.set_random_seed(seed)
    cfg = ModelConfig(num_classes=2, class_names=("background", "lesion"), input_size=(128, 128))
    x = np.stack(train_imgs)[..., None].astype(np.float32)
    y = (np.stack(train_ids) > 0).astype(np.uint8)
    ds = make_dataset(x, y, cfg, batch_size=8, shuffle=True, augment_data=True, repeat=True, seed=seed)
    model = build_unet((None, None, 1), 2, base_filters=16, depth=3, batch_norm=False)
    t0 = time.perf_counter()
    train(model, ds, None, num_classes=2, epochs=30, steps_per_epoch=20, learning_rate=2e-3)
    seconds = time.perf_counter() - t0
    preds = []
    probs = np.asarray(model.predict(np.stack(test_imgs)[..., None], verbose=0))[..., 1]
    for img, p in zip(test_imgs, probs):
        fg = (p >= 0.5).astype(np.uint8)
        dist = cv2.distanceTransform(fg, cv2.DIST_L2, 5)
        peaks = (dist == cv2.dilate(dist, np.ones((7, 7), np.uint8))) & (dist >= 2.0)
        n, markers = cv2.connectedComponents(peaks.astype(np.uint8))
        markers = markers + 1
        markers[(fg > 0) & (markers == 1)] = 0  # unknown: to be flooded
        rgb = cv2.cvtColor((img * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        ws = cv2.watershed(rgb, markers.astype(np.int32))
        masks, scores = [], []
        for lab in range(2, n + 1):
            m = (ws == lab) & (fg > 0)
            if m.sum() >= 15:
                masks.append(m)
                scores.append(float(p[m].mean()))
        preds.append({"masks": np.array(masks, bool).reshape(-1, *img.shape), "scores": np.array(scores)})
    return preds, seconds


def main():
    from segcore.instances.maskrcnn import MaskRCNN
    from segcore.instances.train import load_instance_split

    data = ROOT / "sample_data" / "instances"
    te_imgs, te_ids, _ = load_instance_split(data / "test")
    from segcore.instances.data import ensure_train_split

    tr_imgs, tr_ids, _ = load_instance_split(ensure_train_split(data))
    model = MaskRCNN.load(ROOT / "sample_data" / "models" / "maskrcnn")
    t0 = time.perf_counter()
    mr = [model.detect(im) for im in te_imgs]
    mr_ms = (time.perf_counter() - t0) / len(te_imgs) * 1000
    mr_ap50, mr_ap = coco_eval(te_ids, mr)
    mr_touch, n_touch = touching_recall(te_ids, mr)
    cl, cl_train_s = classical(tr_imgs, tr_ids, te_imgs)
    cl_ap50, cl_ap = coco_eval(te_ids, cl)
    cl_touch, _ = touching_recall(te_ids, cl)
    log = json.loads((ROOT / "sample_data" / "models" / "maskrcnn" / "train_log.json").read_text())
    res = {"n_test_images": len(te_imgs), "n_test_objects": int(sum(int(i.max()) for i in te_ids)),
           "n_touching_objects": n_touch,
           "maskrcnn": {"mask_AP50": round(mr_ap50, 4), "mask_AP50_95": round(mr_ap, 4),
                        "touching_recall_iou50": round(mr_touch, 4), "ms_per_image": round(mr_ms, 1),
                        "train_steps": log["steps"], "train_seconds": log["seconds"]},
           "unet_watershed": {"mask_AP50": round(cl_ap50, 4), "mask_AP50_95": round(cl_ap, 4),
                              "touching_recall_iou50": round(cl_touch, 4), "train_seconds": round(cl_train_s, 1)},
           "command": ".venv/bin/python bench/instances.py"}
    print(json.dumps(res, indent=1))
    (ROOT / "bench" / "results" / "instances.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
