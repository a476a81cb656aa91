"""Display choices: which windows a scan offers and what each one shows. Display never changes what is measured.

A display window maps raw scan values to 8-bit grey for the screen only; the segmentation pipeline
(:mod:`segcore.pipeline`) never sees it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .io import CT_PRESETS, Scan, auto_window, window

__all__ = ["WindowChoice", "window_options", "default_window_choice", "resolve_window", "display_image",
           "preset_note"]


@dataclasses.dataclass(frozen=True)
class WindowChoice:
    """A display window: a named choice and, for ``manual``, its centre and width."""

    name: str = "auto"
    center: float | None = None
    width: float | None = None


def window_options(scan: Scan) -> list[str]:
    """Window choices that make sense for ``scan``: CT presets only where values are Hounsfield units.

    Examples
    --------
    >>> window_options(Scan(pixels=np.zeros((4, 4), np.float32)))
    ['auto', 'manual']
    """
    opts = ["auto"]
    if scan.default_window:
        opts.append("file default")
    if scan.values_are_hu:
        opts += list(CT_PRESETS)
    return opts + ["manual"]


def preset_note(scan: Scan) -> str | None:
    """Why CT presets are not offered for ``scan`` (None when they are)."""
    if scan.values_are_hu:
        return None
    what = f"a {scan.modality} scan" if scan.modality not in ("OT", "") else f"a {scan.format.upper() or 'plain'} image"
    return (f"CT presets (soft tissue, lung, bone, brain) are windows in Hounsfield units; this is {what} whose "
            "values are not known to be HU, so they are not offered. Use auto or manual.")


def default_window_choice(scan: Scan) -> str:
    """The file's own window when it has one, else the percentile window."""
    return "file default" if scan.default_window else "auto"


def resolve_window(scan: Scan, image: np.ndarray, choice: WindowChoice) -> tuple[float, float]:
    """``(center, width)`` for a choice; unknown or unavailable choices fall back to the default window.

    Examples
    --------
    >>> s = Scan(pixels=np.arange(16, dtype=np.float32).reshape(4, 4), modality="CT",
    ...          metadata={"RescaleIntercept": -1024})
    >>> resolve_window(s, s.pixels, WindowChoice("lung"))
    (-600.0, 1500.0)
    >>> resolve_window(s, s.pixels, WindowChoice("manual", 5, 10))
    (5.0, 10.0)
    """
    if choice.name == "manual" and choice.center is not None and choice.width and choice.width > 0:
        return float(choice.center), float(choice.width)
    if choice.name == "file default" and scan.default_window:
        return scan.default_window
    if choice.name in CT_PRESETS and scan.values_are_hu:
        return CT_PRESETS[choice.name]
    if choice.name not in ("auto", "manual") and scan.default_window:
        return scan.default_window
    return auto_window(image)


def display_image(image: np.ndarray, win: tuple[float, float]) -> np.ndarray:
    """The 2-D slice as uint8 grey in window ``win``."""
    return window(image, *win)
