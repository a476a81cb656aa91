"""The serving process's heap: keep Python's full garbage collections off TensorFlow's long-lived objects.

No Streamlit import here: ``scripts/serve.py`` calls :func:`settle_heap` before the server starts, and importing
a module with Streamlit caches that early would give them a cache storage without the server's settings.
"""

from __future__ import annotations

import gc
import os


def settle_heap() -> None:
    """Collect garbage once, then hide every object alive now from later collections (``gc.freeze``).

    Streamlit runs a full garbage collection after every script run, fragment reruns included, and Keras'
    ``clear_session`` (which Streamlit calls after every run once Keras is imported) runs another. With TensorFlow
    and the models loaded each scans ~400,000 long-lived objects: ~0.2 s, twice per click of the Smart click
    tool (measured with py-spy on the server, bench/app_latency.py). Frozen objects are skipped, so those
    collections only scan what the runs created. Called after each model load (and by scripts/serve.py after
    its imports); unfreezing first lets the collection reclaim what an evicted model left in reference cycles.
    ``SEGCORE_NO_GC_FREEZE=1`` turns it off (the ablation in bench/results/app.json: every timed action is slower
    without it, e.g. a view switch 0.53 s instead of 0.31 s).
    """
    if os.environ.get("SEGCORE_NO_GC_FREEZE") == "1":
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
