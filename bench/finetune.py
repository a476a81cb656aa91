"""Fine-tuning on real data: segcore.finetune.adapt with its DEFAULT settings vs the best manual setting found.

Cases (real scans from ../shared/data, BSD-3; see its README):

* ``nuclei``  stardist img3d.tif/mask3d.tif (fluorescence, instance ids -> nucleus foreground); z-slices (61x57)
  upsampled to 256x256 tiles. Train on z 4,10 (2) or z 0,2,...,14 (8); test on z 18,20,...,30 (7 slices, >= 4
  slices away from any training slice).
* ``brain1``  radiomics brain1 MR lesion (256x256 slices; lesion on z 11-17). Train on z 12,14 (2) or z 7-14
  (8: four with lesion, four without); test on z 15,16,17.
* ``lung1``   radiomics lung1 CT lesion (512x512 slices; lesion on z 32-34). Train on z 32,33 (2) or z 26-33 (8);
  test on z 34 only (the data set has three lesion slices: a single test slice, read its figures with care).

Each case starts from the shipped model (sample_data/models/default) retargeted with
``segcore.finetune.retarget`` to the user's classes (background + nucleus, background + lesion). The score is
the foreground Dice pooled over the test slices at the model's 256x256 input.

Compared in the same run, per case and number of corrections:
* ``default``: ``adapt(...)`` with ``FineTuneSettings()`` (timed; the whole call);
* ``manual grid``: ``FineTuneSettings(epochs=E, learning_rate=L)`` for E x L (same augmentation, trained on all
  corrections, warm-up + cosine, no hold-out); the best grid cell by TEST Dice is an optimistic upper bound;
* ``previous app default``: ``segcore.train.fine_tune`` with 5 epochs at lr 1e-4 (what the page did before).

Gate: for the 8-correction runs the same corrections are also fine-tuned keeping the shipped class set
(nuclei labelled "organ", lesions "lesion") by a real fine-tune job (``segcore.jobs.JobManager``: corrections
saved in a temporary workspace, replay set and phantom test set as in the app), which evaluates the candidate
against the shipped model on the phantom test set + the case's test slices, stores the metrics with the version,
and ``Workspace.gate`` judges it. An in-domain case (8 corrected phantom validation images, 8 more held out)
shows the other side: replay on, gentler learning rate.

    flock /tmp/segcore-cpu.lock .venv/bin/python bench/finetune.py            # writes bench/results/finetune.json
    flock /tmp/segcore-cpu.lock .venv/bin/python bench/finetune.py --quick    # one case, small grid (smoke)
    # seed-averaged: defaults and the best grid cell with seeds 0,1,2 (bench/results/finetune_seeds.json)
    flock /tmp/segcore-cpu.lock .venv/bin/python bench/finetune.py --reuse-grid bench/results/finetune.json \
        --seeds 0,1,2 --out bench/results/finetune_seeds.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
OUT = ROOT / "bench" / "results" / "finetune.json"
T0 = time.perf_counter()

CASES = {
    "nuclei": {"train": {2: [4, 10], 8: [0, 2, 4, 6, 8, 10, 12, 14]}, "test": list(range(18, 31, 2)),
               "classes": ["background", "nucleus"], "shipped_label": 1},
    "brain1": {"train": {2: [12, 14], 8: list(range(7, 15))}, "test": [15, 16, 17],
               "classes": ["background", "lesion"], "shipped_label": 2},
    "lung1": {"train": {2: [32, 33], 8: list(range(26, 34))}, "test": [34],
              "classes": ["background", "lesion"], "shipped_label": 2},
}


def load_case(name: str):
    """``(slices, masks)``: raw 2-D images and binary foreground masks (uint8) of a case, indexed by z."""
    import cv2

    if name == "nuclei":
        import tifffile

        img = tifffile.imread(DATA / "stardist" / "img3d.tif").astype(np.float32)
        lab = tifffile.imread(DATA / "stardist" / "mask3d.tif")
        ims = [cv2.resize(s, (256, 256), interpolation=cv2.INTER_CUBIC) for s in img]
        ms = [cv2.resize((s > 0).astype(np.uint8), (256, 256), interpolation=cv2.INTER_NEAREST) for s in lab]
        return ims, ms
    from segcore.io import load_scan

    scan = load_scan(DATA / "radiomics" / f"{name}_image.nrrd")
    lab = load_scan(DATA / "radiomics" / f"{name}_label.nrrd")
    return ([scan.slice(0, z).astype(np.float32) for z in range(scan.num_slices)],
            [(lab.slice(0, z) > 0).astype(np.uint8) for z in range(lab.num_slices)])


def pooled_dice(model, config, images, masks) -> float:
    from segcore.finetune import _dice_on, prepare_pairs

    x, y = prepare_pairs(images, masks, config)
    return round(_dice_on(model, x, y, config.num_classes), 4)


SMOKE_BUDGET = None


def run_default(base, bcfg, tr_im, tr_m, te_im, te_m, seed: int = 0):
    from segcore.finetune import FineTuneSettings, adapt

    t = time.perf_counter()
    res = adapt(base, bcfg, tr_im, tr_m, settings=FineTuneSettings(time_budget_s=SMOKE_BUDGET, seed=seed))
    seconds = time.perf_counter() - t
    return res, {"dice": pooled_dice(res.model, res.config, te_im, te_m), "seconds": round(seconds, 1),
                 "epochs": res.epochs, "steps": res.steps, "learning_rate": res.learning_rate,
                 "replay": res.replay, "held_out_dice": None if res.held_out_dice is None else round(res.held_out_dice, 4),
                 "holdout": res.decisions.get("holdout"), "epochs_reason": res.decisions.get("epochs_reason"),
                 "capped_by_time": res.decisions.get("capped_by_time"), "domain_dice": res.decisions["domain_dice"]}


def run_manual(base, bcfg, tr_im, tr_m, te_im, te_m, epochs, lr, seed: int = 0) -> dict:
    """One manual setting (E epochs at peak lr, all corrections, no hold-out): test Dice and seconds."""
    from segcore.finetune import FineTuneSettings, adapt

    t = time.perf_counter()
    res = adapt(base, bcfg, tr_im, tr_m, settings=FineTuneSettings(epochs=epochs, learning_rate=lr,
                                                                  time_budget_s=10_000, seed=seed))
    return {"dice": pooled_dice(res.model, res.config, te_im, te_m), "seconds": round(time.perf_counter() - t, 1)}


def run_grid(base, bcfg, tr_im, tr_m, te_im, te_m, epochs, lrs):
    cells = []
    for e in epochs:
        for lr in lrs:
            cells.append({"epochs": e, "learning_rate": lr, **run_manual(base, bcfg, tr_im, tr_m, te_im, te_m, e, lr)})
            print(f"    grid E={e} lr={lr:g}: {cells[-1]}", flush=True)
    return cells


def run_seeds(name, n, base, bcfg, tr_im, tr_m, te_im, te_m, best_cell, seeds):
    """The defaults and the best manual cell, each run with every seed (the split, the crops and the augmentation
    change with it); seed 0 of the manual cell is the grid's own run. Picking the best of 9 grid cells by test
    Dice in one run favours the grid by the run-to-run noise; comparing both over seeds the pick did not see
    (:func:`seed_stats`) does not."""
    default, manual = [], []
    for seed in seeds:
        _, d = run_default(base, bcfg, tr_im, tr_m, te_im, te_m, seed=seed)
        default.append({"seed": seed, "dice": d["dice"], "seconds": d["seconds"], "steps": d["steps"]})
        print(f"    seed {seed} default: {default[-1]}", flush=True)
        if seed == 0:
            manual.append({"seed": 0, "dice": best_cell["dice"], "seconds": best_cell["seconds"], "source": "grid"})
            continue
        manual.append({"seed": seed, **run_manual(base, bcfg, tr_im, tr_m, te_im, te_m, best_cell["epochs"],
                                                  best_cell["learning_rate"], seed), "source": "this run"})
        print(f"    seed {seed} manual: {manual[-1]}", flush=True)
    return {"case": name, "n_corrections": n, "best_cell": {k: best_cell[k] for k in ("epochs", "learning_rate")},
            "default": default, "manual": manual, **seed_stats(default, manual)}


def seed_stats(default: list[dict], manual: list[dict]) -> dict:
    """Means of both arms over the seeds whose manual run was trained here: the grid's own run (seed 0) is the
    best of 9 cells picked by test Dice, so it carries the selection bias and stays out of the comparison."""
    fresh = [m["seed"] for m in manual if m.get("source") != "grid"]
    dm = float(np.mean([r["dice"] for r in default if r["seed"] in fresh]))
    mm = float(np.mean([r["dice"] for r in manual if r["seed"] in fresh]))
    return {"compared_seeds": fresh, "default_mean": round(dm, 4), "manual_mean": round(mm, 4),
            "gap_of_means": round(mm - dm, 4), "within_0.02": bool(mm - dm <= 0.02)}


def run_previous(base, bcfg, tr_im, tr_m, te_im, te_m):
    from segcore.train import fine_tune

    t = time.perf_counter()
    new, _ = fine_tune(base, tr_im, tr_m, config=bcfg, epochs=5, learning_rate=1e-4)
    return {"dice": pooled_dice(new, bcfg, te_im, te_m), "seconds": round(time.perf_counter() - t, 1),
            "epochs": 5, "learning_rate": 1e-4}


def _png_scan(image: np.ndarray) -> bytes:
    """A 16-bit PNG of a slice (negative values such as CT HU shifted by +1024, as the phantom PNGs store them)."""
    from segcore.labels import png_bytes

    a = np.asarray(image, np.float64)
    if a.min() < 0:
        a = a + 1024.0
    return png_bytes(np.clip(np.round(a), 0, 65535).astype(np.uint16))


def gate_check(name, train_pairs, held_pairs):
    """Run a real fine-tune job (segcore.jobs) keeping the shipped classes and report how the gate judges it.

    The job evaluates the candidate and the shipped model on the 30 phantom test images + the held-out
    corrections (the case's test slices) and stores the metrics with the version; ``Workspace.gate`` decides.
    """
    from segcore.jobs import JobManager, JobSpec
    from segcore.labels import load_gt_pairs
    from segcore.store import Workspace
    from segcore.train import evaluate_model

    with tempfile.TemporaryDirectory() as d:
        ws = Workspace(d, default_model_dir=ROOT / "sample_data" / "models" / "default")

        def save(pairs, tag):
            return [ws.save_correction(_png_scan(im), f"{name}-{tag}{i}.png", m, author="bench", model_version="v1",
                                       source="raw").id for i, (im, m) in enumerate(pairs)]

        train_ids, held_ids = save(train_pairs, "train"), save(held_pairs, "test")
        mgr = JobManager(ws)
        t = time.perf_counter()
        settings = {"time_budget_s": SMOKE_BUDGET} if SMOKE_BUDGET else {}
        jid = mgr.submit(JobSpec("bench", train_ids, held_out_ids=held_ids, settings=settings))
        st = mgr.wait(jid, 1800)
        seconds = time.perf_counter() - t
        mgr.shutdown()
        if st.state != "done":
            raise RuntimeError(f"gate job for {name} ended {st.state}: {st.error}\n{mgr.log(jid)[-3000:]}")
        v = st.result["version"]
        m = ws.versions()[v]["metrics"]
        decision = ws.gate(v)
        cand, ccfg = ws.validate_version(v)
        base, bcfg = ws.validate_version("v1")
        test_im, test_m, _ = load_gt_pairs(ROOT / "sample_data" / "phantom" / "test")
        phantom_cand = evaluate_model(cand, ccfg, test_im, test_m)["mean_foreground_dice"]
        phantom_base = evaluate_model(base, bcfg, test_im, test_m)["mean_foreground_dice"]
        held_im, held_m = [p[0] for p in held_pairs], [p[1] for p in held_pairs]
        case_cand = evaluate_model(cand, ccfg, held_im, held_m)["mean_foreground_dice"]
        case_base = evaluate_model(base, bcfg, held_im, held_m)["mean_foreground_dice"]
    ft = m["finetune"]
    return {"case": name, "n": len(train_pairs), "replay": ft["replay"], "domain_dice": ft["domain_dice"],
            "learning_rate": ft["learning_rate"], "job_seconds": round(seconds, 1),
            "case_test_dice_candidate": round(case_cand, 4), "case_test_dice_shipped": round(case_base, 4),
            "phantom_test_dice_candidate": round(phantom_cand, 4), "phantom_test_dice_shipped": round(phantom_base, 4),
            "gate_held_out_candidate": round(decision.candidate, 4), "gate_held_out_shipped": round(decision.baseline, 4),
            "gate_eval_set": m["eval_set"], "gate_passed": decision.passed, "gate_reason": decision.reason}


def phantom_pairs(split: str, n: int):
    from segcore.labels import load_gt_pairs

    ims, ms, _ = load_gt_pairs(ROOT / "sample_data" / "phantom" / split)
    return list(zip(ims[:n], ms[:n]))


def _commit() -> str:
    import subprocess

    if os.environ.get("SEGCORE_BENCH_COMMIT"):  # a snapshot without .git (git archive) says which commit it is
        return os.environ["SEGCORE_BENCH_COMMIT"]
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return r.stdout.strip() or "unknown (not a git checkout)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one case, two grid cells (smoke test)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--sizes", default="2,8")
    ap.add_argument("--epochs", default="10,30,90")
    ap.add_argument("--lrs", default="3e-4,1e-3,3e-3")
    ap.add_argument("--no-gate", action="store_true")
    ap.add_argument("--reuse-grid", default=None, metavar="JSON",
                    help="take the manual grid and the previous-default rows from an earlier run's JSON (the manual "
                         "path of adapt() unchanged since) and measure only the defaults and the gate jobs again")
    ap.add_argument("--seeds", default=None, metavar="LIST",
                    help="with --reuse-grid: run the defaults and the grid's best cell with each of these seeds "
                         "(e.g. 0,1,2) and compare their means (written to --out; no gate, no grid)")
    ap.add_argument("--append", action="store_true",
                    help="with --seeds: add these seeds' runs to the cases already in --out (more seeds, one table)")
    ap.add_argument("--smoke-budget", type=float, default=None,
                    help="NOT a measurement: cap every adapt() call at this many seconds to check the script runs")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    global SMOKE_BUDGET
    SMOKE_BUDGET = args.smoke_budget
    import tensorflow as tf

    from segcore.finetune import retarget
    from segcore.models import load_model

    threads = (tf.config.threading.get_intra_op_parallelism_threads(), os.cpu_count())
    base, bcfg = load_model(ROOT / "sample_data" / "models" / "default")
    cases = args.cases.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    epochs = [int(e) for e in args.epochs.split(",")]
    lrs = [float(v) for v in args.lrs.split(",")]
    if args.quick:
        cases, sizes, epochs, lrs = cases[:1], sizes[:1], epochs[:1], lrs[1:2]
    rows, gates = [], []
    reused = {}
    if args.reuse_grid:
        old = json.loads(Path(args.reuse_grid).read_text())
        reused = {(r["case"], r["n_corrections"]): r for r in old["cases"]}
    if args.seeds:
        if not reused:
            ap.error("--seeds needs --reuse-grid (the grid whose best cell is run again)")
        return seeds_main(args, argv, base, bcfg, cases, sizes, reused, old, [int(v) for v in args.seeds.split(",")])
    for name in cases:
        spec = CASES[name]
        ims, ms = load_case(name)
        model, config = retarget(base, bcfg, spec["classes"])
        te_im, te_m = [ims[z] for z in spec["test"]], [ms[z] for z in spec["test"]]
        start_dice = pooled_dice(model, config, te_im, te_m)
        for n in sizes:
            tr = spec["train"][n]
            tr_im, tr_m = [ims[z] for z in tr], [ms[z] for z in tr]
            print(f"{name} n={n}", flush=True)
            _, default = run_default(model, config, tr_im, tr_m, te_im, te_m)
            print(f"  default: {default}", flush=True)
            if (name, n) in reused:
                previous, grid = reused[(name, n)]["previous_default"], reused[(name, n)]["grid"]
            else:
                previous = run_previous(model, config, tr_im, tr_m, te_im, te_m)
                grid = run_grid(model, config, tr_im, tr_m, te_im, te_m, epochs, lrs)
            best = max(grid, key=lambda c: c["dice"])
            rows.append({"case": name, "n_corrections": n, "train_slices": tr, "test_slices": spec["test"],
                         "classes": spec["classes"], "dice_before": start_dice, "default": default,
                         "best_manual": best, "gap": round(best["dice"] - default["dice"], 4),
                         "within_0.02": bool(best["dice"] - default["dice"] <= 0.02),
                         "previous_default": previous, "grid": grid, "grid_reused": (name, n) in reused})
        if not args.no_gate and not args.quick and 8 in spec["train"]:
            label = spec["shipped_label"]
            gates.append(gate_check(name, [(ims[z], ms[z] * label) for z in spec["train"][8]],
                                    [(ims[z], ms[z] * label) for z in spec["test"]]))
            print(f"  gate: {gates[-1]}", flush=True)
    if not args.no_gate and not args.quick:
        # in domain: 8 corrected phantom validation images, the phantom test set as the shipped domain
        gates.append(gate_check("phantom (in domain)", phantom_pairs("val", 8), phantom_pairs("val", 16)[8:]))
        print(f"  gate: {gates[-1]}", flush=True)
    if reused:
        epochs, lrs = old["grid"]["epochs"], old["grid"]["learning_rates"]
    out = {"cases": rows, "gate": gates, "grid": {"epochs": epochs, "learning_rates": lrs},
           "grid_source": (f"grid and previous-default rows measured by an earlier run of this script at commit "
                           f"{old.get('commit', '?')} (same manual path), defaults and gates measured now"
                           if reused else "measured in this run"), "commit": _commit(),
           "machine": {"cpus": os.cpu_count(), "tf_intra_op_threads": threads[0], "python": platform.python_version()},
           "note": "Dice = foreground Dice pooled over the test slices at the model's 256x256 input; 'default' is "
                   "adapt() with FineTuneSettings() and its time is the whole call on this machine; 'best_manual' "
                   "is the grid cell with the best TEST Dice (an optimistic upper bound).",
           "command": " ".join(["flock /tmp/segcore-cpu.lock .venv/bin/python bench/finetune.py",
                                *(argv if argv is not None else sys.argv[1:])]),
           "smoke_only": args.smoke_budget is not None,
           "seconds_total": round(time.perf_counter() - T0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


def seeds_main(args, argv, base, bcfg, cases, sizes, reused, old, seeds) -> int:
    from segcore.finetune import retarget

    rows = []
    for name in cases:
        spec = CASES[name]
        ims, ms = load_case(name)
        model, config = retarget(base, bcfg, spec["classes"])
        te_im, te_m = [ims[z] for z in spec["test"]], [ms[z] for z in spec["test"]]
        for n in sizes:
            tr = spec["train"][n]
            best = max(reused[(name, n)]["grid"], key=lambda c: c["dice"])
            print(f"{name} n={n} best cell {best['epochs']} epochs, lr {best['learning_rate']:g}", flush=True)
            rows.append(run_seeds(name, n, model, config, [ims[z] for z in tr], [ms[z] for z in tr], te_im, te_m,
                                  best, seeds))
    command = " ".join(["flock /tmp/segcore-cpu.lock .venv/bin/python bench/finetune.py",
                        *(argv if argv is not None else sys.argv[1:])])
    runs = [{"seeds": seeds, "commit": _commit(), "seconds": round(time.perf_counter() - T0, 1), "command": command}]
    if args.append and Path(args.out).is_file():
        before = json.loads(Path(args.out).read_text())
        earlier = {(c["case"], c["n_corrections"]): c for c in before["cases"]}
        for r in rows:
            e = earlier.get((r["case"], r["n_corrections"]))
            if e is not None:
                r["default"], r["manual"] = e["default"] + r["default"], e["manual"] + r["manual"]
                r.update(seed_stats(r["default"], r["manual"]))
        runs = before.get("runs", [{"seeds": before["seeds"], "commit": before["commit"]}]) + runs
        seeds = before["seeds"] + seeds
    out = {"cases": rows, "seeds": seeds, "runs": runs, "commit": _commit(), "grid_file": args.reuse_grid,
           "grid_source": old.get("grid_source", f"measured at commit {old.get('commit', '?')}"),
           "note": "per case, the defaults and the grid's best cell (picked by test Dice at seed 0) each trained with "
                   "every seed; 'within 0.02' compares the means over the seeds other than 0 (seed 0 of the manual "
                   "cell is the grid's own run, the best of 9 by test Dice: shown, not compared)",
           "command": command, "seconds_total": round(time.perf_counter() - T0, 1)}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
