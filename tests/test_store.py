import json
import os
import signal
import subprocess
import sys
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
        ws.delete_correction("nope")
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


def test_model_versions_promote_and_rollback(tmp_path, root):
    from segcore.models import ModelConfig, build_unet

    default = root / "sample_data" / "models" / "default"
    if not (default / "config.json").is_file():
        pytest.skip("default model not trained yet")
    ws = Workspace(tmp_path, default_model_dir=default)
    assert ws.active_version() == "v1" and ws.model_dir() == default.resolve()
    m = build_unet((None, None, 1), 3, base_filters=4, depth=2)
    v = ws.add_version(m, ModelConfig(), metrics={"held_out": {"mean_foreground_dice": 0.5}}, trained_on=["c1"],
                       parent="v1")
    assert v == "v2" and ws.active_version() == "v1"
    with pytest.raises(ValueError, match="Refusing to promote v2"):
        ws.promote("v2", baseline=0.9, candidate=0.8)
    assert ws.active_version() == "v1"
    ws.promote("v2", baseline=0.9, candidate=0.897)  # within the 0.005 tolerance
    assert ws.active_version() == "v2"
    ws.activate("v1")  # rollback
    assert Workspace(tmp_path, default_model_dir=default).active_version() == "v1"
    with pytest.raises(ValueError, match="Unknown model version 'v9'"):
        ws.activate("v9")
