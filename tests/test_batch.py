"""Batch segmentation: same masks as segcore.pipeline, resumable by hash, corrupt files recorded, Ray = local."""

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from segcore.batch import MANIFEST_DIR, BatchConfig, discover, run_batch

MODEL = "sample_data/models/default"


@pytest.fixture(scope="module")
def archive(tmp_path_factory, root):
    """A handful of tiny scans: five 2-D PNGs (four in a sub-folder), a 4-slice DICOM volume, two bad files."""
    src = tmp_path_factory.mktemp("archive") / "in"
    (src / "sub").mkdir(parents=True)
    test_imgs = sorted((root / "sample_data/phantom/test/images").glob("*.png"))[:5]
    (src / "a.png").write_bytes(test_imgs[0].read_bytes())
    for p in test_imgs[1:]:
        (src / "sub" / p.name).write_bytes(p.read_bytes())
    (src / "vol.dcm").write_bytes((root / "sample_data/demo/phantom_ct_multiframe.dcm").read_bytes())
    (src / "truncated.dcm").write_bytes((root / "sample_data/demo/phantom_ct_512.dcm").read_bytes()[:3000])
    (src / "notes.txt").write_text("not a scan")
    return src


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory, root):
    """One uninterrupted single-process run over the archive: (output folder, report)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    return out, run_batch(archive, out, _cfg(root), engine="local", progress=False)


def _cfg(root, **kw):
    return BatchConfig(model_dir=str(root / MODEL), runtime="keras", **kw)


def _maps(out):
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*_mask.*"))}


def _table(out):
    with open(out / "results.csv", newline="") as f:
        return {r["file"]: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_local_run_writes_what_the_pipeline_segments_and_records_failures(archive, reference, tmp_path, root):
    from segcore.io import load_scan
    from segcore.labels import load_mask
    from segcore.models import load_model
    from segcore.pipeline import segment

    out, rep = reference
    assert (rep.total, rep.processed, rep.skipped, rep.failed, rep.ok) == (8, 8, 0, 2, 6)
    assert set(_maps(out)) == {"a_mask.png", "vol_mask.nii.gz"} | {f"sub/test_000{i}_mask.png" for i in range(1, 5)}
    model, config = load_model(root / MODEL)
    scan = load_scan(archive / "a.png")
    np.testing.assert_array_equal(load_mask(out / "a_mask.png"), segment(scan, model, config).refined)
    vol = load_scan(archive / "vol.dcm")
    written = load_scan(out / "vol_mask.nii.gz").pixels.astype(np.uint8)
    assert written.shape == vol.pixels.shape == (4, 256, 256)
    for z in (0, 3):  # every slice of a volume, refined
        np.testing.assert_array_equal(written[z], segment(vol, model, config, slice_index=z).refined)
    rows = _table(out)
    assert rows["truncated.dcm"]["status"] == "failed" and "truncated" in rows["truncated.dcm"]["error"]
    assert rows["notes.txt"]["status"] == "failed" and "Unsupported file type" in rows["notes.txt"]["error"]
    assert rows["vol.dcm"]["slices"] == "4" and rows["vol.dcm"]["shape"] == "4x256x256"
    lesion = int((written == 2).sum())
    assert int(rows["vol.dcm"]["lesion_pixels"]) == lesion
    assert float(rows["vol.dcm"]["lesion_volume_mm3"]) == pytest.approx(lesion * 5.0 * 1.0 * 1.0)
    assert int(rows["a.png"]["organ_pixels"]) == int((load_mask(out / "a_mask.png") == 1).sum())
    for r in rows.values():
        if r["status"] == "ok":
            assert float(r["predict_ms"]) > 0 and float(r["refine_ms"]) > 0 and r["runtime"] == "keras"



@pytest.mark.slow
def test_rerun_skips_complete_scans_and_redoes_what_is_missing_or_corrupt(archive, reference, tmp_path, root):
    from segcore.io import load_scan
    from segcore.labels import load_mask
    from segcore.models import load_model
    from segcore.pipeline import segment

    archive = Path(shutil.copytree(archive, tmp_path / "in"))
    out = Path(shutil.copytree(reference[0], tmp_path / "out"))
    first = _maps(out)
    again = run_batch(archive, out, _cfg(root), engine="local", progress=False)
    assert (again.processed, again.skipped) == (0, 8)  # failures of unreadable files are not retried either
    # a truncated label map, a deleted one, a changed input: exactly those scans are segmented again
    (out / "a_mask.png").write_bytes((out / "a_mask.png").read_bytes()[:50])
    (out / "sub/test_0001_mask.png").unlink()
    (archive / "truncated.dcm").write_bytes((root / "sample_data/demo/phantom_ct_512.dcm").read_bytes())
    rep = run_batch(archive, out, _cfg(root), engine="local", progress=False)
    assert (rep.processed, rep.skipped, rep.failed) == (3, 5, 0)
    now = _maps(out)
    assert {k: now[k] for k in first} == first  # byte-identical to the first run
    assert _table(out)["truncated.dcm"]["status"] == "ok"
    # another refinement config is another run identity: everything is redone; --no-refine writes the raw argmax
    (archive / "vol.dcm").unlink()
    rep = run_batch(archive, out, _cfg(root, refine=False), engine="local", progress=False)
    assert rep.processed == 7
    model, config = load_model(root / MODEL)
    scan = load_scan(archive / "a.png")
    np.testing.assert_array_equal(load_mask(out / "a_mask.png"), segment(scan, model, config, False).raw)


@pytest.mark.slow
def test_a_scan_that_kept_killing_its_worker_is_recorded_not_retried_forever(tmp_path, root):
    from segcore.batch import MAX_ATTEMPTS, attempts_path

    src = tmp_path / "in"
    src.mkdir()
    (src / "poison.png").write_bytes((root / "sample_data/demo/phantom_ct_256_hu+1024.png").read_bytes())
    out = tmp_path / "out"
    attempts_path(out, "poison.png").parent.mkdir(parents=True)
    attempts_path(out, "poison.png").write_text(str(MAX_ATTEMPTS))  # as left by workers killed mid-scan
    rep = run_batch(src, out, _cfg(root), engine="local", progress=False)
    assert (rep.processed, rep.failed) == (1, 1)
    assert "died 3 times while segmenting this scan" in _table(out)["poison.png"]["error"]
    assert not attempts_path(out, "poison.png").exists()
    rep = run_batch(src, out, _cfg(root), engine="local", progress=False)  # the next run tries it again
    assert (rep.processed, rep.failed, rep.ok) == (1, 0, 1)


PREDICT = [sys.executable, "-m", "segcore", "predict"]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_outputs(archive, reference, tmp_path, root):
    """SIGKILL the CLI mid-run: the rerun does only what is missing and ends with the uninterrupted run's bytes."""
    ref = reference[0]
    out = tmp_path / "out"
    args = [*PREDICT, str(archive), "--out", str(out), "--engine", "local", "--runtime", "keras", "--model",
            str(root / MODEL)]
    proc = subprocess.Popen(args, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list((out / MANIFEST_DIR).rglob("*.json"))
                                              if (out / MANIFEST_DIR).is_dir() else []) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / MANIFEST_DIR).rglob("*.json")))
    assert 3 <= done < 8, done
    r = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{done} already complete" in r.stdout and "masks for 6 of 8 scans" in r.stdout
    assert _maps(out) == _maps(ref)
    assert not [p for p in out.rglob(".*tmp-*")]  # no half-written file left visible


