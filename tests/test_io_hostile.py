"""Hostile and careless uploads: file disclosure, decompression bombs, decoder panics, shape contract, fuzzing.

Each test reproduces a problem found against the previous loader (issue #10) and checks the new outcome.
"""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

import hostile_inputs as H
from segcore.io import ScanError, load_scan
from segcore.limits import Limits, bounded_decompress

ROOT = Path(__file__).resolve().parents[1]


def _assert_contract(scan):
    """The shape contract of segcore.io (module docstring)."""
    p = scan.pixels
    assert p.dtype == np.float32 and p.size > 0 and p.ndim in (2, 3), p.shape
    assert p.shape[-1] >= 2 and p.shape[-2] >= 2, p.shape
    assert np.isfinite(p).all()
    assert scan.spacing is None or len(scan.spacing) == p.ndim, (scan.spacing, p.shape)


# ---------------------------------------------------------------- local file disclosure (NRRD detached data)

@pytest.fixture()
def secret(tmp_path):
    path = tmp_path / "secret.raw"
    path.write_bytes(b"TOPSECRET" * 4)
    return path


@pytest.mark.parametrize("key", ["data file", "datafile"])
@pytest.mark.parametrize("target", ["ABS", "secret.raw", "../secret.raw", "/dev/zero", "/proc/self/environ",
                                    "/etc/passwd", "LIST\nsecret.raw", "img%03d.raw 0 2 1"])
def test_detached_nrrd_is_refused_and_nothing_is_read(tmp_path, secret, monkeypatch, key, target):
    target = str(secret) if target == "ABS" else target
    data = H.nrrd_detached(target, key=key, sizes="6 6")
    monkeypatch.chdir(tmp_path)  # relative names would resolve next to the secret
    opened = []
    real_open = open

    def spy(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    for name in ("scan.nrrd", "scan.nhdr"):
        with pytest.raises(ScanError, match="detached-header NRRD.*self-contained"):
            load_scan(data, name)
    assert not [f for f in opened if "secret" in f or f.startswith(("/dev", "/proc", "/etc"))], opened


def test_attached_nrrd_still_loads_raw_gzip_bzip2_ascii():
    vol = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    for enc in ("raw", "gzip", "bzip2", "ascii"):
        scan = load_scan(H.nrrd_bytes(vol, enc), f"v_{enc}.nrrd")
        np.testing.assert_array_equal(scan.pixels, np.transpose(vol, (2, 1, 0)).astype(np.float32))
        _assert_contract(scan)


def test_nrrd_header_without_data_is_refused():
    with pytest.raises(ScanError, match="no blank line|without data"):
        load_scan(b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 2 2\nencoding: raw\n", "h.nrrd")


# ---------------------------------------------------------------- decompression bombs (small budget, fast)

SMALL = Limits(max_decoded_bytes=16 * 1024 * 1024)


@pytest.mark.parametrize("build,name,match", [
    (lambda: H.nrrd_gzip_bomb(64 * 2**20), "b.nrrd", "decompresses to more than 1 bytes"),
    (lambda: H.deflated_dicom_bomb(64 * 2**20), "b.dcm", "deflated DICOM.*decompresses to more than"),
    (lambda: H.tiff_zlib_bomb(64 * 2**20), "b.tif", "compressed TIFF strip decompresses to more than"),
    (lambda: H.nifti_gz_bomb_declared((512, 512, 64)), "b.nii.gz", "decoded-size budget"),
])
def test_bombs_are_refused_before_they_inflate(build, name, match):
    with pytest.raises(ScanError, match=match):
        load_scan(build(), name, limits=SMALL)


def test_nifti_with_trailing_zeros_reads_only_its_volume():
    scan = load_scan(H.nifti_gz_trailing_bomb(64 * 2**20), "t.nii.gz", limits=SMALL)
    assert scan.pixels.shape == (2, 8, 8) and (scan.pixels == 1).all()


def test_decoded_budget_counts_frames_channels_and_float32():
    rgba = H.png_rgba(64, 64)  # 64*64*4 channels*4 bytes = 65,536 bytes decoded
    load_scan(rgba, "a.png", max_decoded_bytes=65_536)
    with pytest.raises(ScanError, match="64x64 x 4 channel.*65,536 bytes.*SEGCORE_MAX_DECODED_BYTES"):
        load_scan(rgba, "a.png", max_decoded_bytes=65_535)


def test_dicom_pixel_data_beyond_number_of_frames_counts_against_the_budget():
    # 1x1 image, NumberOfFrames=1, 1 MB of native pixel data: pydicom would return 1,048,576 frames
    data = H.dicom_bytes(np.zeros((1024, 512), np.uint16), frames=1)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Rows, ds.Columns = 1, 1
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ScanError, match="524288x1x1"):
        load_scan(buf.getvalue(), "x.dcm", max_decoded_bytes=1_000_000)


def test_budget_from_environment(monkeypatch):
    monkeypatch.setenv("SEGCORE_MAX_DECODED_BYTES", "1000")
    with pytest.raises(ScanError, match="budget of 1,000 bytes"):
        load_scan(H.png_rgba(32, 32), "a.png")
    monkeypatch.setenv("SEGCORE_MAX_DECODED_BYTES", "lots")
    with pytest.raises(ScanError, match="SEGCORE_MAX_DECODED_BYTES must be a positive integer"):
        load_scan(H.png_rgba(32, 32), "a.png")


def test_bounded_decompress_stops_at_limit_plus_one():
    import zlib

    assert bounded_decompress(zlib.compress(b"x" * 100), "auto", 100) == b"x" * 100
    with pytest.raises(ValueError, match="more than"):
        bounded_decompress(zlib.compress(b"x" * 101), "auto", 100)
    two = H.gzip_zeros(5) + H.gzip_zeros(7)  # concatenated gzip members
    assert bounded_decompress(two, "gzip", 12) == bytes(12)
    with pytest.raises(ValueError, match="more than"):
        bounded_decompress(two, "gzip", 11)


@pytest.mark.slow
def test_full_size_bombs_peak_rss_under_1_5_gb(tmp_path):
    """The reproducers of issue #10 at full size (1 GiB), each refused in a fresh process."""
    bombs = {"deflated_dicom_1GiB.dcm": H.deflated_dicom_bomb(), "nrrd_gzip_1GiB.nrrd": H.nrrd_gzip_bomb(),
             "tiff_zlib_1GiB.tif": H.tiff_zlib_bomb(), "nifti_declared.nii.gz": H.nifti_gz_bomb_declared()}
    for name, data in bombs.items():
        (tmp_path / name).write_bytes(data)
    # VmHWM, not ru_maxrss: Linux carries a parent's peak into ru_maxrss across fork + exec
    code = (
        "import json,re,sys\nsys.path.insert(0,%r)\nfrom segcore.io import load_scan, ScanError\n"
        "try:\n    load_scan(open(sys.argv[1],'rb').read(), sys.argv[1]); r='loaded'\n"
        "except ScanError as e:\n    r='refused: '+str(e)[-160:]\n"
        "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "print(json.dumps({'result': r, 'peak_mb': hwm / 1024}))"
    ) % str(ROOT)
    for name in bombs:
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], capture_output=True, text=True,
                             timeout=120)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["result"].startswith("refused"), (name, res, out.stderr[-500:])
        assert res["peak_mb"] < 1500, (name, res)


