"""Export a review session: label maps (PNG, NIfTI), COCO JSON with RLE, a verdict CSV and an HTML report.

Volume cases (3-D masks) export a NIfTI label volume per verdict on the scan's affine, and a DICOM SEG when the
scan is a DICOM series (see :mod:`segcore.dicomseg`); COCO annotations are for 2-D cases only.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import json
import zipfile
from typing import Sequence

import numpy as np

from .io import ScanError, load_scan
from .refine import label_components
from .review import ReviewStore
from .viz import nifti_bytes, overlay, png_bytes

__all__ = ["rle_encode", "rle_decode", "coco_instances", "coco_from_detections", "instance_rows", "export_session",
           "slug", "csv_safe"]


def slug(text: str, max_len: int = 40) -> str:
    """A file-name part made only of ``[A-Za-z0-9._-]``: no separators, no ``..``, never empty.

    Examples
    --------
    >>> slug("/../../../tmp/x")
    'tmp_x'
    >>> slug("Dr. A. Rivera")
    'Dr._A._Rivera'
    >>> slug("..")
    'unnamed'
    """
    import re

    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))
    s = re.sub(r"\.{2,}", ".", s).strip("._-")
    return s[:max_len].strip("._-") or "unnamed"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value):
    """Neutralise spreadsheet formula injection: text starting with = + - @ tab or CR gets a leading quote.

    Examples
    --------
    >>> csv_safe("=1+2")
    "'=1+2"
    >>> csv_safe(-1.5), csv_safe("ok")
    (-1.5, 'ok')
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def rle_encode(binary: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths in column-major order, starting with a run of zeros."""
    b = np.asarray(binary, dtype=bool)
    flat = b.ravel(order="F")
    if flat.size == 0:
        return {"size": [int(b.shape[0]), int(b.shape[1])], "counts": []}
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        counts = [0] + counts  # COCO runs start with background
    return {"size": [int(b.shape[0]), int(b.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    flat = np.zeros(h * w, np.uint8)
    pos, val = 0, 0
    for c in rle["counts"]:
        if val:
            flat[pos:pos + c] = 1
        pos += c
        val ^= 1
    return flat.reshape((h, w), order="F").astype(bool)


def coco_instances(labels: np.ndarray, image_id: int, class_names: Sequence[str], start_id: int = 1) -> list[dict]:
    """One COCO annotation per connected component of each foreground class."""
    anns = []
    aid = start_id
    for c in sorted(int(v) for v in np.unique(labels) if v != 0):
        n, comp, stats, _ = label_components(labels == c, 8)
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            anns.append({"id": aid, "image_id": image_id, "category_id": c, "iscrowd": 0,
                         "segmentation": rle_encode(comp == i), "area": area, "bbox": [x, y, w, h],
                         "category_name": class_names[c] if c < len(class_names) else str(c)})
            aid += 1
    return anns


def coco_from_detections(det: dict, class_names: Sequence[str], file_name: str, shape: tuple[int, int]) -> dict:
    """A COCO results file (one image) from detector output (boxes x,y,w,h, scores, classes, masks)."""
    return {"images": [{"id": 1, "file_name": file_name, "height": int(shape[0]), "width": int(shape[1])}],
            "categories": [{"id": i, "name": n} for i, n in enumerate(class_names) if i],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": int(c), "score": float(s), "iscrowd": 0,
                             "bbox": [float(v) for v in b], "area": int(m.sum()), "segmentation": rle_encode(m)}
                            for k, (b, s, c, m) in enumerate(zip(det["boxes"], det["scores"], det["classes"],
                                                                 det["masks"]))]}


def instance_rows(det: dict, class_names: Sequence[str], spacing=None) -> list[dict]:
    """One table row per detected instance (class, score, box, area in px and mm²)."""
    return [{"instance": k + 1, "class": class_names[int(c)], "score": round(float(s), 3),
             "box (x, y, w, h)": tuple(round(float(v), 1) for v in b), "area (px)": int(m.sum()),
             "area (mm²)": round(int(m.sum()) * spacing[0] * spacing[1], 1) if spacing else None}
            for k, (b, s, c, m) in enumerate(zip(det["boxes"], det["scores"], det["classes"], det["masks"]))]


def _display(scan_bytes: bytes, name: str, slice_index):
    try:
        scan = load_scan(scan_bytes, name)
    except ScanError:
        return None, None
    return scan, scan.default_display(scan.slice(0, slice_index))


def export_session(store: ReviewStore, session_id: int, class_names: Sequence[str], actor) -> bytes:
    """A zip with everything a session produced that ``actor`` may see (reviewer: own verdicts; admin: all)."""
    from .auth import require

    require(actor, "export_session")
    visible = store.visible_verdicts(session_id, actor)
    sess = store.session(session_id)
    cases = {c.id: c for c in store.cases(session_id, "upload")}
    buf = io.BytesIO()
    coco = {"info": {"description": f"segcore review session {sess['name']}",
                     "date_created": dt.datetime.now(dt.timezone.utc).isoformat()},
            "images": [], "annotations": [],
            "categories": [{"id": i, "name": n} for i, n in enumerate(class_names) if i > 0]}
    rows, report = [], []
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for v in visible:
            case = cases[v["case_id"]]
            metrics = v["metrics"]
            rows.append({"verdict_id": v["id"], "case_id": case.id, "scan": case.scan_name,
                         "slice": case.slice_index, "reviewer": v["reviewer"], "verdict": v["verdict"],
                         "reason_code": v["reason_code"], "comment": v["comment"],
                         "point_x": v["point_x"], "point_y": v["point_y"],
                         "seconds_spent": round(v["seconds_spent"], 2),
                         "dice_model_vs_accepted": json.dumps([round(x, 4) for x in metrics["dice"]]),
                         "iou_model_vs_accepted": json.dumps([round(x, 4) for x in metrics["iou"]]),
                         "hd95_model_vs_accepted": json.dumps(metrics["hd95"]),
                         "area_change_px": json.dumps(metrics.get("area_change_px", metrics.get("voxel_change"))),
                         "volume_change_ml": json.dumps(metrics.get("volume_change_ml")),
                         "edited_pixels": metrics["edited_pixels"], "uncertainty": round(case.uncertainty, 4),
                         "created_at": str(v["created_at"])})
            mask = store.accepted_mask(v["id"])
            stem = f"case{case.id:04d}_{slug(v['reviewer'])}_v{v['id']}"
            if mask.ndim == 3:
                pair = _export_volume(z, store, case, v, mask, stem, sess, class_names)
                if pair is not None:
                    report.append((case, v, base64.b64encode(png_bytes(pair)).decode()))
                continue
            scan, disp = _display(store.scan_bytes(case.id), case.scan_name, case.slice_index)
            if v["verdict"] != "reject":
                z.writestr(f"masks/{stem}.png", png_bytes(mask))
                if scan is not None and scan.affine is not None and scan.is_volume:
                    vol = np.zeros(scan.pixels.shape, np.uint8)
                    vol[case.slice_index or 0] = mask
                    z.writestr(f"masks/{stem}.nii.gz", nifti_bytes(vol, scan))
                else:
                    z.writestr(f"masks/{stem}.nii.gz", nifti_bytes(mask, scan))
                coco["images"].append({"id": v["id"], "file_name": case.scan_name, "height": int(mask.shape[0]),
                                       "width": int(mask.shape[1]), "case_id": case.id, "reviewer": v["reviewer"]})
                coco["annotations"] += coco_instances(mask, v["id"], class_names, len(coco["annotations"]) + 1)
            if disp is not None:
                model_mask = store.mask(case.id, "refined")
                pair = np.concatenate([overlay(disp, model_mask, 0.45), overlay(disp, mask, 0.45)], axis=1)
                report.append((case, v, base64.b64encode(png_bytes(pair)).decode()))
        z.writestr("coco_instances.json", json.dumps(coco))
        out = io.StringIO()
        if rows:
            w = csv.DictWriter(out, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({k: csv_safe(x) for k, x in r.items()} for r in rows)
        z.writestr("verdicts.csv", out.getvalue())
        z.writestr("report.html", _html(sess, rows, report))
        records = store.audit_records()
        who = require(actor, "export_session")
        if not who.may("view_all_verdicts"):  # a reviewer's export carries their own audit records only
            records = [r for r in records if r.get("who_id") == who.subject]
        z.writestr("audit_log.json", json.dumps(records, default=str, indent=1))
    return buf.getvalue()


def _export_volume(z: zipfile.ZipFile, store: ReviewStore, case, v: dict, mask: np.ndarray, stem: str, sess: dict,
                   class_names: Sequence[str]) -> np.ndarray | None:
    """NIfTI (and DICOM SEG for a DICOM series) of a volume verdict; returns the report's overlay pair or None."""
    try:
        scan = load_scan(store.scan_bytes(case.id), case.scan_name)
    except ScanError:
        scan = None
    if scan is not None and scan.pixels.shape != mask.shape:
        scan = None  # not the volume the case was made from: masks still export, on an identity affine
    if v["verdict"] != "reject":
        z.writestr(f"masks/{stem}.nii.gz", nifti_bytes(mask, scan))
        if scan is not None and mask.any():
            from .dicomseg import seg_not_offered_reason, write_seg

            if seg_not_offered_reason(scan) is None:
                z.writestr(f"masks/{stem}.seg.dcm", write_seg(mask, scan, class_names, sess["model_version"],
                                                              corrected=v["verdict"] == "accept_with_edits"))
    if scan is None:
        return None
    model_mask = store.mask(case.id, "refined")
    area = (mask > 0).reshape(mask.shape[0], -1).sum(1) + (model_mask > 0).reshape(mask.shape[0], -1).sum(1)
    k = int(np.argmax(area))  # the slice with the most foreground
    disp = scan.default_display(scan.slice(0, k))
    return np.concatenate([overlay(disp, model_mask[k], 0.45), overlay(disp, mask[k], 0.45)], axis=1)


def _html(sess: dict, rows: list[dict], report) -> str:
    e = html.escape
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Review {e(sess['name'])}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px 8px}img{max-width:100%}</style></head><body>",
             f"<h1>Review session: {e(sess['name'])}</h1>",
             f"<p>Started by {e(sess['created_by'])} on {e(str(sess['created_at']))}; model {e(sess['model_version'])}."
             f" {len(rows)} verdicts: " + ", ".join(f"{e(k)} {v}" for k, v in sorted(counts.items())) + "</p>",
             "<table><tr><th>case</th><th>scan</th><th>reviewer</th><th>verdict</th><th>reason</th><th>comment</th>"
             "<th>Dice model↔accepted</th><th>edited px</th><th>seconds</th></tr>"]
    for r in rows:
        parts.append(f"<tr><td>{r['case_id']}</td><td>{e(r['scan'])}</td><td>{e(r['reviewer'])}</td>"
                     f"<td>{e(r['verdict'])}</td><td>{e(r['reason_code'])}</td><td>{e(r['comment'])}</td>"
                     f"<td>{e(r['dice_model_vs_accepted'])}</td><td>{r['edited_pixels']}</td>"
                     f"<td>{r['seconds_spent']}</td></tr>")
    parts.append("</table><h2>Overlays (left: model's refined mask, right: accepted mask)</h2>")
    for case, v, b64 in report:
        parts.append(f"<h3>Case {case.id} · {e(case.scan_name)} · {e(v['reviewer'])} · {e(v['verdict'])}</h3>"
                     f"<img alt='case {case.id}' src='data:image/png;base64,{b64}'>")
    parts.append("</body></html>")
    return "".join(parts)
