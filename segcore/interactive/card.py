"""``MODEL_CARD.md`` for the click network: data, split, intended use, training record and measured metrics."""

from __future__ import annotations

import json
from pathlib import Path

from .data import RADIOMICS_CASES, trained_cases
from .model import InteractiveConfig

__all__ = ["write_card", "render_card"]


def render_card(config: InteractiveConfig, results: dict | None = None) -> str:
    tr = config.training or {}
    st = tr.get("settings", {})
    lines = [
        "# Click / box segmentation network (segcore.interactive)", "",
        "Class-agnostic interactive segmentation: from positive/negative clicks and/or a box on one 2-D slice, the "
        "mask of the object pointed at (RITM / DeepGrow style). Load with `segcore.interactive.load_model()`, call "
        "`segcore.interactive.segment(image, clicks, box=..., previous=..., model=...)`.", "",
        "## Model", "",
        f"Compact U-Net, filters {list(config.filters)}, input {config.net_size}x{config.net_size}x{config.channels}: "
        f"crop percentile-linear ({config.percentiles[0]:g}-{config.percentiles[1]:g} %) and rank-equalised, "
        f"positive and negative click disks (radius {config.click_radius:g} network px), previous mask, box. The "
        f"window is the prompt's extent plus {config.margin:g} of it on each side, at least {config.min_side:g} image "
        f"px, resampled to {config.net_size}x{config.net_size}; grown (at least 1.5x, up to "
        f"{config.max_expansions} times) when the object reaches its edge or the window framing it would be more "
        f"than {1 + config.reframe:g}x larger. A click whose pixel ends on the wrong side of the threshold "
        f"({config.threshold:g}) moves it, within {config.click_snap_radius:g} image px, to the click's own "
        "probability, so every click takes effect. "
        + ("The window's probabilities are the mean over its 4 flips (one batched call of 4); the unflipped pass "
           "alone decides whether the window grows. " if config.flip_average else "")
        + "Weights: `model.keras` (Keras 3, loads with `safe_mode=True`); settings: `config.json`.", "",
        "## Training data and split", "",
        f"Trained {'further' if tr.get('parent') else 'from scratch'}, seed {st.get('seed', 0)}, by "
        f"`python -m segcore train-interactive` "
        f"({st.get('steps', '?')} steps of {st.get('batch_size', '?')} prompts, Adam {st.get('learning_rate', '?')} "
        f"with cosine decay, BCE + soft Dice) on the CPU in {tr.get('seconds', '?')} s. Objects in the pool: "
        f"{json.dumps(tr.get('pool', {}))}.", "",
        *([f"This is a second stage: it continues from the model trained by `python -m segcore train-interactive` "
           f"(defaults: {tr['parent']['settings']['steps']} steps, seed {tr['parent']['settings']['seed']}, "
           f"{tr['parent']['seconds']} s; PARENT below: that model's folder, in git history before this stage), "
           f"with up to "
           f"{st.get('max_sim_rounds')} simulator rounds per batch and a pool drawn with seed {st.get('seed')}: "
           f"`python -m segcore train-interactive --init PARENT --steps {st.get('steps')} "
           f"--lr {st.get('learning_rate')} --seed {st.get('seed')} --sim-rounds {st.get('max_sim_rounds')} "
           f"--source-weights '{json.dumps(st.get('source_weights'))}'"
           + (f" --radiomics-cases {','.join(st['radiomics_cases'])}" if st.get("radiomics_cases") else "")
           + "`.", ""]
          if tr.get("parent") else []),
        "- `synth`: seeded synthetic scenes (`segcore.interactive.synth.make_scene`): star blobs, ellipses, lobulated "
        "and polygonal shapes, thick curves, 3-45 px radius, flat/noisy/rim/centre textures, either polarity, "
        "touching clusters, blur, noise, random monotone intensity mapping.",
        "- `phantom`: lesions and the organ of CT-like phantoms (`segcore.phantom.make_phantom`) with seeds "
        "7,000,000+ (the committed sample set uses 202,600,000+; its test split is a benchmark set).",
        "- `instances`: touching blobs (`segcore.instances.data.make_instance_phantom`, seeds 8,000,000+).",
        "- `stardist`: the stardist 0.9.2 demo stack (BSD-3-Clause, Uwe Schmidt, Martin Weigert), sub-volume "
        "x < 28 only (z-slices, y-z and x-z planes). The 21 nuclei lying entirely at x >= 28 are held out: no "
        "pixel of them is in the training sub-volume; their z cross-sections (>= 30 px) are the nuclei test set.",
        _radiomics_line(trained_cases(config)), "",
        "Training prompts mimic `segment()`: first click at the interior-most point or a random interior point, "
        "one-click / expanded / object-framed windows, 25 % box prompts, then 0-3 rounds of the standard click "
        "simulator with the network's own prediction fed back as the previous mask.", "",
        "## Intended use", "",
        "Speeding up manual annotation of one object at a time on 2-D slices (CT, MR, microscopy) in segcore's "
        "correction and review tools, with a human checking every result. Not a diagnostic device; not validated "
        "for any clinical decision. Weak spots: objects larger than ~4x the first window, very low contrast "
        "boundaries, objects without a visible edge (the user must correct them).", "",
    ]
    if results:
        lines += ["## Metrics (bench/interactive.py, held-out objects)", "",
                  "| data set | objects | NoC@85 | NoC@90 | IoU 1 click | IoU 3 clicks | IoU 5 clicks | IoU box | "
                  "GrabCut NoC@85 | GrabCut NoC@90 |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in results["network"].items():
            g = results["grabcut"][name]
            lines.append(f"| {name} | {r['n_objects']} | {r['noc85']} | {r['noc90']} | {r['iou_1_click']} | "
                         f"{r['iou_3_clicks']} | {r['iou_5_clicks']} | {r['iou_box_only']} | {g['noc85']} | "
                         f"{g['noc90']} |")
        t = results.get("timing") or {}
        if t:
            lines += ["", f"Time per click on {t['image']}: {t['network']['first_click_ms_median']} ms (first "
                      f"click), {t['network']['second_click_ms_median']} ms (second click), median on "
                      f"{results.get('machine', 'this machine')}. Commands: `{results['command']}`"
                      + (f", then `{results['timing_command']}`" if results.get("timing_command") else "") + "."]
        lines.append("")
    return "\n".join(lines)


def _radiomics_line(cases: set[str]) -> str:
    origin = "the pyradiomics 3.1.0 test cases (brain1 MR, breast1 MR, lung1 CT; BSD-3-Clause, Harvard Medical School)"
    if not cases:
        return f"- Not used for training: {origin} are entirely held out as the real-lesion test set."
    held = [c for c in RADIOMICS_CASES if c not in cases]
    return (f"- `radiomics`: the lesion slices of {', '.join(sorted(cases))}, from {origin}. Held out: "
            f"{', '.join(held) if held else 'none'}; this model's figures on a case it trained on are not held-out "
            "figures (bench/interactive.py scores each case with a model that never saw it).")


def write_card(directory: str | Path, config: InteractiveConfig, results: dict | None = None) -> Path:
    path = Path(directory) / "MODEL_CARD.md"
    path.write_text(render_card(config, results))
    return path