# ---------------------------------------------------------------- every failure is a ScanError

@pytest.mark.parametrize("value", [0x00, 0x7F, 0xFF])
def test_corrupt_rle_panic_becomes_scan_error(pydicom_files, value):
    data = bytearray((pydicom_files / "MR_small_RLE.dcm").read_bytes())
    data[5629] = value if data[5629] != value else value ^ 1
    try:
        scan = load_scan(bytes(data), "MR_small_RLE.dcm")
    except ScanError as exc:
        assert "MR_small_RLE.dcm" in str(exc)
    else:
        _assert_contract(scan)


def test_pyo3_panic_is_caught(pydicom_files):
    """The exact reproducer: this byte makes the Rust RLE decoder panic (a BaseException)."""
    data = bytearray((pydicom_files / "MR_small_RLE.dcm").read_bytes())
    data[5629] ^= 0xFF
    with pytest.raises(ScanError, match="RLE Lossless.*corrupt.*PanicException"):
        load_scan(bytes(data), "MR_small_RLE.dcm")


def _fuzz_sources(pydicom_files, nibabel_files):
    demo = ROOT / "sample_data" / "demo"
    srcs = {
        "ct.dcm": (pydicom_files / "CT_small.dcm").read_bytes(),
        "rle.dcm": (pydicom_files / "MR_small_RLE.dcm").read_bytes(),
        "jp2k.dcm": (pydicom_files / "MR_small_jp2klossless.dcm").read_bytes(),
        "dfl.dcm": (pydicom_files / "image_dfl.dcm").read_bytes()[:60000],
        "p16.png": (ROOT / "sample_data" / "phantom" / "test" / "images").glob("*.png").__next__().read_bytes(),
        "p.tif": (demo / "phantom_ct_2page_16bit.tif").read_bytes(),
        "a.nii": (nibabel_files / "anatomical.nii").read_bytes(),
        "s.nii.gz": (nibabel_files / "standard.nii.gz").read_bytes(),
        "v.nrrd": H.nrrd_bytes(np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4), "gzip"),
        "r.nrrd": H.nrrd_bytes(np.arange(6 * 5, dtype=np.uint8).reshape(6, 5), "raw"),
        "t.tif": H.tiff_zero_width(),
    }
    from PIL import Image

    for fmt, ext in (("JPEG", "jpg"), ("BMP", "bmp")):
        buf = io.BytesIO()
        Image.fromarray((np.arange(32 * 32) % 256).astype(np.uint8).reshape(32, 32)).save(buf, format=fmt)
        srcs[f"i.{ext}"] = buf.getvalue()
    return srcs


