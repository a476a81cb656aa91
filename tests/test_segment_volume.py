"""segment_volume: the same masks as the one-slice pipeline, 3-D refinement, progress and cancellation."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def model_and_config(root):
    from segcore.models import load_model

    return load_model(root / "sample_data" / "models" / "default")


def _ct(n=5, size=96):
    from segcore.io import Scan
    from segcore.phantom import make_phantom

    vol = np.stack([make_phantom(100 + i // 2, size)[0] for i in range(n)])
    return Scan(pixels=vol.astype(np.float32), spacing=(2.0, 0.9, 0.9), modality="CT", source_name="ct")


def test_segment_volume_matches_segment_per_slice(model_and_config):
    from segcore.pipeline import segment, segment_volume
    from segcore.volume import VolumeRefineConfig, refine_volume

    model, config = model_and_config
    scan = _ct()
    calls = []
    seg = segment_volume(scan, model, config, progress=lambda f, m: calls.append((f, m)), batch_size=2,
                         volume_refine=False)
    assert seg.raw.shape == seg.refined.shape == scan.pixels.shape and seg.raw.dtype == np.uint8
    assert seg.probs.shape == scan.pixels.shape + (3,) and seg.probs.dtype == np.float16
    for z in (0, 3):
        one = segment(scan, model, config, slice_index=z)
        np.testing.assert_array_equal(seg.raw[z], one.raw)
        np.testing.assert_array_equal(seg.refined[z], one.refined)
        np.testing.assert_allclose(seg.probs[z].astype(np.float32), one.probs, atol=1e-3)
    # slices refined in parallel threads give the same volumes as one at a time
    one_thread = segment_volume(scan, model, config, batch_size=2, volume_refine=False, refine_workers=1)
    three = segment_volume(scan, model, config, batch_size=4, volume_refine=False, refine_workers=3)
    for other in (one_thread, three):
        np.testing.assert_array_equal(other.raw, seg.raw)
        np.testing.assert_array_equal(other.refined, seg.refined)
        np.testing.assert_array_equal(other.slice_entropy, seg.slice_entropy)
    with pytest.raises(ValueError, match="refine_workers must be >= 1"):
        segment_volume(scan, model, config, refine_workers=0)
    fractions = [f for f, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    # the default 3-D steps run after the slices, on the per-slice result
    seg3 = segment_volume(scan, model, config, keep_probs=False)
    expect, _ = refine_volume(seg.refined, scan.spacing, VolumeRefineConfig())
    np.testing.assert_array_equal(seg3.refined, expect)
    assert seg3.probs is None and set(seg3.volumes_ml()) == {"organ", "lesion"}
    assert seg3.volumes_ml()["organ"] > 0 and seg3.components()[0]["class_name"] == "organ"
    assert seg3.timings["total"] > 0 and "3d_fill_holes" in seg3.timings["steps_ms"]


def test_segment_volume_can_be_cancelled(model_and_config):
    from segcore.pipeline import SegmentationCancelled, segment_volume

    model, config = model_and_config
    with pytest.raises(SegmentationCancelled, match="Slice 2 of 5"):
        segment_volume(_ct(), model, config, refine=False, batch_size=2,
                       progress=lambda f, m: not m.startswith("Slice 2"))


def test_cli_segment_volume_writes_nifti_and_seg(tmp_path, root, capsys):
    from segcore.cli import main
    from segcore.dicomseg import read_seg
    from segcore.io import load_scan
    from segcore.phantom import make_phantom
    from segcore.series import load_series
    from tests.dicom_series import write_series

    vol = np.stack([make_phantom(7, 64)[0] for _ in range(4)]).astype(np.int16)
    src = tmp_path / "ct_series"
    src.mkdir()
    for name, data in write_series(vol, spacing=(2.0, 1.0, 1.0)):
        (src / name).write_bytes(data)
    out = tmp_path / "out"
    assert main(["segment-volume", str(src), "--out", str(out),
                 "--model", str(root / "sample_data" / "models" / "default")]) == 0
    assert '"written": ["ct_series_labels.nii.gz", "ct_series_seg.dcm"]' in capsys.readouterr().out
    scan = load_series([src])
    labels = load_scan(out / "ct_series_labels.nii.gz")
    np.testing.assert_allclose(labels.affine, scan.affine, atol=1e-5)
    np.testing.assert_array_equal(read_seg((out / "ct_series_seg.dcm").read_bytes(), scan), labels.pixels)
