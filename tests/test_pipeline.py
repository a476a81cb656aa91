"""segcore.pipeline: the one way anything is segmented; and the viewer's layers and figures."""

import numpy as np
import pytest

from segcore.io import Scan, load_scan
from segcore.pipeline import model_view, no_refinement, predict, refine_prediction, segment, segment_all_slices
from segcore.refine import RefineConfig, Refiner


@pytest.fixture(scope="module")
def model(root):
    from segcore.models import load_model

    return load_model(root / "sample_data" / "models" / "default")


def test_segment_is_predict_then_refine_on_the_model_view(model, root):
    m, cfg = model
    scan = load_scan(root / "sample_data" / "demo" / "phantom_ct_512.dcm")
    seg = segment(scan, m, cfg)
    pred = predict(scan, m, cfg)
    np.testing.assert_array_equal(seg.raw, pred.probs.argmax(-1))
    expected = Refiner(RefineConfig()).run(model_view(scan.pixels, cfg), pred.probs).labels
    np.testing.assert_array_equal(seg.refined, expected)
    assert seg.model_version == cfg.version and seg.spacing == (0.7, 0.7) and seg.slice_index is None
    assert set(seg.timings) >= {"predict", "crf", "close", "remove_small"}
    assert 0 <= seg.mean_entropy <= 1
    off = segment(scan, m, cfg, refine=False)
    np.testing.assert_array_equal(off.refined, off.raw)
    assert off.refine_config is None
    same = refine_prediction(pred, cfg, no_refinement())
    np.testing.assert_array_equal(same.refined, pred.raw)


def test_masks_do_not_depend_on_how_the_scan_is_displayed(model, root):
    """The same pixels in HU (DICOM) and as HU+1024 (PNG) give the same masks: normalisation is the model's."""
    m, cfg = model
    hu = load_scan(root / "sample_data" / "demo" / "phantom_ct_512.dcm")
    shifted = Scan(pixels=hu.pixels + 1024.0, spacing=hu.spacing)
    a, b = segment(hu, m, cfg), segment(shifted, m, cfg)
    np.testing.assert_array_equal(a.raw, b.raw)
    assert (a.refined != b.refined).mean() < 1e-4


def test_volume_slices_and_bad_slice_index(model, root):
    m, cfg = model
    vol = load_scan(root / "sample_data" / "demo" / "phantom_ct_multiframe.dcm")
    seg = segment(vol, m, cfg, slice_index=1)
    assert seg.slice_index == 1 and seg.raw.shape == vol.pixels.shape[1:]
    assert segment(vol, m, cfg).slice_index == vol.num_slices // 2
    labels = segment_all_slices(vol, m, cfg)
    assert labels.shape == vol.pixels.shape
    np.testing.assert_array_equal(labels[1], seg.refined)
    flat = load_scan(root / "sample_data" / "demo" / "phantom_ct_512.dcm")
    with pytest.raises(ValueError, match="2-D image; slice_index must be None"):
        segment(flat, m, cfg, slice_index=3)


def test_layers_blend_to_the_same_pictures_as_before():
    from segcore.viz import contour_layer, contours, diff_image, diff_layer, mask_layer, overlay

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    raw = np.zeros((40, 50), np.uint8)
    raw[5:20, 5:30] = 1
    raw[25:35, 10:20] = 2
    ref = raw.copy()
    ref[5:8, :] = 0
    ref[30:38, 30:40] = 1

    def blend(base, layer):
        a = layer[..., 3:4].astype(np.float32) / 255
        return (base[..., None].astype(np.float32) * (1 - a) + layer[..., :3] * a)

    assert np.abs(blend(gray, mask_layer(raw, 0.45)) - overlay(gray, raw, 0.45)).max() <= 1.5  # alpha in 1/255
    np.testing.assert_array_equal(np.rint(blend(gray, contour_layer(ref))).astype(np.uint8), contours(gray, ref))
    assert np.abs(blend(gray, diff_layer(raw, ref)) - diff_image(gray, raw, ref)).max() <= 1.5
    assert mask_layer(raw)[..., 3][raw == 0].max() == 0  # background fully transparent


def test_figure_hover_and_click_layers(model, root):
    from segcore.figures import CLICK_TRACE_NAME, image_panels
    from segcore.viz import view_panels

    gray = np.zeros((300, 200), np.uint8)
    lab = np.zeros((300, 200), np.uint8)
    lab[100:150, 50:120] = 2
    fig = image_panels(view_panels("Overlay", gray, lab, lab), pixel_values=gray.astype(np.float32), raw=lab,
                       refined=lab, prob=np.ones((300, 200)), class_names=("bg", "organ", "lesion"), clickable=True)
    kinds = [t.type for t in fig.data]
    assert kinds.count("image") == 4 and kinds.count("heatmap") == 1  # the clickable panel hovers via its points
    click = [t for t in fig.data if t.name == CLICK_TRACE_NAME]
    assert len(click) == 1 and max(click[0].y) < 300 and max(click[0].x) < 200  # x = column, y = row
    heat = next(t for t in fig.data if t.type == "heatmap")
    assert heat.customdata.shape[-1] == 3 and heat.customdata[..., 1].max() == 2  # raw class ids
    assert "class ids: 1 organ · 2 lesion" in fig.layout.title.text
    assert fig.layout.height < 720  # sized to the aspect, no empty band
    # the first click adds a mark to an existing trace: the browser updates the figure instead of redrawing it
    clicked = image_panels([("p", gray, None)], clickable=True, marks=[(10, 20, "#2ecc71")])
    assert [t.type for t in image_panels([("p", gray, None)], clickable=True).data] == [t.type for t in clicked.data]
    assert list(clicked.data[-1].x) == [20] and list(clicked.data[-1].y) == [10]


def test_instance_labels_do_not_overlap():
    from segcore.viz import instance_labels, place_labels

    boxes = np.array([[10, 10, 8, 8], [11, 11, 8, 8], [12, 12, 8, 8], [60, 60, 8, 8]], float)
    det = {"boxes": boxes, "scores": np.ones(4)}
    labs = instance_labels(det, (100, 100), screen_scale=4.0)
    spots = place_labels(boxes, ["1", "2", "3", "4"], (100, 100), 4.0)
    rects = [(r, c, r + 4.0, c + (7 + 6) / 4.0) for s in spots if s for r, c in [s]]
    for i in range(len(rects)):
        for j in range(i + 1, len(rects)):
            a, b = rects[i], rects[j]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    assert len(labs) == sum(s is not None for s in spots) and any(t == "4" for _, _, t, _ in labs)
