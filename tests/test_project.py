import json
import subprocess
import sys

import cv2
import numpy as np
import pytest


def test_phantom_set_regenerates_byte_for_byte(tmp_path, root):
    from segcore.phantom import write_sample_set

    write_sample_set(tmp_path, {"train": 3})
    for name in ("train_0000.png", "train_0001.png", "train_0002.png"):
        for kind in ("images", "masks"):
            assert (tmp_path / "train" / kind / name).read_bytes() == \
                (root / "sample_data" / "phantom" / "train" / kind / name).read_bytes()


def test_sample_set_has_three_classes_and_stays_small(root):
    masks = sorted((root / "sample_data" / "phantom" / "test" / "masks").glob("*.png"))
    assert len(masks) == 30
    labels = set()
    for m in masks:
        labels |= set(np.unique(cv2.imread(str(m), cv2.IMREAD_UNCHANGED)).tolist())
    assert labels == {0, 1, 2}
    tracked = subprocess.run(["git", "ls-files", "sample_data"], cwd=root, capture_output=True, text=True)
    if tracked.returncode == 0 and tracked.stdout.strip():
        files = [root / f for f in tracked.stdout.split("\n") if f]
    else:  # not a git checkout: everything but what .gitignore leaves out
        sd = root / "sample_data"
        files = [p for p in sd.rglob("*") if p.is_file() and "logs" not in p.parts
                 and not p.is_relative_to(sd / "instances" / "train")]
    total = sum(p.stat().st_size for p in files if p.is_file())
    # 30 MB before the 2 MB click model (sample_data/models/interactive) was added
    assert total < 35e6, f"sample_data is {total / 1e6:.1f} MB"


def test_segcore_never_imports_streamlit(root):
    code = ("import sys; sys.path.insert(0, %r)\n" % str(root)
            + "import segcore, segcore.io, segcore.refine, segcore.metrics, segcore.losses, segcore.models, "
              "segcore.train, segcore.data, segcore.infer, segcore.store, segcore.annotate, segcore.viz, "
              "segcore.figures, segcore.cli\n"
              "assert 'streamlit' not in sys.modules, 'segcore imported streamlit'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_cli_predict_and_evaluate(tmp_path, root):
    if not (root / "sample_data/models/default/config.json").is_file():
        pytest.fail("the default model is missing from sample_data/models/default")
    src = tmp_path / "in"
    src.mkdir()
    for n in ("phantom_ct_256_hu+1024.png", "lung1_ct.nii.gz"):
        (src / n).write_bytes((root / "sample_data" / "demo" / n).read_bytes())
    (src / "notes.txt").write_text("not a scan")
    r = subprocess.run([sys.executable, "-m", "segcore", "predict", str(src), "--out", str(tmp_path / "out")],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped notes.txt" in r.stderr
    mask = cv2.imread(str(tmp_path / "out" / "phantom_ct_256_hu+1024_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 1, 2} and (mask == 1).sum() > 1000
    from segcore.io import load_scan

    vol = load_scan(tmp_path / "out" / "lung1_ct_mask.nii.gz")
    ref = load_scan(root / "sample_data" / "demo" / "lung1_ct.nii.gz")
    assert vol.pixels.shape == ref.pixels.shape
    np.testing.assert_allclose(vol.affine, ref.affine)
    r = subprocess.run([sys.executable, "-m", "segcore", "evaluate", "--json", str(tmp_path / "ev.json")],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["n_images"] == 30 and ev["mean_foreground_dice"] >= 0.90
    assert "mean foreground dice" in r.stdout


def test_ruff_finds_no_errors(root):
    """Undefined names, unused imports/variables and syntax errors (pyflakes rules) anywhere in the project."""
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,E9", "segcore", "pages", "app.py",
                        "app_state.py", "bench", "tests"], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
