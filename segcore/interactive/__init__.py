"""Interactive (click and box) segmentation: the object a user points at, class-agnostic.

Usage::

    from segcore.interactive import load_model, segment
    model = load_model()                      # once per process (cached, read-only)
    mask = segment(image, [(120, 88, True)], model=model)                                   # a click
    mask = segment(image, [(120, 88, True), (131, 101, False)], previous=mask, model=model)  # remove a leak
    mask = segment(image, [], box=(100, 70, 140, 110), model=model)                         # a box

Public API: :func:`segment` (NumPy in, boolean ``H,W`` mask out, deterministic),
:func:`load_model` / :class:`ClickModel` / :class:`InteractiveConfig`,
:func:`grabcut_segment` (classical reference with the same signature),
:func:`next_click` / :func:`click_session` (the standard click simulator) and
:func:`brush_session` (manual-painting baseline). TensorFlow is imported only when a
model is built or loaded.
"""

from .baselines import brush_session, grabcut_segment
from .geometry import Window, window_for_prompt
from .model import DEFAULT_MODEL_DIR, ClickModel, InteractiveConfig, load_model
from .segment import check_prompt, segment
from .simulate import click_session, iou, next_click, noc

__all__ = [
    "segment",
    "check_prompt",
    "load_model",
    "ClickModel",
    "InteractiveConfig",
    "DEFAULT_MODEL_DIR",
    "grabcut_segment",
    "brush_session",
    "next_click",
    "click_session",
    "noc",
    "iou",
    "Window",
    "window_for_prompt",
]
