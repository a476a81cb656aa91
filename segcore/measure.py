"""Measurements the app shows: per-class tables, review summaries, disagreement maps.

All inputs are label maps (``H,W`` integer class ids, 0 = background) and plain records; outputs are lists of
dicts ready for a table. Areas are in pixels and, when spacing is known, in mm². Inputs are never mutated.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .metrics import dice, iou
from .refine import component_table

__all__ = ["class_table", "disagreement_map", "review_rows", "VERDICT_LABELS", "REASON_LABELS", "label",
           "correction_label", "duplicate_groups", "candidate_table", "version_rows", "instance_table",
           "volume_table"]

VERDICT_LABELS = {"accept": "Accepted", "accept_with_edits": "Accepted with edits", "reject": "Rejected"}
REASON_LABELS = {"none": "—", "boundary_inaccurate": "Boundary inaccurate", "missed_lesion": "Missed lesion",
                 "false_positive": "False positive", "wrong_class": "Wrong class", "image_quality": "Image quality",
                 "artefact": "Artefact", "other": "Other"}


def label(code: str) -> str:
    """Human-readable text for a verdict or reason code.

    Examples
    --------
    >>> label("accept_with_edits"), label("missed_lesion"), label("something_new")
    ('Accepted with edits', 'Missed lesion', 'Something new')
    """
    return VERDICT_LABELS.get(code) or REASON_LABELS.get(code) or code.replace("_", " ").capitalize()


def class_table(raw: np.ndarray, refined: np.ndarray, class_names: Sequence[str],
                spacing: Sequence[float] | None = None) -> list[dict]:
    """One row per foreground class: areas raw/refined (px, mm²), refined components, Dice/IoU raw vs refined.

    Examples
    --------
    >>> raw = np.array([[0, 1], [1, 1]]); ref = np.array([[0, 1], [0, 1]])
    >>> row = class_table(raw, ref, ("bg", "organ"), spacing=(0.5, 0.5))[0]
    >>> row["raw area (px)"], row["refined area (px)"], row["refined area (mm²)"], row["Dice raw↔refined"]
    (3, 2, 0.5, 0.8)
    """
    k = len(class_names)
    d, j = dice(raw, refined, k), iou(raw, refined, k)
    px_area = float(spacing[0]) * float(spacing[1]) if spacing else None
    comps = component_table(np.asarray(refined).astype(np.uint8), class_names, spacing)
    rows = []
    for c in range(1, k):
        a_raw, a_ref = int((np.asarray(raw) == c).sum()), int((np.asarray(refined) == c).sum())
        rows.append({
            "class": class_names[c],
            "raw area (px)": a_raw,
            "refined area (px)": a_ref,
            "refined area (mm²)": round(a_ref * px_area, 1) if px_area else None,
            "components (refined)": sum(r["class"] == c for r in comps),
            "Dice raw↔refined": round(float(d[c]), 4),
            "IoU raw↔refined": round(float(j[c]), 4),
        })
    return rows


def disagreement_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label map for display: 0 where two masks agree, 2 (drawn red) where they differ.

    Examples
    --------
    >>> disagreement_map(np.array([[0, 1]]), np.array([[0, 2]])).tolist()
    [[0, 2]]
    """
    return (np.asarray(a) != np.asarray(b)).astype(np.uint8) * 2


def review_rows(verdicts: Iterable[dict], class_names: Sequence[str]) -> list[dict]:
    """Summary table of review verdicts with readable labels and per-class Dice (model vs accepted)."""
    rows = []
    for v in verdicts:
        m = v["metrics"]
        rejected = v["verdict"] == "reject"  # nothing was accepted: no model-vs-accepted Dice to show
        rows.append({"case": v["case_id"], "scan": v["scan_name"], "slice": v.get("slice_index"),
                     "reviewer": v["reviewer"], "verdict": label(v["verdict"]), "reason": label(v["reason_code"]),
                     **{f"Dice {class_names[c]}": None if rejected else round(m["dice"][c], 4)
                        for c in range(1, min(len(class_names), len(m["dice"])))},
                     "edited px": None if rejected else m["edited_pixels"], "seconds": round(v["seconds_spent"], 1),
                     "comment": v["comment"]})
    return rows


def correction_label(c) -> str:
    """How a saved correction is named to a person: scan, slice, author, date (not its id)."""
    where = f" · slice {c.slice_index}" if c.slice_index is not None else ""
    return f"{c.scan_name}{where} · {c.author} · {c.created_at.replace('T', ' ')[:19]}"  # seconds: copies differ


def duplicate_groups(corrections) -> list[list]:
    """Corrections of the same scan content and slice, when there is more than one."""
    groups: dict[tuple, list] = {}
    for c in corrections:
        groups.setdefault((c.scan_sha256 or c.scan_name, c.slice_index), []).append(c)
    return [g for g in groups.values() if len(g) > 1]


