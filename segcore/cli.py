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


def _cmd_train(args) -> int:
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
    train_ds = make_dataset(tr_i, tr_m, config, batch_size=args.batch_size, shuffle=True, augment_data=True,
                            seed=args.seed, crop=args.crop or None, repeat=args.steps_per_epoch is not None)
    val_ds = make_dataset(va_i, va_m, config, batch_size=8)
    strategy = make_strategy(args.devices)
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

    history = train(model, train_ds, val_ds, num_classes=config.num_classes, epochs=args.epochs, loss=loss,
                    steps_per_epoch=args.steps_per_epoch,
                    learning_rate=args.lr, out_dir=Path(args.out) / "logs" if args.logs else None,
                    custom_loop=args.custom_loop, strategy=strategy, patience=args.patience, progress=progress)
    elapsed = time.perf_counter() - t0
    from .data import load_mask
    from .io import load_scan

    te_i, te_m = list_pairs(data / "test")
    ev = evaluate_model(model, config, [load_scan(p).slice() for p in te_i], [load_mask(p) for p in te_m])
    config.metrics = {"test": ev, "train_seconds": round(elapsed, 1), "epochs_run": len(history),
                      "seconds_per_epoch": round(float(np.median([h["seconds"] for h in history])), 2)}
    model.compile()
    save_model(model, config, args.out)
    print(json.dumps(config.metrics, indent=1))
    return 0


def _load_gt_pairs(folder: Path):
    from .data import list_pairs, load_mask
    from .io import load_scan

    imgs, masks = list_pairs(folder)
    return imgs, [load_scan(p) for p in imgs], [load_mask(p) for p in masks]


def _cmd_evaluate(args) -> int:
    from .models import load_model
    from .train import evaluate_model

    model, config = load_model(args.model)
    _, scans, masks = _load_gt_pairs(Path(args.data))
    spacing = scans[0].slice_spacing() if scans and scans[0].spacing else None
    ev = evaluate_model(model, config, [s.slice() for s in scans], masks, spacing)
    print(f"{'class':<14}{'dice':>8}{'iou':>8}{'hd95':>9}")
    for name, row in ev["per_class"].items():
        print(f"{name:<14}{row['dice']:8.4f}{row['iou']:8.4f}{row['hd95']:9.2f}")
    print(f"mean foreground dice: {ev['mean_foreground_dice']:.4f} on {ev['n_images']} images")
    if args.json:
        Path(args.json).write_text(json.dumps(ev, indent=1))
        print(f"wrote {args.json}")
    return 0


def _cmd_predict(args) -> int:
    import cv2

    from .infer import predict_proba
    from .io import ScanError, load_scan
    from .models import load_model
    from .viz import save_label_nifti

    model, config = load_model(args.model)
    src = Path(args.input)
    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for i, f in enumerate(files, 1):
        try:
            scan = load_scan(f)
        except ScanError as exc:
            print(f"\r[{i}/{len(files)}] skipped {f.name}: {exc}", file=sys.stderr)
            failures += 1
            continue
        stem = f.name.split(".")[0]
        if scan.is_volume:
            labels = np.stack([predict_proba(model, scan.pixels[z], config).argmax(-1) for z in range(scan.num_slices)])
            for z in range(labels.shape[0]):
                cv2.imwrite(str(out / f"{stem}_z{z:03d}_mask.png"), labels[z].astype(np.uint8))
        else:
            labels = predict_proba(model, scan.slice(), config).argmax(-1)
            cv2.imwrite(str(out / f"{stem}_mask.png"), labels.astype(np.uint8))
        if scan.format == "nifti" or scan.affine is not None:
            save_label_nifti(labels.astype(np.uint8), scan, out / f"{stem}_mask.nii.gz")
        bar = "#" * int(30 * i / len(files))
        print(f"\r[{bar:<30}] {i}/{len(files)} {f.name}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"wrote masks for {len(files) - failures} of {len(files)} files to {out}")
    return 1 if failures == len(files) else 0


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

    p = sub.add_parser("predict", help="write masks for a file or folder of scans")
    p.add_argument("input", help="a scan file or a folder")
    p.add_argument("--model", default="sample_data/models/default")
    p.add_argument("--out", default="predictions")
    p.set_defaults(func=_cmd_predict)

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

    p = sub.add_parser("train-instances", help="train the compact Mask R-CNN on sample_data/instances")
    p.add_argument("--data", default="sample_data/instances")
    p.add_argument("--out", default="sample_data/models/maskrcnn")
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.set_defaults(func=lambda a: __import__("segcore.instances.train", fromlist=["x"]).train_maskrcnn(
        a.data, a.out, steps=a.steps, batch_size=a.batch_size, learning_rate=a.lr) and 0)

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
    return int(args.func(args) or 0)
