"""Adaptive fine-tuning, new class sets, model cards and background fine-tune jobs (tiny models, 32x32 images)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def disc_case(n, seed=0, label=1):
    """``n`` uint8 images with 3 bright discs each and their masks (discs = ``label``)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    ims, ms = [], []
    for _ in range(n):
        m = np.zeros((SIZE, SIZE), np.uint8)
        for _ in range(3):
            cy, cx = rng.integers(6, SIZE - 6, 2)
            r = rng.integers(3, 6)
            m[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = label
        im = 60 + 120 * (m > 0) + rng.normal(0, 15, (SIZE, SIZE))
        ims.append(np.clip(im, 0, 255).astype(np.uint8))
        ms.append(m)
    return ims, ms


def tiny(num_classes=3, names=("background", "organ", "lesion"), filters=8):
    import keras

    from segcore.models import ModelConfig, build_unet

    keras.utils.set_random_seed(0)
    cfg = ModelConfig(num_classes=num_classes, class_names=names, input_size=(SIZE, SIZE),
                      normalisation={"type": "percentile"}, builder_kwargs={"base_filters": filters, "depth": 2})
    return build_unet(num_classes=num_classes, base_filters=filters, depth=2), cfg


FAST = {"crop": SIZE, "batch_size": 4, "learning_rate": 3e-3, "encoder_lr_ratio": 1.0}


# ----------------------------------------------------------------------------- schedule
def test_crops_oversample_foreground_when_most_corrections_are_empty():
    """A lesion on 1 of 8 corrections is still in about ``foreground_crop_fraction`` of the crops (nnU-Net style)."""
    from segcore.finetune import FineTuneSettings, _sample_dataset

    n, size = 8, 64
    x = np.random.default_rng(0).random((n, size, size, 1)).astype(np.float32)
    y = np.zeros((n, size, size), np.uint8)
    y[5, 40:44, 10:14] = 1  # one small lesion on one corrected slice

    replay = (np.zeros((4, size, size, 1), np.float32), np.zeros((4, size, size), np.uint8))  # black: told apart
    replay[1][2, 20:24, 30:34] = 1

    def crops(images, fraction, with_replay=False):
        """(crop mean after augmentation, has lesion) for 320 crops."""
        s = FineTuneSettings(crop=16, batch_size=8, foreground_crop_fraction=fraction, replay_fraction=0.5)
        it = iter(_sample_dataset(images, y, list(range(n)), s, replay if with_replay else None, seed=0))
        return [(float(xb.numpy().mean()), bool(m.numpy().any())) for _ in range(40) for xb, m in zip(*next(it))]

    def share_with_lesion(fraction):
        return float(np.mean([hit for _, hit in crops(x, fraction)]))

    dark = x.copy()
    dark[5] *= 0.2  # the lesion slice dark, the empty ones mid-grey: a crop's brightness tells them apart
    half = crops(dark, 0.5)
    assert np.mean([hit for _, hit in half]) >= 0.4  # per image it would be 1/8 of half the crops
    assert np.mean([v > 0.3 for v, _ in half]) >= 0.3  # the empty corrections are still trained on (7/16 expected)
    assert 0.7 <= share_with_lesion(0.8) <= 0.95
    assert share_with_lesion(0.0) < 0.1   # random crops: a 4x4 lesion in a 16 px crop of a 64 px slice, rarely
    mixed = crops(x, 0.5, with_replay=True)
    from_replay = [hit for v, hit in mixed if v < 0.2]
    assert 0.35 <= len(from_replay) / len(mixed) <= 0.65 and np.mean(from_replay) >= 0.35  # replay oversampled too
    with pytest.raises(ValueError, match="foreground_crop_fraction must be in"):
        FineTuneSettings(foreground_crop_fraction=1.5)


def test_schedule_stops_early_on_held_out_dice():
    from segcore.finetune import FineTuneSettings, adapt

    model, cfg = tiny(2, ("background", "disc"))
    ims, ms = disc_case(5)
    s = FineTuneSettings(**FAST, max_epochs=400, time_budget_s=300, overfit_drop=0.0)
    res = adapt(model, cfg, ims, ms, settings=s)
    (fold,) = res.decisions["folds"]  # 5 corrections: one split, one image held out
    assert fold["held_out"] == [i for i in range(5) if i not in fold["train"]] and len(fold["held_out"]) == 1
    spe = res.decisions["steps_per_epoch"]
    cap = 400 * spe
    assert fold["steps"] < cap, "the hold-out run should stop early, not at the maximum"
    curve = [(h["step"], h["val_dice"]) for h in res.history if h["phase"] == "select" and "val_dice" in h]
    steps, dices = zip(*curve)
    # held-out Dice drove it: the chosen step is the best of the held-out curve, and the run stopped because
    # the Dice did not improve for the patience window after it
    assert fold["best_step"] == steps[int(np.argmax(dices))]
    assert fold["best_dice"] == pytest.approx(max(dices))
    assert fold["steps"] - fold["best_step"] >= max(s.min_patience_steps, fold["best_step"] // 2)
    assert max(dices) > 0.7, f"the tiny model should learn the discs; held-out curve {curve}"
    # the final model trains on all corrections for the chosen steps, scaled by n / n_train
    # (overfit_drop=0: the early-stopping point, not the rest of the time budget)
    assert res.steps == max(spe, round(fold["best_step"] * 5 / 4)) and "early stopping" in res.decisions["epochs_reason"]
    assert [h["phase"] for h in res.history].count("final") == res.steps
    fr = [h["fraction"] for h in res.history]
    assert fr == sorted(fr) and fr[-1] == 1.0
    assert res.decisions["replay"] is False and res.held_out_dice == pytest.approx(max(dices))


def test_plateau_without_overfitting_trains_for_the_time_budget():
    from segcore.finetune import FineTuneSettings, adapt

    model, cfg = tiny(2, ("background", "disc"))
    ims, ms = disc_case(4)
    res = adapt(model, cfg, ims, ms, settings=FineTuneSettings(**FAST, overfit_drop=1.0, time_budget_s=8))
    (fold,) = res.decisions["folds"]
    assert "time budget allows" in res.decisions["epochs_reason"]
    assert res.steps >= max(1, round(fold["best_step"] * 4 / 3))
    # the reported steps are the steps trained (the final run may stop at the deadline before its plan)
    continued = res.decisions["continued_from_hold_out_run"]["steps"]
    assert [h["phase"] for h in res.history].count("final") == res.steps - continued
    assert res.decisions["final_steps_trained"] == res.steps - continued <= res.decisions["final_steps"]
    assert res.seconds < 8 + 4  # the budget holds (plus the last step and bookkeeping)
    assert res.decisions["final_learning_rate"] == res.learning_rate == 3e-3  # a manual rate is used throughout


def test_final_run_peaks_higher_out_of_domain_with_four_or_more_corrections():
    from segcore.finetune import NEW_DOMAIN_LR, FineTuneSettings, adapt

    model, cfg = tiny(2, ("background", "disc"))
    ims, ms = disc_case(4)
    res = adapt(model, cfg, ims, ms, settings=FineTuneSettings(crop=SIZE, batch_size=4, epochs=1))
    assert res.decisions["domain_dice"] < 0.85  # a new head: out of domain
    assert res.learning_rate == NEW_DOMAIN_LR and res.decisions["final_learning_rate"] == 2 * NEW_DOMAIN_LR


def test_few_corrections_use_leave_one_out_and_manual_override_skips_holdout():
    from segcore.finetune import FineTuneSettings, adapt, holdout_splits

    assert holdout_splits(2) == [([1], [0]), ([0], [1])]
    assert holdout_splits(3)[2] == ([0, 1], [2])
    (tr, va), = holdout_splits(10)
    assert len(va) == 2 and sorted(tr + va) == list(range(10))
    with pytest.raises(ValueError, match="at least 2"):
        holdout_splits(1)
    model, cfg = tiny(2, ("background", "disc"))
    ims, ms = disc_case(2)
    fractions = []
    res = adapt(model, cfg, ims, ms, settings=FineTuneSettings(**FAST, epochs=3),
                progress=lambda rec: fractions.append(rec["fraction"]))
    assert res.steps == 3 and "folds" not in res.decisions and res.held_out_dice is None
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    one = adapt(model, cfg, ims[:1], ms[:1], settings=FineTuneSettings(**FAST, time_budget_s=30))
    assert one.decisions["holdout"] == "none (one correction)" and one.held_out_dice is None
    with pytest.raises(ValueError, match="Unknown fine-tune settings"):
        FineTuneSettings.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="labels in"):
        adapt(model, cfg, ims, [m * 2 for m in ms], settings=FineTuneSettings(**FAST, epochs=1))


def test_replay_only_in_domain():
    """The incoming model's Dice on the corrections decides replay; a replay set is mixed only in domain."""
    from segcore.finetune import FineTuneSettings, adapt, domain_dice, prepare_pairs, replay_decision

    auto = FineTuneSettings()
    assert replay_decision(0.84, auto, True)[0] is False and replay_decision(0.85, auto, True)[0] is True
    assert replay_decision(0.99, auto, False) == (False, "no replay set given")
    assert replay_decision(0.0, FineTuneSettings(replay=True), True)[0] is True
    model, cfg = tiny(2, ("background", "disc"))
    ims, ms = disc_case(2)
    rx, ry = prepare_pairs(*disc_case(4, seed=3), cfg)
    d = domain_dice(model, cfg, ims, ms)
    with pytest.raises(ValueError, match="replay must be"):
        adapt(model, cfg, ims, ms, replay=(rx[..., 0], ry), settings=FineTuneSettings(**FAST, epochs=1))
    inn = adapt(model, cfg, ims, ms, replay=(rx, ry), settings=FineTuneSettings(**FAST, epochs=1, in_domain_dice=d))
    assert inn.replay is True and "in domain" in inn.decisions["replay_reason"]
    assert inn.decisions["domain_dice"] == pytest.approx(d, abs=1e-4)


def test_cancel_stops_within_one_step():
    from segcore.finetune import FineTuneCancelled, FineTuneSettings, adapt

    model, cfg = tiny(2, ("background", "disc"))
    ims, ms = disc_case(2)
    flag, steps = threading.Event(), []
    at_cancel = []

    def canceller():
        while len(steps) < 3:
            time.sleep(0.001)
        at_cancel.append(len(steps))
        flag.set()

    t = threading.Thread(target=canceller)
    t.start()
    with pytest.raises(FineTuneCancelled):
        adapt(model, cfg, ims, ms, settings=FineTuneSettings(**FAST, epochs=500),
              progress=lambda rec: steps.append(rec["step"]), cancel=flag.is_set)
    t.join()
    assert len(steps) - at_cancel[0] <= 1, f"{len(steps) - at_cancel[0]} steps ran after cancel"


# ----------------------------------------------------------------------------- classes and cards
def test_retarget_copies_kept_classes_and_leaves_the_input_alone():
    from segcore.finetune import retarget

    model, cfg = tiny()
    before = [w.copy() for w in model.get_weights()]
    new, ncfg = retarget(model, cfg, ["background", "nucleus"])
    assert ncfg.class_names == ("background", "nucleus") and ncfg.num_classes == 2
    assert new.outputs[0].shape[-1] == 2 and model.outputs[0].shape[-1] == 3
    k_old = model.get_layer("head").get_weights()[0]
    k_new = new.get_layer("head").get_weights()[0]
    np.testing.assert_array_equal(k_new[..., 0], k_old[..., 0])  # background kept by name
    np.testing.assert_array_equal(k_new[..., 1], k_old[..., 1])  # organ renamed to nucleus (same index)
    assert ncfg.card["retarget"]["copied"] == {"background": "background", "nucleus": "organ"}
    np.testing.assert_array_equal(new.get_layer("enc0_conv1").get_weights()[0],
                                  model.get_layer("enc0_conv1").get_weights()[0])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    added, acfg = retarget(model, cfg, ["background", "organ", "lesion", "cyst"])
    k_add = added.get_layer("head").get_weights()[0]
    np.testing.assert_array_equal(k_add[..., :3], k_old)
    assert acfg.class_colors[:3] == cfg.class_colors and len(acfg.class_colors) == 4
    reorder, rcfg = retarget(model, cfg, ["background", "lesion"])
    np.testing.assert_array_equal(reorder.get_layer("head").get_weights()[0][..., 1], k_old[..., 2])
    assert rcfg.class_colors[1] == cfg.class_colors[2]  # lesion keeps its colour
    with pytest.raises(ValueError, match="distinct"):
        retarget(model, cfg, ["background", "background"])
    with pytest.raises(ValueError, match="class_colors"):
        retarget(model, cfg, ["background", "x"], colors=[(0, 0, 0)])


def test_new_class_finetune_round_trip(tmp_path):
    """Retarget to background + nucleus, fine-tune, save through the workspace, load, predict, classes shown."""
    from segcore.finetune import FineTuneSettings, adapt, retarget
    from segcore.infer import predict_proba
    from segcore.models import load_card, save_model
    from segcore.store import Workspace

    model, cfg = tiny()
    save_model(model, cfg, tmp_path / "default")
    ws = Workspace(tmp_path / "data", default_model_dir=tmp_path / "default")
    new, ncfg = retarget(model, cfg, ["background", "nucleus"], colors=[(0, 0, 0), (255, 0, 255)])
    ims, ms = disc_case(2)
    res = adapt(new, ncfg, ims, ms, settings=FineTuneSettings(**FAST, epochs=5))
    v = ws.add_version(res.model, res.config, metrics={"note": "test"}, trained_on=["a", "b"], parent="v1", actor="tester")
    loaded, lcfg = ws.validate_version(v)
    assert lcfg.class_names == ("background", "nucleus") and lcfg.class_colors[1] == (255, 0, 255)
    p = predict_proba(loaded, ims[0], lcfg)
    assert p.shape == (SIZE, SIZE, 2)
    np.testing.assert_allclose(p, predict_proba(res.model, ims[0], res.config), atol=1e-5)
    card = load_card(ws.model_dir(v))
    assert [c["name"] for c in card.classes] == ["background", "nucleus"]
    assert card.classes[1]["color"] == [255, 0, 255] and card.version == v and card.parent_version == "v1"
    assert card.fine_tuning["holdout"].startswith("none") and card.fine_tuning["final_steps"] == res.steps
    assert json.loads((ws.model_dir(v) / "card.json").read_text())["classes"][1]["name"] == "nucleus"


def test_old_config_loads_with_default_colours_and_shipped_card():
    from segcore.models import ModelConfig, default_class_colors, load_card
    from segcore.viz import PALETTE

    old = json.loads((ROOT / "sample_data/models/default/config.json").read_text())
    assert "class_colors" not in old and "card" not in old
    cfg = ModelConfig.from_dict(old)
    assert cfg.class_colors == default_class_colors(3) == tuple(tuple(int(v) for v in c) for c in PALETTE[:3])
    card = load_card(ROOT / "sample_data/models/default")
    assert [c["name"] for c in card.classes] == list(old["class_names"])
    assert card.intended_domain["synthetic_only"] is True and card.intended_domain["modalities"] == ["CT"]
    assert card.metrics["test"]["mean_foreground_dice"] == old["metrics"]["test"]["mean_foreground_dice"]
    assert card.training_data and card.training_data[0]["source"] == "sample_data/phantom/train"
    with pytest.raises(ValueError, match="class_colors"):
        ModelConfig(num_classes=2, class_names=("a", "b"), class_colors=((0, 0, 0), (300, 0, 0)))


# ----------------------------------------------------------------------------- jobs
@pytest.fixture()
def workspace(tmp_path):
    """A workspace whose active v1 is a tiny 3-class model, with 4 disc corrections (label 1 = organ)."""
    from segcore.labels import png_bytes
    from segcore.models import save_model
    from segcore.store import Workspace

    model, cfg = tiny()
    save_model(model, cfg, tmp_path / "default")
    ws = Workspace(tmp_path / "data", default_model_dir=tmp_path / "default")
    ims, ms = disc_case(4, seed=5)
    ids = [ws.save_correction(png_bytes(im), f"disc{i}.png", m, author="ann", model_version="v1", source="raw").id
           for i, (im, m) in enumerate(zip(ims, ms))]
    return ws, ids


JOB_SETTINGS = {**FAST, "epochs": 30}


def test_two_concurrent_jobs_get_distinct_versions_and_gate_metrics(workspace):
    from segcore.jobs import JobManager, JobSpec

    ws, ids = workspace
    mgr = JobManager(ws, max_workers=2, sample_dir=None)
    try:
        a = mgr.submit(JobSpec("alice", ids[:2], held_out_ids=ids[3:], settings=JOB_SETTINGS))
        b = mgr.submit(JobSpec("bob", ids[1:3], held_out_ids=ids[3:], settings=JOB_SETTINGS))
        sa, sb = mgr.wait(a, 300), mgr.wait(b, 300)
    finally:
        mgr.shutdown()
    assert sa.state == sb.state == "done", (sa.error, sb.error, mgr.log(a), mgr.log(b))
    # both ran at once: each started before the other finished
    assert sa.t_start < sb.t_end and sb.t_start < sa.t_end
    va, vb = sa.result["version"], sb.result["version"]
    assert va != vb and {va, vb} <= set(ws.versions())
    assert ws.active_version() == "v1"
    assert {j.created_by for j in mgr.jobs()} == {"alice", "bob"} and all(j.elapsed_s > 0 for j in mgr.jobs())
    for v, who in ((va, "alice"), (vb, "bob")):
        info = ws.versions()[v]
        m = info["metrics"]
        assert m["baseline_version"] == "v1" and m["n_eval_images"] == 1 and info["created_by"] == who
        assert 0 <= m["held_out"]["mean_foreground_dice"] <= 1 and 0 <= m["baseline_held_out"]["mean_foreground_dice"] <= 1
        gate = ws.gate(v)
        assert gate.candidate == pytest.approx(m["held_out"]["mean_foreground_dice"])
        assert gate.baseline == pytest.approx(m["baseline_held_out"]["mean_foreground_dice"])
        assert gate.passed == (gate.candidate + gate.tolerance >= gate.baseline)


def test_new_class_job_is_not_promotable_through_the_gate(workspace):
    from segcore.jobs import JobManager, JobSpec

    ws, ids = workspace
    mgr = JobManager(ws, sample_dir=None)
    try:
        j = mgr.submit(JobSpec("carol", ids[:2], held_out_ids=ids[2:3], settings=JOB_SETTINGS,
                               class_names=["background", "disc"]))
        st = mgr.wait(j, 300)
    finally:
        mgr.shutdown()
    assert st.state == "done", mgr.log(j)
    assert st.result["class_names"] == ["background", "disc"]
    _, cfg = ws.validate_version(st.result["version"])
    assert cfg.class_names == ("background", "disc")
    gate = ws.gate(st.result["version"])
    assert not gate.passed and "cannot be promoted" in gate.reason


def test_job_cancel_within_one_step_and_no_version(workspace):
    from segcore.jobs import JobManager, JobSpec

    ws, ids = workspace
    mgr = JobManager(ws, sample_dir=None)
    try:
        j = mgr.submit(JobSpec("dave", ids[:2], settings={**FAST, "epochs": 2000}))
        while not mgr.log(j).count("progress ") >= 3:
            time.sleep(0.01)
        mgr.cancel(j, actor="dave")
        st = mgr.wait(j, 60)
    finally:
        mgr.shutdown()
    assert st.state == "cancelled"
    lines = mgr.log(j).splitlines()
    cut = next(i for i, line in enumerate(lines) if "cancel requested" in line)
    after = [line for line in lines[cut:] if " progress " in line]
    assert len(after) <= 1, after
    assert list(ws.versions()) == ["v1"]
    # queued jobs cancel at once
    idle = JobManager(ws, sample_dir=None, start=False)
    q = idle.submit(JobSpec("erin", ids[:1]))
    assert idle.cancel(q, actor="erin").state == "cancelled"


def test_submit_checks_its_spec(workspace):
    from segcore.jobs import JobManager, JobSpec

    ws, ids = workspace
    mgr = JobManager(ws, sample_dir=None, start=False)
    with pytest.raises(ValueError, match="who started"):
        mgr.submit(JobSpec("  ", ids[:1]))
    with pytest.raises(ValueError, match="Unknown correction"):
        mgr.submit(JobSpec("a", ["nope"]))
    with pytest.raises(ValueError, match="both trained on and held out"):
        mgr.submit(JobSpec("a", ids[:2], held_out_ids=ids[1:2]))
    with pytest.raises(ValueError, match="Unknown fine-tune settings"):
        mgr.submit(JobSpec("a", ids[:1], settings={"lr": 1}))
    with pytest.raises(ValueError, match="Unknown base version"):
        mgr.submit(JobSpec("a", ids[:1], base_version="v9"))


def test_jobs_check_roles_and_record_the_signed_in_author(workspace):
    from segcore.auth import Identity, PermissionDenied
    from segcore.jobs import JobManager, JobSpec

    ws, ids = workspace
    mgr = JobManager(ws, sample_dir=None, start=False)
    reviewer = Identity("oidc|rev", "Rita", roles=frozenset({"reviewer"}), authenticated=True)
    admin = Identity("oidc|adm", "Ada", roles=frozenset({"admin"}), authenticated=True)
    with pytest.raises(PermissionDenied, match="admin role"):
        mgr.submit(JobSpec(reviewer, ids[:1]))
    jid = mgr.submit(JobSpec(admin, ids[:1]))
    st = mgr.get(jid)
    assert st.created_by == "Ada" and st.spec["created_by_id"] == "oidc|adm"
    assert st.spec["actor"]["authenticated"] is True and st.spec["actor"]["roles"] == ["admin"]
    with pytest.raises(PermissionDenied, match="admin role"):
        mgr.cancel(jid, actor=reviewer)
    assert mgr.get(jid).state == "queued"
    assert mgr.cancel(jid, actor=admin).state == "cancelled"
    assert "Ada" in mgr.get(jid).error


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from segcore.jobs import JobManager, JobSpec
    from segcore.store import Workspace
    ws = Workspace(sys.argv[2], default_model_dir=sys.argv[3])
    mgr = JobManager(ws, sample_dir=None)
    ids = [c.id for c in ws.list_corrections()]
    jid = mgr.submit(JobSpec("frank", ids[:2], settings={"crop": 32, "batch_size": 4, "epochs": 100000}))
    print(jid, flush=True)
    mgr.wait(jid, 600)
""")


def test_dead_worker_job_is_marked_failed_after_restart(workspace, tmp_path):
    from segcore.jobs import JobManager

    ws, _ = workspace
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(ws.root), str(tmp_path / "default")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        jid = proc.stdout.readline().strip()
        state = ws.root / "jobs" / jid / "state.json"
        deadline = time.time() + 120
        while time.time() < deadline:
            if state.is_file() and json.loads(state.read_text()).get("progress", {}).get("step", 0) >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the child job never reported progress")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads(state.read_text())["state"] == "running"
    mgr = JobManager(ws, sample_dir=None, start=False)
    assert mgr.recovered == [jid]
    st = mgr.get(jid)
    assert st.state == "failed" and "worker gone" in st.error and st.created_by == "frank"
    log = mgr.log(jid)
    assert "progress " in log and "failed" in log.splitlines()[-1]
    assert list(ws.versions()) == ["v1"] and ws.active_version() == "v1"
    assert not ws.models_dir.is_dir() or not [p for p in ws.models_dir.iterdir() if p.name.startswith("v")]


def test_submit_checks_the_class_set_against_the_corrections(workspace):
    import numpy as np

    from segcore.jobs import JobManager, JobSpec
    from segcore.labels import png_bytes

    ws, ids = workspace
    im, m = ws.load_correction(ids[0])
    lesion = m.copy()
    lesion[:4, :4] = 2
    lid = ws.save_correction(png_bytes(im), "with_lesion.png", lesion, author="ann", model_version="v1",
                             source="raw", class_names=("background", "organ", "lesion")).id
    assert ws.list_corrections()[-1].labels == tuple(int(v) for v in np.unique(lesion))
    mgr = JobManager(ws, sample_dir=None, start=False)
    # a rename of label 1 fits the disc corrections (labels 0, 1) ...
    mgr.submit(JobSpec("a", ids[:2], class_names=["background", "nucleus"], class_colors=[(0, 0, 0), (255, 0, 0)]))
    # ... but not the one with a lesion (label 2), whether trained on or held out
    with pytest.raises(ValueError, match=r"with_lesion.png .*label 2 \(lesion\); the new class set has 2 classes"):
        mgr.submit(JobSpec("a", ids[:2], held_out_ids=[lid], class_names=["background", "nucleus"]))
    with pytest.raises(ValueError, match="distinct"):
        mgr.submit(JobSpec("a", ids[:2], class_names=["background", "cell", "cell"]))
    with pytest.raises(ValueError, match=r"one RGB triple in \[0, 255\] per class \(2\)"):
        mgr.submit(JobSpec("a", ids[:2], class_names=["background", "cell"], class_colors=[(0, 0, 0)]))
    with pytest.raises(ValueError, match="without class_names"):
        mgr.submit(JobSpec("a", ids[:2], class_colors=[(0, 0, 0), (1, 2, 3), (4, 5, 6)]))


def test_colour_only_change_keeps_the_weights_and_records_the_colours(workspace):
    from segcore.jobs import JobManager, JobSpec

    ws, ids = workspace
    mgr = JobManager(ws, sample_dir=None)
    try:
        colours = [(0, 0, 0), (10, 20, 30), (200, 100, 50)]
        jid = mgr.submit(JobSpec("a", ids[:2], held_out_ids=ids[2:3], settings=JOB_SETTINGS,
                                 class_names=["background", "organ", "lesion"], class_colors=colours))
        st = mgr.wait(jid, timeout=300)
    finally:
        mgr.shutdown()
    assert st.state == "done", st.error
    _, cfg = ws.validate_version(st.result["version"])
    assert [list(c) for c in cfg.class_colors] == [list(c) for c in colours]
    assert tuple(cfg.class_names) == ("background", "organ", "lesion")
    import math

    assert math.isfinite(ws.gate(st.result["version"]).baseline)  # same classes: compared with v1 on the same set


def test_renamed_classes_stay_comparable_with_the_base_model_added_ones_do_not():
    """Renaming keeps class k as class k in the masks: the gate compares class by class under the new names."""
    import dataclasses

    from segcore.jobs import evaluate_against

    model, cfg = tiny(2, ("background", "disc"))
    ims, ms = disc_case(3)
    renamed = dataclasses.replace(cfg, class_names=("background", "nucleus"))
    out = evaluate_against(model, renamed, model, cfg, ims, ms, baseline_version="v1")
    assert out["renamed_from"] == ["background", "disc"] and "gate_note" not in out
    assert list(out["baseline_held_out"]["per_class"]) == list(out["held_out"]["per_class"]) == ["background", "nucleus"]
    assert out["baseline_held_out"]["mean_foreground_dice"] == out["held_out"]["mean_foreground_dice"]  # same net
    wider, wcfg = tiny(3, ("background", "disc", "ring"))
    out = evaluate_against(wider, wcfg, model, cfg, ims, ms, baseline_version="v1")
    assert out["baseline_held_out"] is None and "not comparable" in out["gate_note"]
