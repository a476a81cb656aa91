"""3-D refinement and measurements against scipy.ndimage and scikit-image; propagation of corrected slices.

`label_3d` wraps scipy.ndimage.label, so components are checked against scikit-image's independent labelling.
"""

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure

from segcore.volume import (
    VolumeRefineConfig,
    class_volumes_ml,
    closing_3d,
    component_table_3d,
    fill_holes_3d,
    hd95_3d,
    keep_largest_3d,
    label_3d,
    refine_volume,
    remove_small_3d,
)


def _random_volume(seed, shape=(9, 14, 13), p=0.3):
    rng = np.random.default_rng(seed)
    return rng.random(shape) < p


def _flood_label(b, rank):
    """Reference labelling by breadth-first flood fill, raster order; neighbours within ``rank`` unit steps."""
    from collections import deque

    steps = [d for d in np.ndindex(3, 3, 3) if 0 < sum(abs(v - 1) for v in d) <= rank]
    steps = [tuple(v - 1 for v in d) for d in steps]
    lab, n = np.zeros(b.shape, np.int32), 0
    for start in zip(*np.nonzero(b)):
        if lab[start]:
            continue
        n += 1
        lab[start] = n
        todo = deque([start])
        while todo:
            p = todo.popleft()
            for d in steps:
                q = tuple(p[i] + d[i] for i in range(3))
                if all(0 <= q[i] < b.shape[i] for i in range(3)) and b[q] and not lab[q]:
                    lab[q] = n
                    todo.append(q)
    return lab, n


def _same_partition(a, b):
    """Two labelings describe the same components (a bijection between their ids)."""
    assert ((a > 0) == (b > 0)).all()
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]], 1), axis=0)
    assert len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("conn,rank", [(26, 3), (18, 2), (6, 1)])
def test_label_3d_matches_scikit_image(seed, conn, rank):
    b = _random_volume(seed, p=0.25 + 0.05 * seed)
    n, lab = label_3d(b, conn)
    if conn == 18:  # scikit-image has no 18-connectivity: a breadth-first flood fill is the reference
        ref, n_ref = _flood_label(b, rank)
    else:
        ref, n_ref = measure.label(b, connectivity=rank, return_num=True)
    assert n == n_ref
    np.testing.assert_array_equal(lab, ref)  # same ids too: both number components in raster order


@pytest.mark.parametrize("seed", range(4))
def test_remove_small_keep_largest_and_table_match_scikit_image(seed):
    rng = np.random.default_rng(seed)
    v = (rng.random((8, 15, 17)) < 0.3).astype(np.uint8) + (rng.random((8, 15, 17)) < 0.15)
    sp = (2.0, 0.5, 0.75)
    vox = 2.0 * 0.5 * 0.75
    expected_small, expected_largest, expected_rows = v.copy(), v.copy(), []
    for c in (1, 2):
        ref = measure.label(v == c, connectivity=3)
        props = measure.regionprops(ref)
        for p in props:
            if p.area * vox < 3.0:
                expected_small[ref == p.label] = 0
        largest = max(props, key=lambda p: (p.area, -p.label)).label
        expected_largest[(ref != largest) & (ref > 0)] = 0
        expected_rows += sorted(((c, p.area, p.bbox, tuple(round(x, 2) for x in p.centroid)) for p in props),
                                key=lambda r: -r[1])
    np.testing.assert_array_equal(remove_small_3d(v, 3.0, spacing=sp), expected_small)
    np.testing.assert_array_equal(keep_largest_3d(v), expected_largest)
    rows = component_table_3d(v, None, sp)
    assert [(r["class"], r["voxels"], r["bbox"], r["centroid"]) for r in rows] == expected_rows


def test_label_3d_validates():
    with pytest.raises(ValueError, match=r"should be in \[6, 18, 26\]. Got 8"):
        label_3d(np.zeros((2, 2, 2), bool), 8)
    with pytest.raises(ValueError, match="3-D binary volume"):
        label_3d(np.zeros((2, 2), bool))


@pytest.mark.parametrize("seed", range(5))
def test_fill_holes_3d_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    b = np.zeros((12, 16, 16), bool)
    b[2:10, 3:13, 2:14] = True
    for _ in range(6):  # cavities, some open to the outside
        z, y, x = rng.integers(1, 11), rng.integers(1, 15), rng.integers(1, 15)
        b[z:z + 2, y:y + rng.integers(1, 4), x:x + 2] = False
    labels = b.astype(np.uint8)
    out = fill_holes_3d(labels)
    np.testing.assert_array_equal(out == 1, ndimage.binary_fill_holes(b))
    assert labels.sum() == b.sum()  # input untouched


