"""Hostile uploads: each reproducer of issue #10 in a fresh process (outcome, time, peak memory), and a long fuzz.

Peak memory is the process's VmHWM (Linux), measured in a child that only imports segcore and loads one file;
the child's baseline after imports is reported beside it.

    .venv/bin/python bench/hostile_uploads.py            # writes bench/results/hostile.json
    .venv/bin/python bench/hostile_uploads.py --fuzz 20000
"""

import argparse
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import hostile_inputs as H  # noqa: E402

CHILD = r"""
import json, re, sys, time
sys.path.insert(0, sys.argv[1])
from segcore.io import load_scan, ScanError
def hwm():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
data = open(sys.argv[2], "rb").read()
base = hwm()
t0 = time.perf_counter()
try:
    s = load_scan(data, sys.argv[3])
    out = {"outcome": "loaded", "shape": list(s.pixels.shape)}
except ScanError as e:
    out = {"outcome": "ScanError", "message": str(e)}
except BaseException as e:
    out = {"outcome": "CRASH " + type(e).__name__, "message": str(e)}
out.update(seconds=round(time.perf_counter() - t0, 3), peak_mb=round(hwm(), 1), baseline_mb=round(base, 1))
print(json.dumps(out))
"""


def reproducers(secret: Path) -> dict:
    import pydicom

    pyd = Path(pydicom.__file__).parent / "data" / "test_files"
    rle = bytearray((pyd / "MR_small_RLE.dcm").read_bytes())
    rle[5629] ^= 0xFF
    mf = pydicom.dcmread(ROOT / "sample_data" / "demo" / "phantom_ct_multiframe.dcm")
    mf.NumberOfFrames = 1
    buf = io.BytesIO()
    mf.save_as(buf)
    return {
        "NRRD 'data file: <absolute path of a server file>'": (H.nrrd_detached(str(secret)), "x.nrrd"),
        "NRRD 'datafile: /etc/passwd'": (H.nrrd_detached("/etc/passwd", key="datafile"), "x.nrrd"),
        "NRRD 'data file: LIST' + relative names": (H.nrrd_detached("LIST\n../secret.raw"), "x.nrrd"),
        "NRRD 'data file: img%03d.raw 0 9 1'": (H.nrrd_detached("img%03d.raw 0 9 1"), "x.nrrd"),
        "NRRD 'data file: /dev/zero'": (H.nrrd_detached("/dev/zero", sizes="100000 100000"), "x.nrrd"),
        "NRRD 'data file: /proc/self/environ'": (H.nrrd_detached("/proc/self/environ"), "x.nrrd"),
        "deflated DICOM 1x1 with 1 GiB pixel data": (H.deflated_dicom_bomb(), "bomb.dcm"),
        "gzip NRRD 'sizes: 1 1' with 1 GiB of zeros": (H.nrrd_gzip_bomb(), "bomb.nrrd"),
        "zlib TIFF 8x8 whose strip inflates to 1 GiB": (H.tiff_zlib_bomb(), "bomb.tif"),
        "gzip NIfTI declaring 4096x4096x64 float32": (H.nifti_gz_bomb_declared(), "bomb.nii.gz"),
        "gzip NIfTI 8x8x2 followed by 1 GiB of zeros": (H.nifti_gz_trailing_bomb(), "trail.nii.gz"),
        "RGBA PNG 4096x4096 (legitimate, within limits)": (H.png_rgba(4096, 4096), "rgba.png"),
        "MR_small_RLE.dcm with byte 5629 changed (Rust decoder panic)": (bytes(rle), "MR_small_RLE.dcm"),
        "TIFF 8x8 with ImageWidth=0": (H.tiff_zero_width(), "w.tif"),
        "multi-frame DICOM with NumberOfFrames=1 (4 frames of data)": (buf.getvalue(), "mf.dcm"),
        "300-character extension": (b"\x00" * 400, "scan." + "x" * 300),
    }


def run_child(data: bytes, name: str, tmp: Path) -> dict:
    path = tmp / "upload.bin"
    path.write_bytes(data)
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(path), name], capture_output=True, text=True,
                         timeout=600)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"outcome": f"CHILD FAILED rc={out.returncode}", "message": out.stderr[-500:]}


def fuzz(n: int, seed: int) -> dict:
    import pydicom
    import nibabel

    from segcore.io import ScanError, load_scan
    from segcore.limits import Limits

    pyd = Path(pydicom.__file__).parent / "data" / "test_files"
    nib = Path(nibabel.__file__).parent / "tests" / "data"
    srcs = {p.name: p.read_bytes() for p in [pyd / "CT_small.dcm", pyd / "MR_small_RLE.dcm",
                                             pyd / "MR_small_jp2klossless.dcm", pyd / "MR_small_jpeg_ls_lossless.dcm",
                                             pyd / "SC_rgb_rle_2frame.dcm", pyd / "JPEG2000.dcm",
                                             nib / "anatomical.nii", nib / "standard.nii.gz",
                                             ROOT / "sample_data/demo/phantom_ct_2page_16bit.tif",
                                             ROOT / "sample_data/demo/phantom_ct_256_hu+1024.png"]}
    srcs["v.nrrd"] = H.nrrd_bytes(np.arange(120, dtype=np.int16).reshape(6, 5, 4), "gzip")
    srcs["b.nrrd"] = H.nrrd_bytes(np.arange(120, dtype=np.int16).reshape(6, 5, 4), "bzip2")
    rng = np.random.default_rng(seed)
    names = sorted(srcs)
    counts = {"loaded": 0, "ScanError": 0, "other": 0}
    others = []
    limits = Limits(max_decoded_bytes=128 * 2**20)
    t0 = time.perf_counter()
    for i in range(n):
        name = names[i % len(names)]
        data = H.mutate(srcs[name], rng)
        try:
            s = load_scan(data, name, limits=limits)
            ok = s.pixels.ndim in (2, 3) and s.pixels.dtype == np.float32 and (
                s.spacing is None or len(s.spacing) == s.pixels.ndim)
            counts["loaded" if ok else "other"] += 1
            if not ok:
                others.append(f"{name}: contract broken {s.pixels.shape} {s.spacing}")
        except ScanError:
            counts["ScanError"] += 1
        except BaseException as exc:  # noqa: BLE001 - what the fuzzer is looking for
            counts["other"] += 1
            others.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
    return {"mutations": n, "seed": seed, "sources": names, "counts": counts, "other_failures": others[:50],
            "seconds": round(time.perf_counter() - t0, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fuzz", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        secret = tmp / "secret.raw"
        secret.write_bytes(b"TOPSECRET" * 100)
        for label, (data, name) in reproducers(secret).items():
            r = run_child(data, name, tmp)
            r.update(case=label, upload_bytes=len(data))
            r["message"] = (r.get("message") or "")[:240]
            rows.append(r)
            print(f"{label:<62} {r['outcome']:<10} {r.get('peak_mb', '?'):>8} MB  {r.get('seconds', '?')} s",
                  flush=True)
    fz = fuzz(args.fuzz, args.seed)
    print(json.dumps(fz["counts"]), fz["seconds"], "s")
    out = {"command": "python bench/hostile_uploads.py --fuzz %d" % args.fuzz, "machine": platform.platform(),
           "reproducers": rows, "fuzz": fz,
           "note": "peak_mb is VmHWM of a fresh child process that imports segcore and loads one upload; "
                   "baseline_mb is its VmHWM right before load_scan (imports plus the upload's bytes)."}
    (ROOT / "bench" / "results" / "hostile.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
