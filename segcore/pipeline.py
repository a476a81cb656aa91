"""The segmentation pipeline: one place that takes a scan through the model and the refinement steps.

The app (Segment & compare, Correct, the review queue), the command line, the benchmarks and batch jobs all
segment through this module, so every caller gets the same masks and measurements for the same scan.

``segment(scan, model, config, refine)`` = :func:`predict` (model probabilities for one slice) followed by
:func:`refine_prediction` (dense CRF, morphology, components). The two stages are public so that an interactive caller can
cache the expensive prediction and re-run only the refinement when a setting changes.

Conventions: images are 2-D ``H,W`` slices in raw scan values (HU, MR units, ...); probabilities ``H,W,K``
float32; label maps ``H,W`` uint8. What the CRF sees is defined by the model's normalisation
(:func:`model_view`), never by a display window, so areas and Dice do not depend on how the scan is displayed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

from .io import Scan
from .refine import RefineConfig, Refiner

__all__ = ["Prediction", "Segmentation", "predict", "refine_prediction", "segment", "segment_many", "model_view",
           "no_refinement", "detect_instances"]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Model output for one 2-D slice: ``probs`` ``H,W,K`` at the slice's own size."""

    probs: np.ndarray
    image: np.ndarray
    model_version: str
    slice_index: int | None
    spacing: tuple[float, float] | None
    timings: dict[str, float]

    @property
    def raw(self) -> np.ndarray:
        return self.probs.argmax(-1).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """Everything one segmentation produced.

    Attributes
    ----------
    probs : np.ndarray
        ``H,W,K`` softmax probabilities of the model.
    raw, refined : np.ndarray
        ``H,W`` uint8 label maps: argmax of ``probs``, and after refinement.
    timings : dict
        Milliseconds per stage (``predict`` and each refinement step that ran).
    model_version : str
    refine_config : RefineConfig or None
        None when refinement was switched off (``refined`` equals ``raw``).
    spacing : tuple or None
        In-plane ``(row, col)`` spacing in mm of this slice.
    slice_index : int or None
        Axial slice of a volume, None for 2-D scans.
    """

    probs: np.ndarray
    raw: np.ndarray
    refined: np.ndarray
    timings: dict[str, float]
    model_version: str
    refine_config: RefineConfig | None
    spacing: tuple[float, float] | None
    slice_index: int | None = None

    @property
    def mean_entropy(self) -> float:
        """Mean per-pixel predictive entropy in [0, 1] (the review queue's uncertainty)."""
        from .infer import entropy

        return float(entropy(self.probs).mean())

    @property
    def max_probability(self) -> np.ndarray:
        """``H,W`` probability of the raw (argmax) class."""
        return np.take_along_axis(self.probs, self.raw[..., None], -1)[..., 0]


def no_refinement() -> RefineConfig:
    """A RefineConfig with every step switched off."""
    base = RefineConfig()
    return dataclasses.replace(base, enabled={k: False for k in base.enabled})


def model_view(image: np.ndarray, config: Any) -> np.ndarray:
    """The slice as the model sees it (its configured normalisation), as uint8 0..255: the CRF's image.

    Examples
    --------
    >>> from segcore.models import ModelConfig
    >>> cfg = ModelConfig(normalisation={"type": "window", "center": 0, "width": 200})
    >>> model_view(np.array([[-100.0, 0.0, 100.0]]), cfg).tolist()
    [[0, 128, 255]]
    """
    from .infer import normalise

    return np.rint(normalise(image, config) * 255.0).astype(np.uint8)


def _slice(scan: Scan, slice_index: int | None) -> tuple[np.ndarray, int | None]:
    if scan.is_volume:
        idx = scan.num_slices // 2 if slice_index is None else int(slice_index)
        return scan.slice(0, idx), idx
    if slice_index not in (None, 0):
        raise ValueError(f"'{scan.source_name}' is a 2-D image; slice_index must be None or 0. Got {slice_index}.")
    return scan.pixels, None


def predict(scan: Scan, model, config, *, slice_index: int | None = None) -> Prediction:
    """Model probabilities for one axial slice of ``scan`` (the middle one of a volume by default)."""
    from .infer import predict_proba

    image, idx = _slice(scan, slice_index)
    t0 = time.perf_counter()
    probs = predict_proba(model, image, config)
    ms = round((time.perf_counter() - t0) * 1000, 2)
    spacing = scan.slice_spacing(0) if scan.spacing else None
    return Prediction(probs=probs, image=image, model_version=str(getattr(config, "version", "")), slice_index=idx,
                      spacing=spacing, timings={"predict": ms})


def refine_prediction(prediction: Prediction, config, refine: RefineConfig | None = None) -> Segmentation:
    """Refine a prediction with ``refine`` (the defaults when None); the CRF sees :func:`model_view`."""
    cfg = RefineConfig() if refine is None else refine
    if not any(cfg.enabled.get(s, False) for s in cfg.order):
        raw = prediction.raw
        return Segmentation(prediction.probs, raw, raw, dict(prediction.timings), prediction.model_version, None,
                            prediction.spacing, prediction.slice_index)
    view = model_view(prediction.image, config)
    result = Refiner(cfg).run(view, prediction.probs, spacing=prediction.spacing)
    return Segmentation(prediction.probs, prediction.raw, result.labels, {**prediction.timings, **result.timings_ms},
                        prediction.model_version, cfg, prediction.spacing, prediction.slice_index)


def segment(scan: Scan, model, config, refine: RefineConfig | bool | None = None, *,
            slice_index: int | None = None) -> Segmentation:
    """Segment one slice of ``scan``: model probabilities, raw labels, refined labels, timings.

    Parameters
    ----------
    scan : Scan
    model : keras.Model (or anything :func:`segcore.infer.predict_batch` accepts)
    config : ModelConfig
    refine : RefineConfig, bool or None
        Refinement settings: None or True for the defaults, False to skip refinement
        (``refined`` is then ``raw``, as ``predict --no-refine`` does).
    slice_index : int, optional
        Axial slice of a volume (the middle one when None).
    """
    if refine is True or refine is None:
        refine = RefineConfig()
    elif refine is False:
        refine = no_refinement()
    return refine_prediction(predict(scan, model, config, slice_index=slice_index), config, refine)


def segment_many(scans: Sequence[Scan], model, config, refine: RefineConfig | bool | None = None,
                 **kwargs) -> list[Segmentation]:
    """:func:`segment` for each scan (middle slice of volumes)."""
    return [segment(s, model, config, refine, **kwargs) for s in scans]


def detect_instances(maskrcnn, image: np.ndarray, pixel_scale: float | None = None) -> dict:
    """Instances on a 2-D slice in raw values, at native resolution (the detector normalises the whole slice itself;
    the display window plays no part). ``pixel_scale`` enlarges small objects into the model's trained size range.

    Returns the detector's dict: ``boxes`` (N,4 x,y,w,h), ``scores``, ``classes``, ``masks`` (N,H,W bool).
    """
    return maskrcnn.detect(np.asarray(image, np.float32), pixel_scale=pixel_scale)


def segment_all_slices(scan: Scan, model, config, refine: RefineConfig | bool | None = None) -> np.ndarray:
    """Refined labels of every axial slice: ``D,H,W`` uint8 for volumes, ``H,W`` for 2-D scans."""
    if not scan.is_volume:
        return segment(scan, model, config, refine).refined
    return np.stack([segment(scan, model, config, refine, slice_index=z).refined for z in range(scan.num_slices)])
