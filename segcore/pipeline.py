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
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from .io import Scan
from .refine import RefineConfig, Refiner

__all__ = ["Prediction", "Segmentation", "predict", "refine_prediction", "segment", "segment_many", "model_view",
           "no_refinement", "detect_instances", "VolumeSegmentation", "segment_volume", "SegmentationCancelled",
           "segment_all_slices"]


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


# ------------------------------------------------------------------ volumes

class SegmentationCancelled(RuntimeError):
    """The progress callback of :func:`segment_volume` returned False."""


@dataclasses.dataclass(frozen=True)
class VolumeSegmentation:
    """Everything :func:`segment_volume` produced for a ``D,H,W`` scan.

    Attributes
    ----------
    raw, refined : np.ndarray
        ``D,H,W`` uint8 label volumes: per-slice argmax, and after the per-slice and 3-D refinement.
    probs : np.ndarray or None
        ``D,H,W,K`` float16 probabilities (None with ``keep_probs=False``); float16 halves the memory of a
        volume (a 512x512x300 CT with K=3 is 472 MB instead of 944 MB) and keeps 3 significant digits.
    slice_entropy : np.ndarray
        ``D`` float32 mean predictive entropy per slice in [0, 1] (which slices to review first).
    timings : dict
        Seconds: ``predict`` (model thread), ``refine_2d``, ``refine_3d`` (busy time of each stage; the model
        runs on the next batch while a batch is refined, so they overlap), ``total`` (wall); ``steps_ms``
        totals per refinement step.
    model_version : str
    refine_config, volume_config : RefineConfig / VolumeRefineConfig or None
        None when that stage was switched off.
    spacing : tuple or None
        ``(slice, row, col)`` mm.
    class_names : tuple of str
    """

    raw: np.ndarray
    refined: np.ndarray
    probs: np.ndarray | None
    slice_entropy: np.ndarray
    timings: dict
    model_version: str
    refine_config: RefineConfig | None
    volume_config: Any
    spacing: tuple[float, ...] | None
    class_names: tuple[str, ...] = ()

    def volumes_ml(self, which: str = "refined") -> dict[str, float]:
        """Per-class volume in mL of the ``refined`` (or ``raw``) labels."""
        from .volume import class_volumes_ml

        return class_volumes_ml(getattr(self, which), self.spacing, self.class_names or None)

    def components(self, which: str = "refined") -> list[dict]:
        """3-D component table (26-connected) of the ``refined`` (or ``raw``) labels."""
        from .volume import component_table_3d

        return component_table_3d(getattr(self, which), self.class_names or None, self.spacing)