def test_fill_holes_3d_leaves_cavities_holding_another_class():
    v = np.zeros((7, 7, 7), np.uint8)
    v[1:6, 1:6, 1:6] = 1
    v[3, 3, 3] = 2
    v[2, 2, 2] = 0
    out = fill_holes_3d(v, classes=[1])
    assert out[3, 3, 3] == 2 and out[2, 2, 2] == 1


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("radius,spacing", [(1.0, (1, 1, 1)), (2.0, (1.0, 0.7, 0.7)), (3.0, (2.5, 0.8, 1.0))])
def test_closing_3d_matches_scipy_binary_closing(seed, radius, spacing):
    b = _random_volume(seed, (10, 18, 18), p=0.15)
    out = closing_3d(b.astype(np.uint8), radius, spacing=spacing)
    # scipy with the same ball, on a volume padded so that the border behaves as background
    r = [int(np.floor(radius / s + 1e-9)) for s in spacing]
    grid = np.mgrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1].astype(float)
    ball = np.sqrt(sum((grid[i] * spacing[i]) ** 2 for i in range(3))) <= radius + 1e-9
    pad = [x + 1 for x in r]
    ref = ndimage.binary_closing(np.pad(b, [(p, p) for p in pad]), structure=ball)
    ref = ref[tuple(slice(p, -p) for p in pad)]
    np.testing.assert_array_equal(out == 1, ref | b)


def test_remove_small_and_keep_largest_in_mm3():
    v = np.zeros((6, 10, 10), np.uint8)
    v[0:2, 0:2, 0:2] = 1   # 8 voxels
    v[3:6, 4:9, 4:9] = 1   # 75 voxels
    v[5, 0, 9] = 2         # 1 voxel of another class
    sp = (2.0, 0.5, 0.5)   # 0.5 mm3 per voxel
    out = remove_small_3d(v, 5.0, spacing=sp)  # 8 vox = 4 mm3 < 5: removed; the class-2 voxel too
    assert out[0:2, 0:2, 0:2].sum() == 0 and out[3:6, 4:9, 4:9].all() and out[5, 0, 9] == 0
    assert remove_small_3d(v, 3.0, spacing=sp)[0, 0, 0] == 1
    diag = np.zeros((3, 3, 3), np.uint8)
    diag[0, 0, 0] = diag[1, 1, 1] = diag[2, 2, 2] = 1  # one 26-connected component of 3 voxels
    assert remove_small_3d(diag, 3).sum() == 3 and remove_small_3d(diag, 2, connectivity=6).sum() == 0
    kept = keep_largest_3d(v, classes=[1])
    assert kept[0:2, 0:2, 0:2].sum() == 0 and kept[5, 0, 9] == 2


def test_volumes_and_component_table():
    v = np.zeros((4, 10, 10), np.uint8)
    v[0:2, 0:4, 0:5] = 1          # 40 voxels
    v[1:4, 6:9, 6:9] = 1          # 27 voxels
    v[3, 0, 0] = 2
    sp = (3.0, 0.5, 0.5)          # 0.75 mm3 per voxel
    vols = class_volumes_ml(v, sp, ("background", "organ", "lesion"))
    assert vols == {"organ": pytest.approx(67 * 0.75 / 1000), "lesion": pytest.approx(0.75 / 1000)}
    rows = component_table_3d(v, ("background", "organ", "lesion"), sp)
    assert [(r["class_name"], r["component"], r["voxels"]) for r in rows] == [("organ", 1, 40), ("organ", 2, 27),
                                                                              ("lesion", 1, 1)]
    assert rows[1]["bbox"] == (1, 6, 6, 4, 9, 9) and rows[1]["slices"] == (1, 3)
    assert rows[1]["centroid"] == (2.0, 7.0, 7.0) and rows[0]["volume_ml"] == pytest.approx(0.03)


def test_hd95_3d_against_brute_force():
    rng = np.random.default_rng(0)
    a = np.zeros((8, 12, 12), np.uint8)
    b = np.zeros_like(a)
    a[2:6, 3:9, 3:9] = 1
    b[3:7, 4:10, 2:8] = 1
    sp = (2.0, 0.7, 0.9)
    h = hd95_3d(a, b, 2, sp)

    def surface(m):
        return m & ~ndimage.binary_erosion(m, np.ones((3, 3, 3)), border_value=0)

    pa, pb = np.argwhere(surface(a == 1)) * sp, np.argwhere(surface(b == 1)) * sp
    d = np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1))
    ref = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
    assert h[1] == pytest.approx(ref)
    assert hd95_3d(a, np.zeros_like(a), 2)[1] == np.inf and rng is not None


def test_refine_volume_runs_enabled_steps_in_order():
    v = np.zeros((5, 12, 12), np.uint8)
    v[1:4, 2:10, 2:10] = 1
    v[2, 5, 5] = 0          # cavity
    v[0, 0, 0] = 1          # speck
    cfg = VolumeRefineConfig()
    out, t = refine_volume(v, (1.0, 1.0, 1.0), cfg)
    assert out[2, 5, 5] == 1 and out[0, 0, 0] == 0 and set(t) == {"3d_fill_holes", "3d_remove_small"}
    with pytest.raises(ValueError, match="Unknown 3-D refinement steps"):
        VolumeRefineConfig(order=("dilate",))


