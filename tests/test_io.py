import gzip
import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image

from segcore.io import CT_PRESETS, ScanError, auto_window, load_scan, window


# ---------------------------------------------------------------- raster formats

def _png_bytes(arr, mode=None):
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_png_8bit_gray_roundtrip():
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8)
    scan = load_scan(_png_bytes(arr), "x.png")
    assert scan.pixels.dtype == np.float32
    np.testing.assert_array_equal(scan.pixels, arr)
    assert scan.format == "png"


def test_png_16bit_keeps_full_range(tmp_path):
    import cv2

    arr = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 250)
    cv2.imwrite(str(tmp_path / "a.png"), arr)
    scan = load_scan(tmp_path / "a.png")
    np.testing.assert_array_equal(scan.pixels, arr.astype(np.float32))
    assert scan.pixels.max() > 255


def test_rgba_is_flattened_and_palette_handled():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128
    scan = load_scan(_png_bytes(rgba), "rgba.png")
    assert scan.pixels.shape == (4, 4)  # colour -> grayscale (BT.601 luma), RGBA composited over black
    assert np.allclose(scan.pixels, 0.299 * 200 * 128 / 255, atol=1e-3)
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 90, 90, 90, 200, 200, 200] + [0] * (768 - 9))
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    scan = load_scan(buf.getvalue(), "pal.png")
    np.testing.assert_array_equal(scan.pixels, [[0, 90], [200, 90]])  # gray palette -> gray image


def test_jpeg_and_bmp():
    arr = np.full((16, 16), 100, np.uint8)
    for fmt, ext in (("JPEG", ".jpg"), ("BMP", ".bmp")):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        scan = load_scan(buf.getvalue(), "a" + ext)
        assert scan.pixels.shape == (16, 16)
        assert abs(float(scan.pixels.mean()) - 100) < 2


def test_tiff_16bit_multipage(tmp_path):
    import tifffile

    stack = np.stack([np.full((8, 10), 1000 * (i + 1), np.uint16) for i in range(3)])
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    scan = load_scan(tmp_path / "s.tif")
    assert scan.pixels.shape == (3, 8, 10)
    assert scan.is_volume
    np.testing.assert_array_equal(scan.slice(0, 2), np.full((8, 10), 3000, np.float32))


def test_shipped_demo_scans_all_load(root):
    demo = root / "sample_data" / "demo"
    names = ["phantom_ct_512.dcm", "phantom_ct_256_hu+1024.png", "phantom_ct_2page_16bit.tif",
             "phantom_ct_multiframe.dcm", "lung1_ct.nii.gz", "brain1_mr.nii.gz"]
    for n in names:
        scan = load_scan(demo / n)
        assert scan.pixels.size > 0 and np.isfinite(scan.pixels).all(), n
    ct = load_scan(demo / "phantom_ct_512.dcm")
    assert ct.modality == "CT" and ct.default_window == (40.0, 400.0) and ct.spacing == (0.7, 0.7)
    assert ct.pixels.min() == -1024  # air in HU after the rescale intercept
    mf = load_scan(demo / "phantom_ct_multiframe.dcm")
    assert mf.pixels.shape == (4, 256, 256) and mf.spacing == (5.0, 1.0, 1.0)


# ---------------------------------------------------------------- DICOM

def test_ct_small_hu_matches_pydicom(pydicom_files):
    path = pydicom_files / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    scan = load_scan(path)
    np.testing.assert_allclose(scan.pixels, expected)
    assert scan.modality == "CT"
    assert scan.spacing == tuple(float(v) for v in ds.PixelSpacing)


def test_dicom_without_extension_is_detected(pydicom_files):
    data = (pydicom_files / "CT_small.dcm").read_bytes()
    scan = load_scan(data, "IM0001")
    assert scan.format == "dicom"


def test_mr_small_window_and_values(pydicom_files):
    ds = pydicom.dcmread(pydicom_files / "MR_small.dcm")
    scan = load_scan(pydicom_files / "MR_small.dcm")
    np.testing.assert_allclose(scan.pixels, ds.pixel_array.astype(np.float32))
    assert scan.modality == "MR"


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_lossless_equals_uncompressed(pydicom_files, name):
    ref = load_scan(pydicom_files / "MR_small.dcm")
    scan = load_scan(pydicom_files / name)
    np.testing.assert_array_equal(scan.pixels, ref.pixels)
    assert scan.metadata["TransferSyntaxUID"] != "1.2.840.10008.1.2.1"


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_jpeg_no_color_transform.dcm", "SC_rgb_rle.dcm",
                                  "JPEGLSNearLossless_16.dcm"])
