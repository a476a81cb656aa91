import json
import os
import signal
import subprocess
import sys
import shutil
import time

import numpy as np
import pytest

from segcore.store import Workspace, atomic_write


def test_save_list_load_correction(tmp_path, root):
    ws = Workspace(tmp_path)
    data = (root / "sample_data" / "demo" / "phantom_ct_512.dcm").read_bytes()
    mask = np.zeros((512, 512), np.uint8)
    mask[10:20, 10:30] = 2
    rec = ws.save_correction(data, "phantom_ct_512.dcm", mask, author="Dr A", model_version="v1", source="refined")
    assert [c.id for c in ws.list_corrections()] == [rec.id]
    img, m = ws.load_correction(rec.id)
    np.testing.assert_array_equal(m, mask)
    assert img.shape == (512, 512)
    meta = json.loads((rec.path / "meta.json").read_text())
    assert meta["author"] == "Dr A" and meta["model_version"] == "v1" and meta["source"] == "refined"
    # a fresh Workspace (server restart) sees the same
    assert [c.id for c in Workspace(tmp_path).list_corrections()] == [rec.id]


def test_correction_bad_input(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(ValueError, match="author is empty"):
        ws.save_correction(b"x", "a.png", np.zeros((4, 4)), author=" ", model_version="v1", source="raw")
    with pytest.raises(ValueError, match="source must be"):
        ws.save_correction(b"x", "a.png", np.zeros((4, 4)), author="a", model_version="v1", source="magic")
    with pytest.raises(ValueError, match="non-empty 2-D"):
        ws.save_correction(b"x", "a.png", np.zeros((4, 4, 3)), author="a", model_version="v1", source="raw")
    with pytest.raises(ValueError, match=r"No saved correction with id 'nope'"):
        ws.delete_correction("nope", actor="admin")
    assert ws.list_corrections() == []


def test_failed_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    ws = Workspace(tmp_path)
    ok = ws.save_correction(b"scan", "a.png", np.ones((4, 4)), author="a", model_version="v1", source="raw")
    real = os.replace

    def boom(src, dst):
        if "corrections" in str(dst):
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        ws.save_correction(b"scan2", "b.png", np.ones((4, 4)), author="a", model_version="v1", source="raw")
    monkeypatch.setattr(os, "replace", real)
    assert [c.id for c in ws.list_corrections()] == [ok.id]
    assert not [p for p in (tmp_path / "corrections").iterdir() if p.name.startswith(".tmp")]


KILLER = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from segcore.store import atomic_write
big = b"x" * (64 * 1024 * 1024)
print("ready", flush=True)
while True:
    atomic_write(sys.argv[2], big)
"""


def test_kill_during_atomic_write_keeps_previous_version(tmp_path, root):
    target = tmp_path / "registry.json"
    atomic_write(target, '{"active": "v1"}')
    p = subprocess.Popen([sys.executable, "-c", KILLER, str(root), str(target)], stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"ready"
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    content = target.read_bytes()
    assert content in (b'{"active": "v1"}', b"x" * (64 * 1024 * 1024))  # old or new, never partial


def _tiny(channels=1, classes=3):
    from segcore.models import build_unet

    return build_unet((None, None, channels), classes, base_filters=4, depth=2)


def _metrics(cand, base, base_version="v1"):
    return {"held_out": {"mean_foreground_dice": cand}, "baseline_held_out": {"mean_foreground_dice": base},
            "baseline_version": base_version}


def test_model_versions_promote_and_rollback(tmp_path, root):
    from segcore.models import ModelConfig

    default = root / "sample_data" / "models" / "default"
    ws = Workspace(tmp_path, default_model_dir=default)
    assert ws.active_version() == "v1" and ws.model_dir() == default.resolve()
    v2 = ws.add_version(_tiny(), ModelConfig(), metrics=_metrics(0.8, 0.9), trained_on=["c1"], parent="v1", actor="Dr A")
    v3 = ws.add_version(_tiny(), ModelConfig(), metrics=_metrics(0.897, 0.9), trained_on=["c1"], parent="v1", actor="Dr A")
    assert (v2, v3) == ("v2", "v3") and ws.active_version() == "v1"
    assert ws.candidates() == ["v3", "v2"]  # inactive, with held-out metrics, newest first (not the shipped v1)
    with pytest.raises(ValueError, match="Refusing to promote v2: held-out mean Dice 0.8000"):
        ws.promote("v2", actor="Dr A")  # the gate reads the metrics stored with the version
    assert ws.active_version() == "v1"
    assert ws.gate("v3").passed
    ws.promote("v3", actor="Dr A")  # within the 0.005 tolerance
    assert ws.active_version() == "v3"
    assert ws.candidates() == ["v2"]
    # v2 was evaluated against v1, which is no longer active: it must be evaluated again
    with pytest.raises(ValueError, match="evaluated against v1, but v3 is active now"):
        ws.promote("v2", actor="Dr A")
    ws.activate("v1", actor="Dr A")  # rollback
    assert Workspace(tmp_path, default_model_dir=default).active_version() == "v1"
    # a gate decided against v1 is not applied once another admin has activated something else meanwhile
    decision = ws.gate("v3")
    assert decision.passed and decision.baseline_version == "v1"
    ws.activate("v2", actor="Dr B")
    with pytest.raises(ValueError, match="v2 became active while v3 was being checked against v1"):
        ws.activate("v3", actor="Dr A", expected_active=decision.baseline_version)
    assert ws.active_version() == "v2"
    ws.activate("v1", actor="Dr A")
    assert ws.rollback_order() == ["v2", "v3"]  # the most recently active first (v2 just now, v3 before it)
    with pytest.raises(ValueError, match="Unknown model version 'v9'"):
        ws.activate("v9", actor="Dr A")


def test_activate_validates_the_model_first(tmp_path, root):
    from segcore.models import ModelConfig, save_model

    ws = Workspace(tmp_path, default_model_dir=root / "sample_data" / "models" / "default")
    # a 3-channel / 5-class network whose config says 1 channel / 3 classes
    v = ws.add_version(_tiny(), ModelConfig(), metrics=_metrics(0.9, 0.9), trained_on=[], parent="v1",
                       actor="Dr A")
    save_model(_tiny(3, 5), ModelConfig(), ws.model_dir(v))
    with pytest.raises(ValueError, match="takes 3 input channel.*predicts 5 class.*says 1 channel.*3 class"):
        ws.activate(v, actor="Dr A")
    assert ws.active_version() == "v1"
    # a truncated and a garbage model file
    for damage in (lambda b: b[: len(b) // 2], lambda b: b"not a zip at all"):
        v = ws.add_version(_tiny(), ModelConfig(), metrics=_metrics(0.9, 0.9), trained_on=[], parent="v1",
                       actor="Dr A")
        f = ws.model_dir(v) / "model.keras"
        f.write_bytes(damage(f.read_bytes()))
        with pytest.raises(ValueError, match="corrupt or truncated model file"):
            ws.promote(v, actor="Dr A")
        assert ws.active_version() == "v1"
    # a version whose folder is gone
    shutil.rmtree(ws.model_dir(v))
    with pytest.raises(ValueError, match="has no folder"):
        ws.activate(v, actor="Dr A")


def test_load_model_reports_corrupt_file(tmp_path):
    from segcore.models import ModelConfig, ModelFileError, load_model, save_model

    save_model(_tiny(), ModelConfig(), tmp_path / "m")
    (tmp_path / "m" / "model.keras").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError, match="corrupt or truncated model file"):
        load_model(tmp_path / "m")


ADDER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from segcore.models import ModelConfig, build_unet
from segcore.store import Workspace
ws = Workspace(sys.argv[2])
m = build_unet((None, None, 1), 3, base_filters=4, depth=2)
print("ready", flush=True)
sys.stdin.readline()  # start together
for i in range(3):
    print(ws.add_version(m, ModelConfig(), metrics={}, trained_on=[sys.argv[3]], parent="v1", actor=sys.argv[3]),
          flush=True)
"""


@pytest.mark.slow
def test_concurrent_add_version_processes_get_distinct_versions(tmp_path, root):
    procs = [subprocess.Popen([sys.executable, "-c", ADDER, str(root), str(tmp_path), f"p{i}"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(4)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    got = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        got += out.split()
        assert p.returncode == 0
    assert len(got) == 12 and len(set(got)) == 12, got
    ws = Workspace(tmp_path)
    reg = ws.versions()
    assert set(reg) == set(got)
    for v in got:  # each folder holds its own writer's model
        cfg = json.loads((ws.model_dir(v) / "config.json").read_text())
        assert cfg["version"] == v and cfg["trained_on"] == reg[v]["trained_on"]


def test_concurrent_add_version_threads_get_distinct_versions(tmp_path):
    import threading

    from segcore.models import ModelConfig

    ws = Workspace(tmp_path)
    m = _tiny()
    got, errors = [], []

    def work(tag):
        try:
            for _ in range(2):
                got.append(Workspace(tmp_path).add_version(m, ModelConfig(), metrics={}, trained_on=[tag], parent=None,
                                                           actor=tag))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 6 and len(set(got)) == 6
    assert set(ws.versions()) == set(got)


SAVER = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from segcore.store import Workspace
ws = Workspace(sys.argv[2])
big = b"x" * (32 * 1024 * 1024)
print("ready", flush=True)
while True:
    ws.save_correction(big, "a.png", np.ones((512, 512), np.uint8), author="a", model_version="v1", source="raw")
"""


def test_killed_writers_leave_no_temporaries_after_restart(tmp_path, root):
    for _ in range(6):
        p = subprocess.Popen([sys.executable, "-c", SAVER, str(root), str(tmp_path)], stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(0.25)
        p.send_signal(signal.SIGKILL)
        p.wait()
    # what a killed model writer leaves (dead pid), an old-style temporary, an interrupted replacement
    models = tmp_path / "models"
    (models / ".v7.tmp-999999999-abc").mkdir(parents=True)
    old_style = models / ".v6.tmpq1w2"
    old_style.mkdir()
    os.utime(old_style, (time.time() - 7200, time.time() - 7200))
    (models / ".v5.old").mkdir()
    (models / ".v5.old" / "model.keras").write_bytes(b"previous")
    hidden = [p.name for d in ("corrections", "models") for p in (tmp_path / d).iterdir() if p.name.startswith(".")]
    assert hidden, "the kills should have left temporaries behind"
    ws = Workspace(tmp_path)
    left = [p.name for d in ("corrections", "models") for p in (tmp_path / d).iterdir()
            if p.name.startswith(".") and p.name != ".registry.lock"]
    assert left == [], left
    assert (models / "v5" / "model.keras").read_bytes() == b"previous"  # put back, not deleted
    assert len(ws.list_corrections()) >= 1
    for c in ws.list_corrections():  # every published correction is whole
        assert c.mask_path.is_file() and (c.path / "meta.json").is_file()


def test_long_or_odd_scan_names_are_stored_safely(tmp_path):
    ws = Workspace(tmp_path)
    rec = ws.save_correction(b"scan", "scan." + "x" * 300, np.ones((4, 4)), author="a", model_version="v1",
                             source="raw")
    assert rec.scan_path.name == "scan.bin" and rec.scan_name == "scan." + "x" * 300
    rec = ws.save_correction(b"scan", "../../etc/brain.nii.gz", np.ones((4, 4)), author="a", model_version="v1",
                             source="raw")
    assert rec.scan_path.name == "scan.nii.gz" and rec.scan_path.parent == rec.path


def test_instance_corrections_round_trip_and_versions_are_gated(tmp_path, root):
    from segcore.auth import Identity, PermissionDenied
    from segcore.instances.maskrcnn import MaskRCNN
    from segcore.store import InstanceWorkspace

    shipped = root / "sample_data" / "models" / "maskrcnn"
    iws = InstanceWorkspace(Workspace(tmp_path), shipped)
    img_bytes = (root / "sample_data" / "instances" / "test" / "images" / "test_0000.png").read_bytes()
    ids = np.zeros((128, 128), np.int32)
    ids[10:30, 10:30], ids[50:70, 60:90] = 1, 7
    rec = iws.save(img_bytes, "test_0000.png", ids, author="Dr I", slice_index=None,
                   class_names=("background", "object"), model_version="shipped")
    assert rec.n_instances == 2 and [r.id for r in iws.list()] == [rec.id]
    (image, back), = iws.training_pairs()
    assert image.shape == (128, 128)
    assert sorted(np.unique(back).tolist()) == [0, 1, 2]  # ids renumbered, masks exact
    assert ((back > 0) == (ids > 0)).all()
    reviewer = Identity("r", "Rita", roles=frozenset({"reviewer"}), authenticated=True)
    model = MaskRCNN.load(shipped)
    with pytest.raises(PermissionDenied, match="admin"):
        iws.add_version(model, ap50_before=0.5, ap50_after=0.6, trained_on=[rec.id], actor=reviewer)
    worse = iws.add_version(model, ap50_before=0.6, ap50_after=0.5, trained_on=[rec.id], actor="admin")
    with pytest.raises(ValueError, match="Refusing to promote"):
        iws.promote(worse, actor="admin")
    better = iws.add_version(model, ap50_before=0.5, ap50_after=0.6, trained_on=[rec.id], actor="admin")
    assert better != worse
    with pytest.raises(PermissionDenied, match="admin"):
        iws.promote(better, actor=reviewer)
    also = iws.add_version(model, ap50_before=0.5, ap50_after=0.7, trained_on=[rec.id], actor="admin")
    iws.promote(better, actor="admin")
    assert iws.active_version() == better and (iws.model_dir() / "config.json").is_file()
    assert iws._registry()["history"][-1]["active"] == better and iws._registry()["history"][-1]["by"] == "admin"
    # a candidate compared with a parent that is no longer active is stale: it is not promoted
    with pytest.raises(ValueError, match="is active now"):
        iws.promote(also, actor="admin")
    # a corrupt record does not hide the others
    bad = iws.dir / "20260101T000000000000-deadbeef00"
    bad.mkdir()
    (bad / "meta.json").write_text("{not json")
    assert [r.id for r in iws.list()] == [rec.id]


def test_identical_copies_of_a_correction_are_named_and_the_newest_kept(tmp_path):

    from segcore.measure import identical_copies

    ws = Workspace(tmp_path)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 1
    other = mask.copy()
    other[0, 0] = 1
    first = ws.save_correction(b"scan", "a.png", mask, author="Dr T", model_version="v1", source="refined")
    time.sleep(0.01)
    again = ws.save_correction(b"scan", "a.png", mask, author="Dr T", model_version="v1", source="refined")
    edited = ws.save_correction(b"scan", "a.png", other, author="Dr T", model_version="v1", source="refined")
    assert identical_copies(ws.list_corrections()) == {first.id}
    assert again.id not in identical_copies(ws.list_corrections()) and edited.id != first.id