def _curved_lesion(d=22, size=48, seed=0):
    """A bright lesion whose centre moves on a curve and whose radius changes non-linearly (slices 3..17)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    gt = np.zeros((d, size, size), np.uint8)
    for z in range(3, 18):
        t = (z - 3) / 14
        cy, cx = 24 + 9 * np.sin(np.pi * t), 14 + 20 * t
        r = 3 + 6 * np.sin(np.pi * t) ** 0.5
        gt[z] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img = np.where(gt > 0, 120.0, 20.0) + rng.normal(0, 12, gt.shape)
    img[:, 5:10, 30:45] = 120.0  # a bright distractor away from the lesion
    return img.astype(np.float32), gt


def _dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_propagate_beats_shape_interpolation_and_stops_where_the_lesion_ends():
    from segcore.volume import interpolate_shapes, propagate

    img, gt = _curved_lesion()
    ann = {z: gt[z] for z in (5, 10, 15)}
    ann_before = {z: m.copy() for z, m in ann.items()}
    sp = (2.0, 0.8, 0.8)
    interp = interpolate_shapes(ann, img.shape, sp)
    prop = propagate(img, ann, spacing=sp)
    ev = [z for z in range(3, 18) if z not in ann]
    d_interp, d_prop = _dice(interp[ev] > 0, gt[ev] > 0), _dice(prop[ev] > 0, gt[ev] > 0)
    assert d_prop > d_interp + 0.05 and d_prop > 0.85
    for z, m in ann.items():  # annotated slices come back exactly; inputs untouched
        np.testing.assert_array_equal(prop[z], m)
        np.testing.assert_array_equal(m, ann_before[z])
    # extrapolation: the lesion's first slices (3, 4) are found, nothing beyond its end (18+) or before it
    assert _dice(prop[3:5] > 0, gt[3:5] > 0) > 0.6
    assert prop[18:].sum() == 0 and prop[:2].sum() == 0 and prop[:, 5:10, 30:45].sum() == 0


def test_propagate_without_evidence_does_not_extrapolate_into_uniform_tissue():
    from segcore.volume import propagate

    rng = np.random.default_rng(1)
    img = rng.normal(50, 5, (12, 32, 32)).astype(np.float32)  # the "lesion" has no contrast at all
    m = np.zeros((32, 32), np.uint8)
    m[10:20, 10:20] = 1
    out = propagate(img, {4: m, 7: m}, spacing=(1.0, 1.0, 1.0))
    assert out[:3].sum() == 0 and out[9:].sum() == 0  # nothing supports growing beyond the annotated range


def test_interpolate_shapes_and_propagate_validate_inputs():
    from segcore.volume import interpolate_shapes, propagate

    m = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="at least one"):
        propagate(np.zeros((4, 8, 8)), {})
    with pytest.raises(ValueError, match=r"Annotated slice 9 is out of range for a volume of 4 slices"):
        propagate(np.zeros((4, 8, 8)), {9: m})
    with pytest.raises(ValueError, match=r"has shape \(8, 8\); the volume's slices are \(6, 6\)"):
        interpolate_shapes({0: m}, (4, 6, 6))
    with pytest.raises(ValueError, match="D,H,W volume"):
        propagate(np.zeros((8, 8)), {0: m})
    a = np.zeros((9, 9), np.uint8)
    a[2:7, 2:7] = 2
    v = interpolate_shapes({0: a, 4: np.zeros_like(a)}, (5, 9, 9))
    assert v[1].sum() > 0 and v[3].sum() == 0 and set(np.unique(v)) <= {0, 2}


def test_propagate_two_classes_lesion_inside_organ():
    from segcore.volume import interpolate_shapes, propagate

    rng = np.random.default_rng(2)
    d, size = 14, 64
    yy, xx = np.mgrid[0:size, 0:size]
    gt = np.zeros((d, size, size), np.uint8)
    for z in range(1, 13):
        r = 18 + 4 * np.sin(z / 4)
        gt[z][(yy - 32) ** 2 + (xx - 30 - z) ** 2 <= r * r] = 1
        if 3 <= z <= 10:
            gt[z][(yy - 30) ** 2 + (xx - 28 - z) ** 2 <= (5 + (z % 3)) ** 2] = 2
    img = np.choose(gt, [20.0, 80.0, 150.0]) + rng.normal(0, 8, gt.shape)
    ann = {z: gt[z] for z in (3, 6, 10)}
    out = propagate(img.astype(np.float32), ann, spacing=(2.0, 1.0, 1.0))
    interp = interpolate_shapes(ann, gt.shape, (2.0, 1.0, 1.0))
    ev = [z for z in range(3, 11) if z not in ann]
    for c in (1, 2):
        assert _dice(out[ev] == c, gt[ev] == c) > 0.95, c
    assert _dice(out[ev] == 2, gt[ev] == 2) > _dice(interp[ev] == 2, gt[ev] == 2) + 0.1
    # the organ continues beyond the annotated range; the lesion (ending at 3 and 10) barely
    assert _dice(out[[1, 2, 11, 12]] == 1, gt[[1, 2, 11, 12]] == 1) > 0.95
    assert (out[[1, 2, 11, 12]] == 2).sum() < 0.2 * (gt[[3, 10]] == 2).sum()  # one thin slice at most
