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
              "segcore.figures, segcore.cli, segcore.pipeline, segcore.review, segcore.export, segcore.measure, "
              "segcore.display, segcore.cards, segcore.labels, segcore.limits\n"
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
    r = subprocess.run([sys.executable, "-m", "segcore", "predict", str(src), "--out", str(tmp_path / "out"),
                        "--engine", "local"], cwd=root, capture_output=True, text=True, timeout=300)
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
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,E9", "segcore", "app_pages", "ui",
                        "app.py", "bench", "tests"], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]


# what a page may not do: import a numerical or imaging library, or call array computations on results
_NUMERIC_MODULES = {"numpy", "cv2", "scipy", "PIL", "tensorflow", "keras", "pandas", "sklearn", "skimage", "torch"}
_ARRAY_METHODS = {"sum", "mean", "max", "min", "argmax", "argmin", "astype", "reshape", "transpose", "std", "clip",
                  "nonzero", "cumsum", "round", "dot", "ravel", "flatten"}


def _ui_sources(root):
    return [root / "app.py", *sorted((root / "app_pages").glob("*.py")), *sorted((root / "ui").glob("*.py"))]


def test_pages_and_ui_do_no_computation(root):
    """Pages (app_pages/), the router and the ui/ glue only call segcore and lay out results.

    Rule: no import of a numerical/imaging library (numpy, cv2, scipy, PIL, TensorFlow, Keras, pandas, ...), and no
    array-computation method call (``.sum()``, ``.astype()``, ``.argmax()``, ...) on anything. Every number a page
    shows therefore comes from a segcore function, which is tested on its own.
    """
    import ast

    problems = []
    for path in _ui_sources(root):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [(node.module or "").split(".")[0]]
            else:
                mods = []
            problems += [f"{path.name}:{node.lineno} imports {m}" for m in mods if m in _NUMERIC_MODULES]
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in _ARRAY_METHODS:
                problems.append(f"{path.name}:{node.lineno} calls .{node.func.attr}()")
    assert len(_ui_sources(root)) >= 8
    assert problems == [], problems


def test_page_rule_catches_computation(tmp_path):
    """The rule above can fail: a page computing an area itself is caught."""
    import ast

    bad = "import numpy as np\narea = (mask == 1).sum()\n"
    tree = ast.parse(bad)
    found = [n for n in ast.walk(tree) if isinstance(n, ast.Import) and n.names[0].name in _NUMERIC_MODULES]
    found += [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
              and n.func.attr in _ARRAY_METHODS]
    assert len(found) == 2