def test_seeded_mutation_fuzz_only_scan_errors_or_valid_scans(pydicom_files, nibabel_files):
    """300 seeded corruptions of real sample files: each loads to a valid Scan or raises ScanError, nothing else."""
    srcs = _fuzz_sources(pydicom_files, nibabel_files)
    rng = np.random.default_rng(20261128)
    names = sorted(srcs)
    outcomes = {"ok": 0, "error": 0}
    limits = Limits(max_decoded_bytes=64 * 2**20)
    for i in range(300):
        name = names[i % len(names)]
        data = H.mutate(srcs[name], rng)
        try:
            scan = load_scan(data, name, limits=limits)
        except ScanError as exc:
            assert str(exc), name
            outcomes["error"] += 1
        else:
            _assert_contract(scan)
            outcomes["ok"] += 1
    assert outcomes["ok"] > 20 and outcomes["error"] > 20, outcomes  # the fuzzer exercised both paths


# ---------------------------------------------------------------- shape contract

def test_tiff_with_zero_width_is_refused():
    with pytest.raises(ScanError, match="empty shape"):
        load_scan(H.tiff_zero_width(), "w.tif")


def test_wrong_number_of_frames_gives_a_volume_with_3d_spacing(root):
    ds = pydicom.dcmread(root / "sample_data" / "demo" / "phantom_ct_multiframe.dcm")
    ref = load_scan(root / "sample_data" / "demo" / "phantom_ct_multiframe.dcm")
    for wrong in (1, 2):
        ds.NumberOfFrames = wrong
        buf = io.BytesIO()
        ds.save_as(buf)
        scan = load_scan(buf.getvalue(), "mf.dcm")
        assert scan.pixels.shape == (4, 256, 256) and len(scan.spacing) == 3
        np.testing.assert_array_equal(scan.pixels, ref.pixels)
        _assert_contract(scan)


@pytest.mark.parametrize("shape", [(1, 40), (40, 1), (1, 1)])
def test_degenerate_images_are_refused(shape):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros(shape, np.uint8)).save(buf, format="PNG")
    with pytest.raises(ScanError, match="degenerate"):
        load_scan(buf.getvalue(), "thin.png")


def test_colour_becomes_grayscale_everywhere(pydicom_files):
    for name in ("SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_16bit_2frame.dcm", "examples_rgb_color.dcm"):
        _assert_contract(load_scan(pydicom_files / name))
    _assert_contract(load_scan(H.png_rgba(16, 16), "c.png"))
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((3, 8, 8, 3), np.uint8), photometric="rgb")
    scan = load_scan(buf.getvalue(), "rgb_stack.tif")
    assert scan.pixels.shape == (3, 8, 8)


def test_all_sample_scans_follow_the_contract(root):
    for p in sorted((root / "sample_data" / "demo").iterdir()):
        _assert_contract(load_scan(p))


def test_long_extension_is_reported_not_crashing():
    with pytest.raises(ScanError, match="Unsupported file type"):
        load_scan(b"\x00" * 400, "scan." + "x" * 300)


def test_random_bytes_named_dcm_are_not_called_a_dicom_object():
    from segcore.io import ScanError, load_scan

    data = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ScanError, match="is not a DICOM file: it has no 'DICM' marker"):
        load_scan(data, "scan.dcm")