def test_compressed_syntaxes_match_pydicom(pydicom_files, name):
    ds = pydicom.dcmread(pydicom_files / name)
    arr = ds.pixel_array.astype(np.float32)
    scan = load_scan(pydicom_files / name)
    if scan.pixels.ndim == arr.ndim and ds.SamplesPerPixel == 1:
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
        np.testing.assert_allclose(scan.pixels, arr * slope + inter)
    else:
        assert scan.pixels.shape[:2] == arr.shape[:2]


def test_multiframe_rgb_dicom_is_a_grayscale_volume(pydicom_files):
    ds = pydicom.dcmread(pydicom_files / "SC_rgb_rle_2frame.dcm")
    rgb = ds.pixel_array.astype(np.float64)  # (2, 100, 100, 3)
    scan = load_scan(pydicom_files / "SC_rgb_rle_2frame.dcm")
    assert scan.pixels.shape == (2, 100, 100) and scan.pixels.dtype == np.float32
    np.testing.assert_allclose(scan.pixels, rgb @ [0.299, 0.587, 0.114], atol=1e-3)


def test_monochrome1_is_inverted(pydicom_files, tmp_path):
    ds = pydicom.dcmread(pydicom_files / "MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    arr = ds.pixel_array.astype(np.float32)
    scan = load_scan(tmp_path / "m1.dcm")
    np.testing.assert_allclose(scan.pixels, arr.max() + arr.min() - arr)


def test_deidentification_drops_patient_tags(root):
    scan = load_scan(root / "sample_data" / "demo" / "phantom_ct_512.dcm")
    ds = pydicom.dcmread(root / "sample_data" / "demo" / "phantom_ct_512.dcm")
    assert str(ds.PatientName) and ds.PatientID  # the file does carry identifiers
    text = repr(scan).lower() + repr(scan.metadata).lower()
    for key in ("patientname", "patientid", "birth", "accession", "anonymous^phantom", "demo-0001", "19700101"):
        assert key not in text
    assert scan.metadata["Modality"] == "CT" and "PixelSpacing" in scan.metadata


def test_jpeg_extended_12bit_that_pydicom_cannot_decode(pydicom_files):
    # pydicom itself cannot decode this file with the installed plugins
    with pytest.raises(Exception):
        pydicom.dcmread(pydicom_files / "JPEG-lossy.dcm").pixel_array
    with pytest.raises(ScanError, match=r"JPEG Extended.*1\.2\.840\.10008\.1\.2\.4\.51.*python-gdcm"):
        load_scan(pydicom_files / "JPEG-lossy.dcm")


def test_undecodable_syntax_names_transfer_syntax(pydicom_files, monkeypatch):
    import pydicom.dataset

    def boom(self):
        raise RuntimeError("no plugin")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(boom))
    with pytest.raises(ScanError, match=r"JPEG 2000.*pip install pylibjpeg pylibjpeg-openjpeg"):
        load_scan(pydicom_files / "MR_small_jp2klossless.dcm")


# ---------------------------------------------------------------- NIfTI / NRRD

def test_nifti_values_affine_and_slicing(nibabel_files):
    import nibabel as nib

    path = nibabel_files / "anatomical.nii"
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    scan = load_scan(path)
    np.testing.assert_allclose(scan.affine, img.affine)
    assert scan.pixels.shape == (data.shape[2], data.shape[1], data.shape[0])
    k = data.shape[2] // 3
    np.testing.assert_allclose(scan.slice(0, k), data[:, :, k].T)
    np.testing.assert_allclose(scan.slice(2, 5), data[5, :, :].T)
    with pytest.raises(ScanError, match="out of range"):
        scan.slice(0, data.shape[2])


def test_nifti_gz_and_4d(nibabel_files):
    scan = load_scan(nibabel_files / "example4d.nii.gz")
    assert scan.pixels.ndim == 3
    scan = load_scan(nibabel_files / "standard.nii.gz")
    assert scan.affine.shape == (4, 4)


def test_nifti_label_writeback_roundtrip(root, tmp_path):
    from segcore.viz import save_label_nifti

    scan = load_scan(root / "sample_data" / "demo" / "lung1_ct.nii.gz")
    labels = (scan.pixels > 0).astype(np.uint8)
    save_label_nifti(labels, scan, tmp_path / "m.nii.gz")
    back = load_scan(tmp_path / "m.nii.gz")
    np.testing.assert_array_equal(back.pixels, labels)
    np.testing.assert_allclose(back.affine, scan.affine)


