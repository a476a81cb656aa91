"""``python -m segcore train|evaluate|predict|make-sample-data``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np


def _cmd_make_sample_data(args) -> int:
    from .phantom import write_sample_set

    counts = {"train": args.train, "val": args.val, "test": args.test}
    print(json.dumps(write_sample_set(args.out, counts, size=args.size, seed=args.seed)))
    return 0


def _launch_workers(args) -> int:
    """``train --workers N`` without TF_CONFIG: N worker processes of one loopback cluster (worker 0 saves)."""
    from .distributed import launch_local_workers

    argv, skip = [], False
    for a in args.argv:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            argv.append(a)
    codes = launch_local_workers(argv, args.workers)
    if any(codes):
        print(f"training workers exited with {codes}", file=sys.stderr)
    return max(codes, key=abs)


def _cmd_train(args) -> int:
    from .distributed import cluster_config

    if args.workers > 1 and cluster_config() is None:
        return _launch_workers(args)
    cluster = cluster_config()
    strategy = None
    if cluster is not None:  # one worker of a cluster: the strategy must exist before any other TensorFlow op
        from .distributed import multi_worker_strategy

        strategy = multi_worker_strategy()

    import keras

    from .data import list_pairs, make_dataset
    from .losses import get_loss
    from .models import ModelConfig, get_model, save_model
    from .train import evaluate_model, make_strategy, train

    keras.utils.set_random_seed(args.seed)
    data = Path(args.data)
    class_names = tuple(args.class_names.split(","))
    config = ModelConfig(
        architecture=args.model,
        num_classes=len(class_names),
        class_names=class_names,
        input_size=(args.size, args.size),
        builder_kwargs={"base_filters": args.base_filters, "depth": args.depth, "dropout": args.dropout,
                        "batch_norm": args.batch_norm}
        if args.model.startswith("unet") else {"backbone": args.backbone},
        version=args.version,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        trained_on=[str(data / "train")],
    )
    tr_i, tr_m = list_pairs(data / "train")
    va_i, va_m = list_pairs(data / "val")
    train_ds = make_dataset(tr_i, tr_m, config, batch_size=args.batch_size, shuffle=True,
                            augment_data=not args.no_augment, seed=args.seed, crop=args.crop or None,
                            repeat=args.steps_per_epoch is not None)
    val_ds = make_dataset(va_i, va_m, config, batch_size=8)
    if cluster is not None:  # every worker reads the same files and keeps its share of each global batch
        import tensorflow as tf

        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds, val_ds = train_ds.with_options(opts), val_ds.with_options(opts)
    strategy = strategy or make_strategy(args.devices)
    with strategy.scope():
        kwargs = dict(config.builder_kwargs)
        shape = (None, None, 1) if args.model.startswith("unet") else (args.size, args.size, 1)
        model = get_model(args.model, input_shape=shape, num_classes=config.num_classes, **kwargs)
        if args.init:
            import keras as _k

            init = _k.saving.load_model(args.init, compile=False, safe_mode=True)
            model.set_weights(init.get_weights())
            print(f"initialised from {args.init}", flush=True)
    weights = None
    if args.loss in ("weighted_ce", "wce_batch_dice"):
        from .data import load_mask
        from .losses import class_weights_from_masks

        # square-rooted inverse frequency: the rare lesion class is boosted without swamping the rest
        weights = class_weights_from_masks([load_mask(p) for p in tr_m], config.num_classes, power=0.5)
    loss = get_loss(args.loss, class_weights=weights)
    t0 = time.perf_counter()

    def progress(rec):
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}), flush=True)

    from .distributed import is_chief, weights_fingerprint, worker_index

    chief = is_chief(cluster)
    initial = [w.copy() for w in model.get_weights()] if cluster is not None else []
    # with a cluster, the GradientTape loop: Keras 3.15's model.fit cannot take MultiWorkerMirroredStrategy's
    # distributed batches (it fails converting PerReplica values)
    history = train(model, train_ds, val_ds, num_classes=config.num_classes, epochs=args.epochs, loss=loss,
                    steps_per_epoch=args.steps_per_epoch,
                    learning_rate=args.lr, out_dir=Path(args.out) / "logs" if args.logs and chief else None,
                    custom_loop=args.custom_loop or cluster is not None, strategy=strategy, patience=args.patience,
                    progress=progress if chief else None)
    elapsed = time.perf_counter() - t0
    if cluster is not None:
        update = max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(), initial))
        print(json.dumps({"worker": worker_index(cluster), "weights_sha256": weights_fingerprint(model),
                          "max_weight_update": update, "epochs_run": len(history), "first": history[0],
                          "last": history[-1]}), flush=True)
        if not chief:  # the chief saves; the others' copies are the same weights
            return 0
    from .labels import load_gt_pairs

    te_images, te_masks, _ = load_gt_pairs(data / "test")
    ev = evaluate_model(model, config, te_images, te_masks)
    config.metrics = {"test": ev, "train_seconds": round(elapsed, 1), "epochs_run": len(history),
                      "seconds_per_epoch": round(float(np.median([h["seconds"] for h in history])), 2)}
    model.compile()
    save_model(model, config, args.out)
    print(json.dumps(config.metrics, indent=1))
    return 0


def _cmd_evaluate(args) -> int:
    from .models import load_model
    from .train import evaluate_model

    from .labels import load_gt_pairs

    model, config = load_model(args.model)
    images, masks, scans = load_gt_pairs(Path(args.data))
    spacing = scans[0].slice_spacing() if scans and scans[0].spacing else None
    ev = evaluate_model(model, config, images, masks, spacing)
    print(f"{'class':<14}{'dice':>8}{'iou':>8}{'hd95':>9}")
    for name, row in ev["per_class"].items():
        print(f"{name:<14}{row['dice']:8.4f}{row['iou']:8.4f}{row['hd95']:9.2f}")
    print(f"mean foreground dice: {ev['mean_foreground_dice']:.4f} on {ev['n_images']} images")
    if args.json:
        Path(args.json).write_text(json.dumps(ev, indent=1))
        print(f"wrote {args.json}")
    return 0


def _cmd_predict(args) -> int:
    from .batch import BatchConfig, ray_available, run_batch

    engine = args.engine
    if engine == "ray" and not ray_available():
        print("Ray is not installed (pip install 'ray[data]'); use --engine local to run in this process.",
              file=sys.stderr)
        return 2
    if engine == "auto" and not ray_available():
        print("Ray is not installed: segmenting in this process (--engine local).", file=sys.stderr)
    cfg = BatchConfig(model_dir=args.model, refine=not args.no_refine, runtime=args.runtime, table=args.table,
                      scans_per_batch=args.scans_per_batch)
    report = run_batch(args.input, args.out, cfg, engine=engine, workers=args.workers, address=args.address,
                       progress=not args.quiet)
    print(f"{report.processed} scans segmented, {report.skipped} already complete, {report.failed} failed, "
          f"in {report.seconds:.1f} s ({report.engine}, {report.workers} worker(s)); masks for {report.ok} of "
          f"{report.total} scans in {args.out}; table: {report.table}")
    if args.json_report:
        Path(args.json_report).write_text(json.dumps(report.to_json(), indent=1))
    return 1 if report.total and report.failed == report.processed == report.total else 0


def _cmd_train_interactive(args) -> int:
    from .interactive.card import write_card
    from .interactive.train import TrainSettings, train_interactive

    overrides = {k: v for k, v in (("click_radius", args.click_radius), ("min_side", args.min_side),
                                   ("max_expansions", args.max_expansions)) if v is not None}
    extra = {"source_weights": json.loads(args.source_weights)} if args.source_weights else {}
    try:
        settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                                 max_sim_rounds=args.sim_rounds, init=args.init, large_synth_scenes=args.large_synth,
                                 large_phantoms=args.large_phantoms, boundary_weight=args.boundary_weight,
                                 radiomics_cases=tuple(c for c in (args.radiomics_cases or "").split(",") if c),
                                 config_overrides=overrides, **extra)
    except ValueError as exc:
        raise SystemExit(f"train-interactive: {exc}") from None
    model = train_interactive(args.out, settings, shared_data=args.shared_data)
    write_card(args.out, model.config)
    print(json.dumps({k: v for k, v in model.config.training.items() if k != "history"}, indent=1))
    return 0


def _cmd_train_instances(args) -> int:
    from .instances.train import InstanceTrainConfig, train_from_coco, train_maskrcnn

    init = None if args.from_scratch else args.init
    seconds = args.max_minutes * 60 if args.max_minutes else None
    if args.coco:
        cfg = InstanceTrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                                  eval_every=args.eval_every, patience=args.patience, seed=args.seed,
                                  max_seconds=seconds)
        train_from_coco(args.coco, args.out or "models/maskrcnn_coco", val_coco=args.val_coco,
                        val_fraction=args.val_fraction, pixel_scale=args.pixel_scale, init=init, config=cfg)
    else:
        train_maskrcnn(args.data, args.out or "sample_data/models/maskrcnn", steps=args.steps,
                       batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                       stardist_dir=args.stardist or None, init=init, max_seconds=seconds,
                       eval_every=args.eval_every, patience=args.patience)
    return 0


def _cmd_segment_volume(args) -> int:
    """One volume (a DICOM series folder/zip/files, NIfTI or NRRD) -> NIfTI label volume (+ DICOM SEG for series)."""
    from .dicomseg import seg_not_offered_reason, write_seg
    from .io import ScanError, load_scan
    from .models import load_model
    from .pipeline import segment_volume
    from .series import SeriesChoiceError, load_series
    from .viz import nifti_bytes

    try:
        inputs = [Path(p) for p in args.input]
        if len(inputs) > 1 or inputs[0].is_dir():
            scan = load_series(inputs, series_uid=args.series_uid,
                               name=inputs[0].name if inputs[0].is_dir() else None)
        else:
            scan = load_scan(inputs[0])
    except SeriesChoiceError as exc:
        print(f"{exc}\nPick one with --series-uid.", file=sys.stderr)
        return 2
    except ScanError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    for w in scan.metadata.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    model, config = load_model(args.model)

    def bar(fraction: float, message: str) -> None:
        print(f"\r[{'#' * int(30 * fraction):<30}] {message:<24}", end="", file=sys.stderr, flush=True)

    seg = segment_volume(scan, model, config, progress=bar, keep_probs=False)
    print(file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(scan.source_name.split(" ")[0]).name.split(".")[0] or "volume"
    (out / f"{stem}_labels.nii.gz").write_bytes(nifti_bytes(seg.refined, scan))
    written = [f"{stem}_labels.nii.gz"]
    reason = seg_not_offered_reason(scan)
    if reason is None and seg.refined.any():
        (out / f"{stem}_seg.dcm").write_bytes(write_seg(seg.refined, scan, config.class_names, config.version,
                                                        corrected=False))
        written.append(f"{stem}_seg.dcm")
    elif reason:
        print(f"note: {reason}", file=sys.stderr)
    print(json.dumps({"written": written, "volumes_ml": seg.volumes_ml(), "seconds": seg.timings["total"]}))
    return 0


def _cmd_finetune(args) -> int:
    from .jobs import JobManager, JobSpec
    from .store import REPO_ROOT, Workspace

    ws = Workspace(args.data_dir, default_model_dir=REPO_ROOT / "sample_data" / "models" / "default")
    held = [c for c in args.held_out.split(",") if c]
    train_ids = [c for c in args.train.split(",") if c] or [c.id for c in ws.list_corrections() if c.id not in held]
    settings = {}
    for item in args.set:
        name, _, value = item.partition("=")
        settings[name.strip()] = json.loads(value) if value.strip() not in ("", "None") else None
    classes = [c for c in args.classes.split(",") if c] or None
    mgr = JobManager(ws)
    jid = mgr.submit(JobSpec(args.by, train_ids, held_out_ids=held, settings=settings, class_names=classes))
    print(f"job {jid} queued", flush=True)
    seen = 0
    while not (st := mgr.get(jid)).finished:
        lines = mgr.log(jid).splitlines()
        for line in lines[seen:]:
            if " progress " not in line or '"val_dice"' in line:
                print(line, flush=True)
        seen = len(lines)
        time.sleep(1.0)
    print(json.dumps({"state": st.state, "error": st.error, **st.result}, indent=1))
    mgr.shutdown()
    return 0 if st.state == "done" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segcore", description="segcore command line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on folders with images/ and masks/")
    p.add_argument("--data", default="sample_data/phantom", help="folder with train/, val/, test/ splits")
    p.add_argument("--out", default="sample_data/models/default", help="output model folder")
    p.add_argument("--model", default="unet", help="registered model name")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--class-names", default="background,organ,lesion")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--batch-norm", action="store_true",
                   help="batch norm after each conv (off by default: with small batches its running statistics "
                        "lagged the weights and validation collapsed)")
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=128, help="train on random crops of this size (0: whole images)")
    p.add_argument("--steps-per-epoch", type=int, default=30)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--loss", default="wce_batch_dice",
                   help="ce, weighted_ce, dice, jaccard, ce_dice, wce_batch_dice, learned_ce_dice")
    p.add_argument("--custom-loop", action="store_true", help="use the GradientTape loop instead of model.fit")
    p.add_argument("--devices", type=int, default=None, help="replicas for MirroredStrategy")
    p.add_argument("--workers", type=int, default=1,
                   help="train as N worker processes of this machine (MultiWorkerMirroredStrategy on loopback "
                        "ports; --batch-size is the global batch); on several machines set TF_CONFIG instead")
    p.add_argument("--no-augment", action="store_true", help="no random flips/rotations/intensity changes")
    p.add_argument("--version", default="v1")
    p.add_argument("--init", default=None, help="start from the weights of this .keras file (continue training)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logs", action="store_true", help="write CSV/JSON logs and best checkpoint under OUT/logs")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="per-class Dice/IoU/HD95 on a folder with images/ and masks/")
    p.add_argument("--model", default="sample_data/models/default")
    p.add_argument("--data", default="sample_data/phantom/test")
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="segment a file or a folder of scans (Ray Data or this process; resumable)")
    p.add_argument("input", help="a scan file or a folder (searched recursively)")
    p.add_argument("--model", default="sample_data/models/default")
    p.add_argument("--out", default="predictions")
    p.add_argument("--engine", choices=["auto", "ray", "local"], default="auto",
                   help="ray: an actor pool on Ray Data; local: one process; auto: ray when installed")
    p.add_argument("--workers", type=int, default=None, help="Ray workers (model replicas); default: CPU count")
    p.add_argument("--address", default=None,
                   help="Ray cluster, e.g. ray://head:10001 (default: RAY_ADDRESS, else a private local Ray)")
    p.add_argument("--no-refine", action="store_true", help="write the raw argmax instead of the refined labels")
    p.add_argument("--runtime", default="auto",
                   help="auto, keras, openvino, openvino-bf16 or onnxruntime (see docs/SCALING.md)")
    p.add_argument("--table", default="results.csv", help="results table in OUT: *.csv or *.parquet")
    p.add_argument("--scans-per-batch", type=int, default=2, help="scans per worker call")
    p.add_argument("--json-report", default=None, help="also write the run's summary to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("segment-volume", help="segment a whole volume (DICOM series, NIfTI, NRRD): NIfTI + DICOM SEG")
    p.add_argument("input", nargs="+", help="a DICOM series folder, its files, a .zip of them, or a NIfTI/NRRD file")
    p.add_argument("--series-uid", default=None, help="SeriesInstanceUID to use when the input holds several")
    p.add_argument("--model", default="sample_data/models/default")
    p.add_argument("--out", default="predictions")
    p.set_defaults(func=_cmd_segment_volume)

    p = sub.add_parser("make-sample-data", help="regenerate the synthetic phantom set byte-for-byte")
    p.add_argument("--out", default="sample_data/phantom")
    p.add_argument("--train", type=int, default=120)
    p.add_argument("--val", type=int, default=20)
    p.add_argument("--test", type=int, default=30)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=2026)
    p.set_defaults(func=_cmd_make_sample_data)

    p = sub.add_parser("make-demo-data", help="regenerate sample_data/demo (phantoms + real radiomics cases)")
    p.add_argument("--out", default="sample_data/demo")
    p.add_argument("--radiomics", default="../shared/data/radiomics")
    p.set_defaults(func=lambda a: print(__import__("segcore.demo", fromlist=["x"]).write_demo_scans(a.out, a.radiomics)))

    p = sub.add_parser("make-instance-data", help="regenerate sample_data/instances (touching/overlapping blobs)")
    p.add_argument("--out", default="sample_data/instances")
    p.set_defaults(func=lambda a: print(__import__("segcore.instances.data", fromlist=["x"]).write_instance_set(a.out)))

    p = sub.add_parser("train-instances", help="train the compact Mask R-CNN (shipped recipe, or on a COCO file)")
    p.add_argument("--coco", default=None, help="COCO instances JSON (images relative to it; polygons or RLE, "
                   "several classes, crowd annotations skipped). Without it: the shipped model's recipe "
                   "(blob phantoms + the StarDist training slices)")
    p.add_argument("--val-coco", default=None, help="validation COCO JSON (default: hold out --val-fraction)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--pixel-scale", type=float, default=1.0, help="resize factor of the --coco images so that "
                   "objects are 10-60 px across (stored in the model as its default)")
    p.add_argument("--data", default="sample_data/instances", help="phantom folder (recipe)")
    p.add_argument("--stardist", default="../shared/data/stardist", help="StarDist folder for the recipe ('' : none)")
    p.add_argument("--init", default="sample_data/models/maskrcnn", help="resume from this model folder")
    p.add_argument("--from-scratch", action="store_true", help="ignore --init and start from random weights")
    p.add_argument("--out", default=None, help="output model folder (default: sample_data/models/maskrcnn for the "
                   "recipe, models/maskrcnn_coco with --coco)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--patience", type=int, default=4, help="evaluations without a better validation AP50")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_train_instances)

    p = sub.add_parser("train-interactive", help="train the click/box segmentation network (seeded)")
    p.add_argument("--out", default="sample_data/models/interactive")
    p.add_argument("--shared-data", default="../shared/data", help="folder with stardist/ (training sub-volume)")
    p.add_argument("--steps", type=int, default=3600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sim-rounds", type=int, default=3, help="most simulator rounds per batch (uniform above 3)")
    p.add_argument("--init", default=None, help="continue from this interactive model folder (fine-tuning stage)")
    p.add_argument("--large-synth", type=int, default=0, help="synthetic scenes upsampled 2x (large objects)")
    p.add_argument("--large-phantoms", type=int, default=0, help="phantoms generated at 512x512 (large lesions)")
    p.add_argument("--boundary-weight", type=float, default=0.0, help="extra BCE weight near object borders")
    p.add_argument("--radiomics-cases", default=None,
                   help="real lesion cases to train on, e.g. brain1,lung1 (the rest stay held out); source "
                        "'radiomics', which --source-weights must weigh")
    p.add_argument("--source-weights", default=None, help='JSON, e.g. {"synth": 0.3, "stardist": 0.3, ...}')
    p.add_argument("--click-radius", type=float, default=None, help="click disk radius, network px (new encoding)")
    p.add_argument("--min-side", type=float, default=None, help="one-click window side, image px")
    p.add_argument("--max-expansions", type=int, default=None, help="window re-framings per call")
    p.set_defaults(func=_cmd_train_interactive)

    p = sub.add_parser("finetune", help="fine-tune the active model on saved corrections as a background job")
    p.add_argument("--data-dir", default=None, help="workspace (default: SEGCORE_DATA_DIR or ./segcore_data)")
    p.add_argument("--by", required=True, help="who starts the job")
    p.add_argument("--train", default="", help="comma-separated correction ids (default: all)")
    p.add_argument("--held-out", default="", help="comma-separated correction ids for the evaluation only")
    p.add_argument("--classes", default="", help="new class set, background first, e.g. background,nucleus")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a FineTuneSettings field (repeatable), e.g. --set epochs=30")
    p.set_defaults(func=_cmd_finetune)

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return int(args.func(args) or 0)
