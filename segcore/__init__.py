"""segcore: scan I/O, segmentation models, refinement and review for the segcore app.

Importing segcore is cheap: TensorFlow is only imported by the submodules that
need it (``segcore.models``, ``segcore.train``, ``segcore.data``, ``segcore.infer``).
"""

from .io import CT_PRESETS, Scan, ScanError, auto_window, load_scan, window

__all__ = ["Scan", "ScanError", "load_scan", "window", "auto_window", "CT_PRESETS"]
__version__ = "0.1.0"