def segment_volume(scan: Scan, model, config, refine: RefineConfig | bool | None = None,
                   progress: Callable[[float, str], Any] | None = None, *, volume_refine: Any = None,
                   batch_size: int = 8, keep_probs: bool = True,
                   refine_workers: int | None = None) -> VolumeSegmentation:
    """Segment every axial slice of a volume, refine each slice, then refine in 3-D.

    Slices go through the model in batches (:func:`segcore.infer.predict_batch`), each slice is refined with
    :func:`refine_prediction` (the CRF sees :func:`model_view`, as for one slice), and the label volume is then
    refined in 3-D (:func:`segcore.volume.refine_volume`). Memory: the scan itself, ``D,H,W,K`` float16
    probabilities (unless ``keep_probs=False``), two uint8 volumes and one batch of float32 probabilities.

    Parameters
    ----------
    scan : Scan
        A volume (``D,H,W``); a 2-D scan is treated as one slice.
    model, config
        The model and its :class:`~segcore.models.ModelConfig`.
    refine : RefineConfig, bool or None
        Per-slice refinement: None/True for the defaults, False for none.
    progress : callable, optional
        ``progress(fraction, message)`` after each batch and stage (fraction in [0, 1]); returning False
        cancels (:class:`SegmentationCancelled`).
    volume_refine : VolumeRefineConfig, bool or None
        3-D refinement after the slices: None/True for :class:`~segcore.volume.VolumeRefineConfig`'s defaults,
        False for none.
    batch_size : int
        Slices per model call.
    keep_probs : bool
        Keep the ``D,H,W,K`` float16 probabilities.
    refine_workers : int, optional
        Threads refining the slices of a batch at once (default: the CPU count, at most 4). Results do not
        depend on it.
    """
    from .infer import entropy, predict_batch
    from .volume import VolumeRefineConfig, refine_volume

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Got {batch_size}.")
    refine_workers = refine_workers if refine_workers is not None else min(4, os.cpu_count() or 1)
    if refine_workers < 1:
        raise ValueError(f"refine_workers must be >= 1. Got {refine_workers}.")
    if refine is True or refine is None:
        refine = RefineConfig()
    elif refine is False:
        refine = no_refinement()
    if volume_refine is True or volume_refine is None:
        volume_refine = VolumeRefineConfig()
    elif volume_refine is False:
        volume_refine = None
    pixels = scan.pixels if scan.is_volume else scan.pixels[None]
    d, h, w = pixels.shape
    k = int(config.num_classes)
    spacing2d = scan.slice_spacing(0) if scan.spacing else None
    spacing3d = tuple(scan.spacing) if scan.spacing is not None and scan.is_volume else (
        (1.0,) + tuple(scan.spacing) if scan.spacing is not None else None)
    version = str(getattr(config, "version", ""))
    raw = np.empty((d, h, w), np.uint8)
    refined = np.empty((d, h, w), np.uint8)
    probs_out = np.empty((d, h, w, k), np.float16) if keep_probs else None
    ent = np.empty(d, np.float32)
    t_pred = t_ref = 0.0
    steps: dict[str, float] = {}
    t_start = time.perf_counter()

    def _refine_one(z: int, p: np.ndarray) -> dict[str, float]:
        pred = Prediction(probs=p, image=pixels[z], model_version=version, slice_index=z, spacing=spacing2d,
                          timings={})
        seg = refine_prediction(pred, config, refine)
        raw[z] = seg.raw  # each slice writes only its own rows: no two threads share an element
        refined[z] = seg.refined
        ent[z] = float(entropy(p).mean())
        if probs_out is not None:
            probs_out[z] = p
        return seg.timings

    def _refine_batch(idx: range, batch: list[np.ndarray]) -> None:
        nonlocal t_ref
        t0 = time.perf_counter()
        # slices are independent: the CRF's array work (OpenCV, NumPy) releases the GIL, so threads share cores
        for timings in refiners.map(_refine_one, idx, batch):
            for name, ms in timings.items():
                steps[name] = steps.get(name, 0.0) + ms
        t_ref += time.perf_counter() - t0

    def report(fraction: float, message: str) -> None:
        if progress is not None and progress(min(max(fraction, 0.0), 1.0), message) is False:
            raise SegmentationCancelled(f"Segmentation cancelled at: {message}")

    report(0.0, f"Segmenting {d} slice(s)")
    batches = [range(s, min(s + batch_size, d)) for s in range(0, d, batch_size)]

    def run_model(idx: range):
        t0 = time.perf_counter()
        out = predict_batch(model, [pixels[z] for z in idx], config, batch_size=batch_size)
        return out, time.perf_counter() - t0

    # the model works on the next batch (TensorFlow releases the GIL) while this one is refined
    with ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(max_workers=refine_workers) as refiners:
        pending = pool.submit(run_model, batches[0])
        for b, idx in enumerate(batches):
            batch, secs = pending.result()
            t_pred += secs
            if b + 1 < len(batches):
                pending = pool.submit(run_model, batches[b + 1])
            _refine_batch(idx, batch)
            report(0.9 * (idx[-1] + 1) / d, f"Slice {idx[-1] + 1} of {d}")
    t0 = time.perf_counter()

    if volume_refine is not None:
        report(0.9, "3-D refinement")
        refined, t3 = refine_volume(refined, spacing3d, volume_refine)
        for name, ms in t3.items():
            steps[name] = steps.get(name, 0.0) + ms
    t_3d = time.perf_counter() - t0
    report(1.0, "Done")
    timings = {"predict": round(t_pred, 3), "refine_2d": round(t_ref, 3), "refine_3d": round(t_3d, 3),
               "total": round(time.perf_counter() - t_start, 3), "steps_ms": {n: round(v, 1) for n, v in steps.items()}}
    has_2d = any(refine.enabled.get(s, False) for s in refine.order)
    return VolumeSegmentation(raw=raw, refined=refined, probs=probs_out, slice_entropy=ent, timings=timings,
                              model_version=version, refine_config=refine if has_2d else None,
                              volume_config=volume_refine, spacing=spacing3d,
                              class_names=tuple(getattr(config, "class_names", ()) or ()))