def identical_copies(corrections) -> set[str]:
    """Ids of corrections that repeat an older one exactly (same scan content, series, slice and mask): training on
    both counts one image twice, and holding one out scores the model on an image it trained on."""
    seen, out = set(), set()
    for c in sorted(corrections, key=lambda c: (c.created_at, c.id), reverse=True):  # the newest copy is kept
        key = (c.scan_sha256 or c.scan_name, c.series_uid, c.slice_index, c.mask_sha256 or c.id)
        if key in seen:
            out.add(c.id)
        seen.add(key)
    return out


def candidate_table(metrics: dict, candidate: str, active: str) -> list[dict]:
    """Per-class Dice and HD95 of a candidate vs the active model on the same held-out set."""
    new, old = metrics["held_out"], metrics["baseline_held_out"]
    return [{"class": name, f"Dice {active}": round(old["per_class"][name]["dice"], 4),
             f"Dice {candidate}": round(new["per_class"][name]["dice"], 4),
             f"HD95 {active}": round(old["per_class"][name]["hd95"], 2),
             f"HD95 {candidate}": round(new["per_class"][name]["hd95"], 2)} for name in new["per_class"]]


def version_rows(versions: dict, active: str | None) -> list[dict]:
    """One row per model version: active flag, parent, held-out Dice, training cases, when, note."""
    rows = []
    for v, info in versions.items():
        m = info.get("metrics", {})
        ho = m.get("held_out") or m.get("test") or {}
        rows.append({"version": v, "active": "active" if v == active else "", "parent": info.get("parent"),
                     "held-out mean Dice": round(ho.get("mean_foreground_dice", float("nan")), 4),
                     "trained on (corrections)": len(info["trained_on"]) if info.get("trained_on") else None,
                     "created": info.get("created_at", ""),
                     "by": info.get("created_by", ""), "note": info.get("note", "")})
    return rows


def instance_table(ids: np.ndarray, spacing: Sequence[float] | None = None) -> list[dict]:
    """One row per instance of an id map: id, area (px, mm²), bounding box, centroid."""
    a = np.asarray(ids)
    rows = []
    for lab in (int(v) for v in np.unique(a) if v != 0):
        rr, cc = np.nonzero(a == lab)
        rows.append({"instance": lab, "area (px)": int(rr.size),
                     "area (mm²)": round(rr.size * float(spacing[0]) * float(spacing[1]), 1) if spacing else None,
                     "box (x, y, w, h)": (int(cc.min()), int(rr.min()), int(cc.max() - cc.min() + 1),
                                          int(rr.max() - rr.min() + 1)),
                     "centroid (x, y)": (round(float(cc.mean()), 1), round(float(rr.mean()), 1))})
    return rows


def volume_table(vol) -> list[dict]:
    """One row per foreground class of a :class:`segcore.pipeline.VolumeSegmentation`: volumes in mL (raw,
    refined), 3-D components of the refined labels, 3-D Dice raw↔refined."""
    names = list(vol.class_names) or [str(i) for i in range(int(max(vol.raw.max(), vol.refined.max())) + 1)]
    k = len(names)
    raw_ml, ref_ml = vol.volumes_ml("raw"), vol.volumes_ml("refined")
    comps = vol.components()
    d = dice(vol.raw, vol.refined, k)
    return [{"class": names[c], "raw volume (mL)": raw_ml.get(names[c]), "refined volume (mL)": ref_ml.get(names[c]),
             "components (refined, 3-D)": sum(r.get("class") == c for r in comps),
             "Dice raw↔refined (3-D)": round(float(d[c]), 4)} for c in range(1, k)]


def job_rows(jobs) -> list[dict]:
    """One row per fine-tune job (:class:`segcore.jobs.JobState`), newest first: state, who, when, how far."""
    rows = []
    for j in jobs:
        p, r = j.progress or {}, j.result or {}
        instances = (j.spec or {}).get("kind") == "instances"
        if instances and j.state == "running" and p:
            where = f"step {p.get('step')} of {p.get('steps')}"
        elif instances and j.state == "done":
            where = (f"{r.get('version')}: held-out AP50 {r.get('ap50_after', float('nan')):.3f} vs "
                     f"{r.get('ap50_before', float('nan')):.3f} before")
        elif j.state == "running" and p:
            where = (f"{'choosing the length' if p.get('phase') == 'select' else 'final training'} · "
                     f"step {p.get('step')} · loss {p.get('loss', float('nan')):.4f}"
                     + (f" · held-out Dice {p['val_dice']:.3f}" if p.get("val_dice") is not None else ""))
        elif j.state == "done":
            where = (f"{r.get('version')}: held-out Dice {r.get('held_out_dice', float('nan')):.4f}"
                     + (f" vs {r['baseline_held_out_dice']:.4f}" if r.get("baseline_held_out_dice") is not None
                        else " (new class set: not comparable)"))
        else:
            where = j.error.splitlines()[-1][:160] if j.error else ""
        spec = j.spec or {}
        rows.append({"job": j.id[-13:], "state": j.state, "started by": j.created_by,
                     "queued at": (j.created_at or "").replace("T", " ")[:19], "elapsed (s)": j.elapsed_s,
                     "base": spec.get("base_version"), "corrections": len(spec.get("correction_ids", [])),
                     "classes": ", ".join(spec.get("class_names") or []) or "unchanged", "progress / result": where})
    return rows
