"""Hostile uploads for the hardening tests and ``bench/hostile_uploads.py``.

Each builder returns the bytes an attacker (or a careless user) would upload.
Bombs are produced by streaming compression, so building a 1 GiB bomb costs a
few MB of memory.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np

GiB = 1024**3
_CHUNK = 16 * 1024 * 1024


def _stream_compress(n_zeros: int, compressor, prefix: bytes = b"") -> bytes:
    out = [compressor.compress(prefix)] if prefix else []
    zeros = bytes(_CHUNK)
    left = n_zeros
    while left > 0:
        k = min(left, _CHUNK)
        out.append(compressor.compress(zeros[:k]))
        left -= k
    out.append(compressor.flush())
    return b"".join(out)


def gzip_zeros(n: int, prefix: bytes = b"") -> bytes:
    return _stream_compress(n, zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS), prefix)


# ------------------------------------------------------------------ NRRD

def nrrd_detached(target: str, key: str = "data file", sizes: str = "4 4", encoding: str = "raw") -> bytes:
    """An NRRD header whose data lives in another file (``target``): must never be read."""
    return (f"NRRD0004\ntype: uint8\ndimension: {len(sizes.split())}\nsizes: {sizes}\nencoding: {encoding}\n"
            f"{key}: {target}\n\n").encode()


def nrrd_gzip_bomb(n: int = GiB, sizes: str = "1 1") -> bytes:
    header = f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: {sizes}\nencoding: gzip\n\n".encode()
    return header + gzip_zeros(n)


def nrrd_bytes(arr: np.ndarray, encoding: str = "gzip") -> bytes:
    import nrrd

    buf = io.BytesIO()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "v.nrrd"
        nrrd.write(str(p), arr, {"encoding": encoding, "space": "left-posterior-superior",
                                 "space directions": np.eye(arr.ndim), "space origin": np.zeros(arr.ndim)}
                   if arr.ndim == 3 else {"encoding": encoding})
        buf.write(p.read_bytes())
    return buf.getvalue()


# ------------------------------------------------------------------ DICOM

def _dicom_dataset(rows: int, cols: int, frames: int | None = None, bits: int = 8):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["hostile"])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, cols
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def deflated_dicom_bomb(n: int = GiB) -> bytes:
    """A 1x1 8-bit image whose deflated dataset carries ``n`` bytes of pixel data."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _dicom_dataset(1, 1)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    # (7FE0,0010) OB, reserved, 4-byte length, then the bytes (all zeros)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, n)
    comp = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = _stream_compress(n, comp, body.getvalue() + pixel_header)
    meta = DicomBytesIO()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + deflated


def dicom_bytes(arr: np.ndarray, frames: int | None = None, spacing=(0.5, 0.5)) -> bytes:
    """A native (uncompressed) 16-bit DICOM of ``arr`` (``H,W`` or ``F,H,W``); ``frames`` overrides NumberOfFrames."""
    ds = _dicom_dataset(arr.shape[-2], arr.shape[-1], frames if frames is not None else
                        (arr.shape[0] if arr.ndim == 3 else None), bits=16)
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 2.5
    ds.PixelData = np.ascontiguousarray(arr.astype("<u2")).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ------------------------------------------------------------------ NIfTI

def nifti_gz_bomb_declared(shape=(4096, 4096, 64)) -> bytes:
    """A tiny gzip NIfTI whose header declares a float32 volume larger than the decoded budget."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    return gzip.compress(hdr.binaryblock + b"\x00" * 4, 1)


def nifti_gz_trailing_bomb(n: int = GiB) -> bytes:
    """A valid 8x8x2 NIfTI followed (inside the same gzip stream) by ``n`` bytes of zeros."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ones((8, 8, 2), np.float32), np.eye(4))
    return gzip_zeros(n, prefix=img.to_bytes())


# ------------------------------------------------------------------ TIFF / PNG

def tiff_zlib_bomb(n: int = GiB) -> bytes:
    """An 8x8 zlib-compressed TIFF whose only strip inflates to ``n`` bytes."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((8, 8), np.uint8), compression="zlib")
    data = bytearray(buf.getvalue())
    bomb = _stream_compress(n, zlib.compressobj(1))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tags = tif.pages[0].tags
        off_pos, cnt_pos = tags["StripOffsets"].valueoffset, tags["StripByteCounts"].valueoffset
        cnt_fmt = "<I" if tags["StripByteCounts"].dtype == 4 else "<H"
    new_off = len(data)
    data += bomb
    struct.pack_into("<I", data, off_pos, new_off)
    struct.pack_into(cnt_fmt, data, cnt_pos, len(bomb) if cnt_fmt == "<I" else min(len(bomb), 65535))
    return bytes(data)


def tiff_zero_width() -> bytes:
    """An 8x8 TIFF whose ImageWidth tag was set to 0."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.arange(64, dtype=np.uint8).reshape(8, 8))
    data = bytearray(buf.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tag = tif.pages[0].tags["ImageWidth"]
        fmt = "<I" if tag.dtype == 4 else "<H"
        struct.pack_into(fmt, data, tag.valueoffset, 0)
    return bytes(data)


def png_rgba(h: int, w: int, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption: flipped bytes, an extreme integer in the header, truncation or insertion."""
    b = bytearray(data)
    op = rng.integers(0, 5)
    if op == 0:  # flip 1-8 random bytes anywhere
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
    elif op == 1:  # extreme 2- or 4-byte integer in the first KB (headers, tags, sizes)
        pos = int(rng.integers(0, max(min(len(b), 1024) - 4, 1)))
        val = [0, 1, 0xFFFF, 0x7FFF, 0xFFFFFFFF, 0x7FFFFFFF, 0x10000][int(rng.integers(0, 7))]
        if rng.random() < 0.5:
            struct.pack_into("<H" if rng.random() < 0.5 else ">H", b, pos, val & 0xFFFF)
        else:
            struct.pack_into("<I" if rng.random() < 0.5 else ">I", b, pos, val)
    elif op == 2:  # truncate
        b = b[: int(rng.integers(1, len(b)))]
    elif op == 3:  # insert random bytes
        pos = int(rng.integers(0, len(b)))
        b[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    else:  # one byte changed in the middle of the data (e.g. a compressed stream)
        pos = int(rng.integers(len(b) // 4, len(b)))
        b[pos] = int(rng.integers(0, 256))
    return bytes(b)