# ---------------------------------------------------------------- windowing

def test_window_and_presets():
    out = window(np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0]), *CT_PRESETS["soft tissue"])
    assert out.tolist() == [0, 0, 128, 255, 255]
    assert set(CT_PRESETS) >= {"soft tissue", "lung", "bone", "brain"}
    with pytest.raises(ValueError, match="width must be positive"):
        window(np.zeros(3), 0, 0)
    c, w = auto_window(np.arange(1000.0))
    assert 490 < c < 510 and 980 < w < 1000


# ---------------------------------------------------------------- bad input

def test_empty_input():
    with pytest.raises(ScanError, match=r"empty \(0 bytes\)"):
        load_scan(b"", "empty.png")


def test_truncated_png():
    data = _png_bytes(np.zeros((64, 64), np.uint8))
    with pytest.raises(ScanError, match="truncated or corrupt"):
        load_scan(data[: len(data) // 2], "cut.png")


def test_truncated_dicom(pydicom_files):
    data = (pydicom_files / "CT_small.dcm").read_bytes()
    with pytest.raises(ScanError, match="CT_small.dcm.*looks truncated"):
        load_scan(data[: len(data) - 5000], "CT_small.dcm")


def test_truncated_nifti(nibabel_files):
    data = (nibabel_files / "anatomical.nii").read_bytes()
    with pytest.raises(ScanError, match="truncated"):
        load_scan(data[:2000], "anat.nii")


def test_wrong_extension_content_mismatch():
    png = _png_bytes(np.zeros((4, 4), np.uint8))
    with pytest.raises(ScanError, match="extension '.dcm' but contains a PNG"):
        load_scan(png, "scan.dcm")
    with pytest.raises(ScanError, match="content is not a valid PNG"):
        load_scan(b"hello world, not an image at all", "notes.png")


def test_unsupported_type():
    with pytest.raises(ScanError, match=r"Unsupported file type '.docx'.*expected PNG, JPEG"):
        load_scan(b"PK\x03\x04 some zip", "report.docx")


def test_decompression_bomb_png():
    # a valid 1-bit PNG declaring 100000 x 100000 pixels, a few hundred bytes long
    w = h = 100_000
    raw = zlib.compress(b"\x00" * 10, 9)

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)) + \
        chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    assert len(data) < 1000
    with pytest.raises(ScanError, match="decompression bomb"):
        load_scan(data, "bomb.png")


def test_over_size_limit(tmp_path):
    data = _png_bytes(np.zeros((64, 64), np.uint8))
    with pytest.raises(ScanError, match=r"'big.png' is \d+ bytes, over the 10 bytes limit"):
        load_scan(data, "big.png", max_bytes=10)
    (tmp_path / "big.png").write_bytes(data)
    with pytest.raises(ScanError, match="over the .* limit"):
        load_scan(tmp_path / "big.png", max_bytes=10)


def test_rtstruct_has_no_pixels(pydicom_files):
    with pytest.raises(ScanError, match="no image pixel data"):
        load_scan(pydicom_files / "rtstruct.dcm")


def test_gzip_that_is_not_nifti():
    with pytest.raises(ScanError, match="NIfTI"):
        load_scan(gzip.compress(b"x" * 500), "fake.nii.gz")


def test_missing_file(tmp_path):
    with pytest.raises(ScanError, match="No such file"):
        load_scan(tmp_path / "nope.png")


def test_nrrd_volume_spacing_and_affine(tmp_path):
    import nrrd

    vol = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)  # x, y, z
    header = {"space": "left-posterior-superior",
              "space directions": np.diag([0.5, 0.75, 2.0]), "space origin": np.array([1.0, 2.0, 3.0])}
    nrrd.write(str(tmp_path / "v.nrrd"), vol, header)
    scan = load_scan(tmp_path / "v.nrrd")
    assert scan.pixels.shape == (3, 5, 4)  # D,H,W = z,y,x
    np.testing.assert_array_equal(scan.slice(0, 1), vol[:, :, 1].T)
    assert scan.spacing == (2.0, 0.75, 0.5)
    np.testing.assert_allclose(scan.affine[:3, 3], [-1.0, -2.0, 3.0])  # LPS origin in RAS