@pytest.mark.slow
def test_ray_two_workers_give_the_local_engines_bytes(archive, reference, tmp_path, root):
    pytest.importorskip("ray")
    local = reference[0]
    out = tmp_path / "ray"
    r = subprocess.run([*PREDICT, str(archive), "--out", str(out), "--engine", "ray", "--workers", "2",
                        "--runtime", "keras", "--model", str(root / MODEL), "--table", "results.parquet",
                        "--json-report", str(tmp_path / "rep.json")],
                       cwd=root, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipped notes.txt: Unsupported file type" in r.stderr and "8/8 scans" in r.stderr  # progress
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert (rep["engine"], rep["workers"], rep["processed"], rep["failed"], rep["ok"]) == ("ray", 2, 8, 2, 6)
    assert _maps(out) == _maps(local)
    import pandas as pd

    table = pd.read_parquet(out / "results.parquet")
    assert sorted(table["file"]) == sorted(s.rel for s in discover(archive))
    assert (table.set_index("file").loc["vol.dcm", "slices"]) == 4


def test_output_names_stay_unique_and_config_is_checked(tmp_path):
    from segcore.batch import _output_stems

    (tmp_path / "d").mkdir()
    for n in ("a.png", "a.tif", "b.nii.gz", "d/c.dcm"):
        (tmp_path / n).write_bytes(b"x")
    stems = _output_stems(discover(tmp_path))
    assert stems == {"a.png": "a_png", "a.tif": "a_tif", "b.nii.gz": "b", "d/c.dcm": "d/c"}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a_mask.png").write_bytes(b"x")
    assert "out/a_mask.png" not in {s.rel for s in discover(tmp_path, exclude=tmp_path / "out")}
    with pytest.raises(ValueError, match="table must end with .csv or .parquet. Got 'r.xlsx'"):
        BatchConfig(table="r.xlsx")
    with pytest.raises(FileNotFoundError, match="No such file or folder"):
        discover(tmp_path / "missing")
    with pytest.raises(ValueError, match="engine must be one of"):
        run_batch(tmp_path, tmp_path / "o", engine="spark")
    assert os.path.basename(MANIFEST_DIR).startswith(".")
