"""Model cards: what a model was trained on, for which domain, how well it does; and domain warnings.

A card is ``card.json`` beside a model (``model.keras`` + ``config.json``, or the Mask R-CNN's files)::

    {"name": ..., "task": "semantic segmentation" | "instance segmentation",
     "classes": [...], "training_data": "...", "metrics": {...}, "limitations": "...",
     "intended_domain": {"modalities": ["CT"], "values": "HU" | "any",
                         "synthetic_only": true, "description": "..."}}

:func:`domain_warnings` compares a scan with the card so the app can say, next to the results, when a scan
is outside what the model knows.
"""

from __future__ import annotations

import json
from pathlib import Path

from .io import Scan

__all__ = ["load_card", "domain_warnings"]


def load_card(model_dir: str | Path) -> dict:
    """The card of the model in ``model_dir``, ready to show: classes as names, training data as one sentence.

    A segmentation model saved by :func:`segcore.models.save_model` gets :func:`segcore.models.load_card`'s card
    (``card.json`` merged with ``config.json``, which is the authority on classes, metrics and lineage); other
    models (Mask R-CNN, click network) their ``card.json``; a folder without a card a minimal one that says so.
    """
    d = Path(model_dir)
    raw = json.loads((d / "card.json").read_text()) if (d / "card.json").is_file() else None
    cfg = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
    if (d / "model.keras").is_file() and "class_names" in cfg:  # a ModelConfig, not the click network's config
        from .models import load_card as model_card

        return _for_display({**(raw or {}), **model_card(d).to_dict()})
    if raw is not None:
        return _for_display(raw)
    return {"name": d.name, "classes": cfg.get("class_names", []), "training_data": "not documented",
            "intended_domain": {}, "metrics": cfg.get("metrics", {}),
            "limitations": "This model has no card: its training data and intended domain are unknown."}


def _for_display(card: dict) -> dict:
    """Class dicts to names, a list of training sources to one sentence (input not mutated).

    >>> _for_display({"classes": [{"index": 0, "name": "background"}],
    ...               "training_data": [{"source": "a", "n_images": 3}, {"source": "b", "description": "x"}]})
    {'classes': ['background'], 'training_data': 'a (3 images); x'}
    """
    out = dict(card)
    out["classes"] = [c["name"] if isinstance(c, dict) else str(c) for c in card.get("classes", [])]
    td = card.get("training_data")
    if isinstance(td, list):
        out["training_data"] = "; ".join(
            (t.get("description") or t.get("source", "?"))
            + (f" ({t['n_images']} images)" if t.get("n_images") else "")
            + (f", licence: {t['licence']}" if t.get("licence") else "")
            if isinstance(t, dict) else str(t) for t in td) or "not documented"
    return out


def domain_warnings(card: dict, scan: Scan, *, is_phantom_sample: bool = False) -> list[str]:
    """Reasons the results on ``scan`` may not be meaningful, from the model's card (empty when none apply).

    Examples
    --------
    >>> import numpy as np
    >>> card = {"intended_domain": {"modalities": ["CT"], "synthetic_only": True}}
    >>> mr = Scan(pixels=np.zeros((4, 4), np.float32), modality="MR")
    >>> [w.split(":")[0] for w in domain_warnings(card, mr)]
    ["Outside the model's domain", 'Trained on synthetic phantoms only']
    >>> domain_warnings(card, Scan(pixels=np.zeros((4, 4), np.float32), modality="CT"), is_phantom_sample=True)
    []
    """
    dom = card.get("intended_domain") or {}
    out = []
    mods = dom.get("modalities")
    if mods and scan.modality not in ("OT", "") and scan.modality not in mods:
        out.append(f"Outside the model's domain: this is a {scan.modality} scan, the model was trained on "
                   f"{', '.join(mods)} only.")
    if dom.get("values") == "HU" and scan.modality not in ("OT", "") and not scan.values_are_hu:
        out.append("Outside the model's domain: the model expects Hounsfield units; this scan's values are not HU.")
    if dom.get("synthetic_only") and not is_phantom_sample:
        out.append("Trained on synthetic phantoms only: on real scans its masks and the areas, volumes and counts "
                   "derived from them are not clinically meaningful. Correct the mask and fine-tune on your own "
                   "data before relying on it.")
    if not dom and card.get("limitations"):
        out.append(card["limitations"])
    return out
