"""Scan I/O: one entry point, :func:`load_scan`, for the formats clinics send.

Shape contract: :attr:`Scan.pixels` is always a non-empty float32 array, either
2-D ``H,W`` (one image) or 3-D ``D,H,W`` (a volume or a multi-page/multi-frame
file), grayscale, finite, with ``H, W >= 2``. Colour inputs are converted to
grayscale with the ITU-R BT.601 luma weights (``0.299 R + 0.587 G + 0.114 B``;
RGBA is first composited over black); images whose channels are all equal keep
their values exactly. :attr:`Scan.spacing` is ``None`` or has one entry per
axis of ``pixels``. Nothing patient-identifying is kept.

Uploads are untrusted: a file must be self-contained (an NRRD header naming a
detached data file, or an OME-TIFF referring to other files, is refused), and
every decoder checks the decoded size against :class:`segcore.limits.Limits`
before allocating, with bounded decompression (see :mod:`segcore.limits`).
Every failure, including a panic inside a native decoder, is a
:class:`ScanError` that says what was wrong and what is accepted.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from .limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_DECODED_BYTES, DEFAULT_MAX_PIXELS, LimitExceeded, Limits
from .limits import bounded_decompress

__all__ = [
    "Scan",
    "ScanError",
    "load_scan",
    "window",
    "auto_window",
    "to_gray",
    "detect_format",
    "CT_PRESETS",
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_DECODED_BYTES",
    "Limits",
]

ACCEPTED_FORMATS = (
    "PNG, JPEG, BMP, TIFF (8/16-bit, multi-page), DICOM (.dcm or DICM preamble), "
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd, attached data only) or a .zip of one DICOM series"
)

# (center, width) in HU
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

# Technical DICOM attributes that may survive de-identification. Everything
# else (names, IDs, dates, addresses, accession numbers, ...) is dropped.
_SAFE_DICOM_TAGS = (
    "Modality",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "BodyPartExamined",
    "Manufacturer",
    "MagneticFieldStrength",
    "KVP",
    "SOPClassUID",
)

_LUMA = (0.299, 0.587, 0.114)


class ScanError(ValueError):
    """A scan could not be read; the message says why and what is accepted."""


@dataclasses.dataclass
class Scan:
    """A loaded, de-identified scan.

    Attributes
    ----------
    pixels : np.ndarray
        float32 grayscale, ``H,W`` or ``D,H,W`` (see the module's shape contract).
    spacing : tuple of float or None
        mm per pixel along each axis of ``pixels`` (``(row, col)`` or
        ``(slice, row, col)``) where known; always one entry per axis.
    modality : str
        "CT", "MR", ... for DICOM; "OT" for plain images and NIfTI/NRRD.
    source_name : str
        File name the scan came from.
    default_window : tuple of float or None
        ``(center, width)`` from the file (DICOM) or None.
    affine : np.ndarray or None
        4x4 NIfTI-style affine mapping voxel to world (RAS), kept to write results back.
    metadata : dict
        Technical tags only.
    format : str
        "png", "jpeg", "bmp", "tiff", "dicom", "nifti" or "nrrd".
    """

    pixels: np.ndarray
    spacing: tuple[float, ...] | None = None
    modality: str = "OT"
    source_name: str = ""
    default_window: tuple[float, float] | None = None
    affine: np.ndarray | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    format: str = ""

    @property
    def is_volume(self) -> bool:
        return self.pixels.ndim == 3

    @property
    def num_slices(self) -> int:
        return self.pixels.shape[0] if self.is_volume else 1

    @property
    def values_are_hu(self) -> bool:
        """True when pixel values are Hounsfield units (CT presets make sense), as far as the file says."""
        if self.modality != "CT":
            return False
        rtype = str(self.metadata.get("RescaleType", "HU") or "HU").upper()
        return rtype in ("HU", "US") and ("RescaleIntercept" in self.metadata or "RescaleSlope" in self.metadata)

    def slice(self, axis: int = 0, index: int | None = None) -> np.ndarray:
        """Return one 2-D slice of a volume (the image itself for 2-D scans).

        Parameters
        ----------
        axis : int
            0, 1 or 2 for volumes.
        index : int, optional
            Slice index; the middle slice when omitted.
        """
        if not self.is_volume:
            return self.pixels
        if axis not in (0, 1, 2):
            raise ScanError(f"Slice axis must be 0, 1 or 2. Got {axis}.")
        n = self.pixels.shape[axis]
        if index is None:
            index = n // 2
        if not 0 <= index < n:
            raise ScanError(f"Slice index {index} is out of range for axis {axis} with {n} slices.")
        return np.take(self.pixels, index, axis=axis)

    def default_display(self, image: np.ndarray) -> np.ndarray:
        """``image`` (a slice of this scan) as uint8 in the file's window, else a percentile window."""
        return window(image, *(self.default_window or auto_window(image)))

    def slice_spacing(self, axis: int = 0) -> tuple[float, float] | None:
        """In-plane spacing (mm) of slices taken along ``axis``."""
        if self.spacing is None:
            return None
        if not self.is_volume:
            return (float(self.spacing[-2]), float(self.spacing[-1]))
        sp = list(self.spacing)
        del sp[axis]
        return (float(sp[0]), float(sp[1]))


# ------------------------------------------------------------------ entry point

def _kind_from_bytes(data: bytes, name: str) -> str:
    lower = name.lower()
    if len(data) >= 132 and data[128:132] == b"DICM":  # before raster magic: DICOM preambles may hold TIFF headers
        return "dicom"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data[:2] == b"\x1f\x8b":
        if lower.endswith(".nrrd"):
            return "nrrd"
        return "nifti_gz"
    if len(data) >= 348 and data[344:348] in (b"n+1\x00", b"ni1\x00", b"n+2\x00"):
        return "nifti"
    if len(data) >= 544 and data[4:8] in (b"n+2\x00",):
        return "nifti"
    if data[:4] == b"NRRD":
        return "nrrd"
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06") and (lower.endswith(".zip") or not Path(lower).suffix):
        return "zip"  # a zip named .docx, .xlsx, ... is not a series
    if lower.endswith(".dcm"):
        return "dicom_nopreamble"
    return "unknown"


_EXT_KIND = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".nii": "nifti",
    ".gz": "nifti_gz",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".zip": "zip",
}


def _extension(name: str) -> str:
    """The file's extension, lower case ('.nii.gz' counts as one); at most 16 characters are looked at."""
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    ext = Path(lower).suffix
    return ext if len(ext) <= 16 else ext[:16] + "…"


# Native decoders (Rust via pyo3, C extensions) can raise BaseException subclasses
# such as pyo3's PanicException; those must become a ScanError too.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


def load_scan(
    source: str | os.PathLike | bytes,
    name: str | None = None,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    max_decoded_bytes: int | None = None,
    limits: Limits | None = None,
) -> Scan:
    """Load a scan from a path or from bytes (an upload).

    Parameters
    ----------
    source : str, PathLike or bytes
        File path or the file's bytes.
    name : str, optional
        File name (used for the extension when ``source`` is bytes).
    max_bytes, max_pixels, max_decoded_bytes : int, optional
        Override one limit of ``limits`` (file size; pixels over all frames; decoded float32 bytes).
    limits : Limits, optional
        All limits at once; defaults to :meth:`Limits.from_env` (environment variables, else the defaults).

    Returns
    -------
    Scan
        Following the module's shape contract.

    Raises
    ------
    ScanError
        Empty, truncated, mismatched, unsupported, oversized, not self-contained or corrupt input.
    """
    try:
        limits = dataclasses.replace(limits or Limits.from_env(), **{
            k: v for k, v in (("max_bytes", max_bytes), ("max_pixels", max_pixels),
                              ("max_decoded_bytes", max_decoded_bytes)) if v is not None})
    except ValueError as exc:
        raise ScanError(f"Invalid limits: {exc}") from exc
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "upload"
    else:
        path = Path(source)
        name = name or path.name
        if not path.is_file():
            raise ScanError(f"No such file: '{path}'. Expected a path to a {ACCEPTED_FORMATS} file.")
        try:
            limits.check_file_size(name, path.stat().st_size)
        except LimitExceeded as exc:
            raise ScanError(str(exc)) from exc
        data = path.read_bytes()
    if len(data) == 0:
        raise ScanError(f"'{name}' is empty (0 bytes). Expected a {ACCEPTED_FORMATS} file.")
    try:
        limits.check_file_size(name, len(data))
    except LimitExceeded as exc:
        raise ScanError(str(exc)) from exc

    kind = _kind_from_bytes(data, name)
    ext = _extension(name)
    ext_kind = "nifti_gz" if ext == ".nii.gz" else _EXT_KIND.get(ext)
    if kind == "unknown":
        if ext_kind is None and ext:
            raise ScanError(f"Unsupported file type '{ext}' for '{name}': expected {ACCEPTED_FORMATS}.")
        if ext_kind is not None:
            raise ScanError(
                f"'{name}' has the extension '{ext}' but its content is not a valid "
                f"{ext_kind.replace('_gz', '').upper()} file (unrecognised header). Expected {ACCEPTED_FORMATS}."
            )
        raise ScanError(f"Could not recognise the format of '{name}': expected {ACCEPTED_FORMATS}.")
    # Content/extension mismatches between raster formats are harmless (we trust content),
    # but a raster file named .dcm/.nii is most likely a mistake worth reporting.
    if ext_kind in ("dicom", "nifti", "nifti_gz", "nrrd") and kind in ("png", "jpeg", "bmp", "tiff"):
        raise ScanError(
            f"'{name}' has the extension '{ext}' but contains a {kind.upper()} image. "
            f"Rename it to match its content; accepted: {ACCEPTED_FORMATS}."
        )

    if kind == "zip":  # a DICOM series (segcore.series bounds and checks the archive)
        from .series import load_zip

        return load_zip(data, name, limits=limits)
    label = kind.replace("_gz", "").replace("_nopreamble", "").upper()
    try:
        if kind in ("png", "jpeg", "bmp", "tiff"):
            scan = _load_raster(data, name, kind, limits)
        elif kind in ("dicom", "dicom_nopreamble"):
            scan = _load_dicom(data, name, limits)
        elif kind in ("nifti", "nifti_gz"):
            scan = _load_nifti(data, name, kind == "nifti_gz", limits)
        else:
            scan = _load_nrrd(data, name, limits)
        scan = _conform(scan, name)
    except ScanError:
        raise
    except LimitExceeded as exc:
        raise ScanError(str(exc)) from exc
    except MemoryError as exc:
        raise ScanError(f"'{name}' is too large to decode in memory.") from exc
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # noqa: BLE001 - library errors and native-decoder panics become a clear message
        raise ScanError(
            f"'{name}' looks like {label} but could not be decoded "
            f"(it may be truncated or corrupt): {type(exc).__name__}: {exc}"
        ) from exc
    scan.source_name = name
    scan.format = kind.replace("_gz", "").replace("_nopreamble", "")
    return scan


def _conform(scan: Scan, name: str) -> Scan:
    """Enforce the shape contract (see the module docstring) on a reader's result."""
    arr = np.asarray(scan.pixels)
    if arr.size == 0 or arr.ndim not in (2, 3):
        raise ScanError(f"'{name}' holds an image of shape {arr.shape}: expected a non-empty 2-D image (H, W) "
                        "or a 3-D volume (slices, H, W).")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
        if scan.spacing is not None and len(scan.spacing) == 3:
            scan.spacing = tuple(scan.spacing[1:])
    if arr.shape[-1] < 2 or arr.shape[-2] < 2:
        raise ScanError(f"'{name}' holds a degenerate image of shape {arr.shape}: rows and columns must both be "
                        "at least 2.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    scan.pixels = arr
    if scan.spacing is not None:
        sp = [float(s) for s in scan.spacing]
        if len(sp) > arr.ndim:
            sp = sp[-arr.ndim:]
        elif len(sp) < arr.ndim:  # in-plane spacing known, slice spacing not: 1 mm is the usual default
            sp = [1.0] * (arr.ndim - len(sp)) + sp
        if not all(np.isfinite(s) and s > 0 for s in sp):
            sp = None
        scan.spacing = tuple(sp) if sp is not None else None
    return scan


def to_gray(arr: np.ndarray, channel_axis: int = -1) -> np.ndarray:
    """Grayscale float32 from a colour array (BT.601 luma; RGBA composited over black; 2 channels = gray + alpha).

    Arrays whose colour channels are all equal keep their values exactly.

    Examples
    --------
    >>> [round(float(v), 3) for v in to_gray(np.array([[[10, 10, 10], [255, 0, 0]]], np.uint8))[0]]
    [10.0, 76.245]
    >>> to_gray(np.array([[[7, 7, 7, 255], [9, 9, 9, 0]]], np.uint8)).tolist()
    [[7.0, 0.0]]
    """
    a = np.moveaxis(np.asarray(arr), channel_axis, -1)
    c = a.shape[-1]
    if c == 1:
        return a[..., 0].astype(np.float32)
    has_alpha = c in (2, 4)
    colours = c - 1 if has_alpha else c
    maxv = float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else 1.0
    equal = all(np.array_equal(a[..., 0], a[..., i]) for i in range(1, colours))
    out = np.empty(a.shape[:-1], np.float32)
    flat_in = a.reshape(-1, c)
    flat_out = out.reshape(-1)
    step = 1 << 20  # convert a million pixels at a time: temporaries stay small for large images
    for s in range(0, flat_in.shape[0], step):
        block = flat_in[s:s + step]
        if equal:
            g = block[:, 0].astype(np.float32)
        elif colours == 3:
            g = block[:, 0].astype(np.float32) * np.float32(_LUMA[0])
            g += block[:, 1].astype(np.float32) * np.float32(_LUMA[1])
            g += block[:, 2].astype(np.float32) * np.float32(_LUMA[2])
        else:
            g = block[:, :colours].astype(np.float32).mean(-1)
        if has_alpha:
            g *= block[:, -1].astype(np.float32) / np.float32(maxv)
        flat_out[s:s + step] = g
    return out


# ------------------------------------------------------------------ raster formats

def _load_raster(data: bytes, name: str, kind: str, limits: Limits) -> Scan:
    if kind == "tiff":
        return _load_tiff(data, name, limits)
    from PIL import Image, ImageSequence

    Image.MAX_IMAGE_PIXELS = None  # our own limits apply, with a clear message
    with Image.open(io.BytesIO(data), formats=[kind.upper()]) as img:
        frames_n = int(getattr(img, "n_frames", 1) or 1)
        bands = len(img.getbands())
        limits.check_decoded(name, (frames_n, img.height, img.width), channels=bands)
        frames = []
        for frame in ImageSequence.Iterator(img):
            arr = _pil_to_gray(frame)
            if frames and arr.shape != frames[0].shape:
                break
            frames.append(arr)
    return Scan(pixels=frames[0] if len(frames) == 1 else np.stack(frames))


def _pil_to_gray(img) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.uint8).astype(np.float32) * 255.0
    if mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
        return np.asarray(img).astype(np.float32)
    if mode not in ("RGB", "RGBA", "LA"):
        img = img.convert("RGBA" if "A" in mode else "RGB")
    return to_gray(np.asarray(img))


def _tiff_strip_sizes(page) -> list[int]:
    """Uncompressed bytes of each strip/tile of a TIFF page, from its tags."""
    itemsize = np.dtype(page.dtype).itemsize if page.dtype is not None else 1
    spp = int(page.samplesperpixel)
    if page.is_tiled:
        per = int(page.tilewidth) * int(page.tilelength) * max(int(page.tiledepth), 1) * itemsize
        per *= spp if page.planarconfig == 1 else 1
        return [per] * len(page.dataoffsets)
    rows = int(page.rowsperstrip) if page.rowsperstrip else int(page.imagelength)
    per = rows * int(page.imagewidth) * itemsize * (spp if page.planarconfig == 1 else 1)
    return [per] * len(page.dataoffsets)


_TIFF_BOUNDED = {8: "zlib", 32946: "zlib", 34925: "lzma"}


def _check_tiff_streams(data: bytes, page, name: str) -> None:
    """Refuse strips/tiles that inflate beyond their declared size (tifffile's codecs are unbounded)."""
    comp = int(page.compression)
    if comp == 1:
        return
    if comp == 32773:  # PackBits: count the output without producing it
        for off, cnt, size in zip(page.dataoffsets, page.databytecounts, _tiff_strip_sizes(page)):
            if _packbits_length(data[off:off + cnt], size + 1) > size + 1024:
                raise LimitExceeded(f"'{name}': a PackBits strip decodes to more than its declared {size:,} bytes "
                                    "(possible decompression bomb).")
        return
    codec = _TIFF_BOUNDED.get(comp)
    if codec is None:
        return  # image codecs (JPEG...) decode into the declared shape, or tifffile refuses them
    for off, cnt, size in zip(page.dataoffsets, page.databytecounts, _tiff_strip_sizes(page)):
        bounded_decompress(data[off:off + cnt], codec, size + 1024, f"'{name}': a compressed TIFF strip")


def _packbits_length(enc: bytes, stop: int) -> int:
    n = i = 0
    while i < len(enc) and n <= stop:
        h = enc[i]
        if h < 128:
            n += h + 1
            i += h + 2
        elif h > 128:
            n += 257 - h
            i += 2
        else:
            i += 1
    return n


def _load_tiff(data: bytes, name: str, limits: Limits) -> Scan:
    import tifffile

    # is_ome=False/_multifile=False: never follow OME-XML references to other files
    with tifffile.TiffFile(io.BytesIO(data), is_ome=False, _multifile=False) as tif:
        pages = list(tif.pages)
        if not pages:
            raise ScanError(f"'{name}' is a TIFF with no pages.")
        first = pages[0]
        shape0 = tuple(int(s) for s in first.shape)
        if not shape0 or 0 in shape0:
            raise ScanError(f"'{name}' is a TIFF whose first page has an empty shape {shape0} "
                            "(ImageWidth or ImageLength is 0).")
        same = [p for p in pages if tuple(int(s) for s in p.shape) == shape0]
        spp = int(first.samplesperpixel)
        limits.check_decoded(name, (len(same),) + tuple(int(s) for s in (first.imagelength, first.imagewidth)),
                             channels=max(spp, 1) * max(int(first.imagedepth), 1))
        frames = []
        for page in pages:
            if tuple(int(s) for s in page.shape) != shape0:
                break  # thumbnails/reduced resolutions after the main stack
            _check_tiff_streams(data, page, name)
            arr = np.asarray(page.asarray())
            if spp > 1 and arr.ndim == 3:
                axis = -1 if arr.shape[-1] == spp else 0
                arr = to_gray(arr, channel_axis=axis)
            frames.append(arr.astype(np.float32, copy=False))
    arr = frames[0] if len(frames) == 1 else np.stack(frames)
    return Scan(pixels=arr)


# ------------------------------------------------------------------ DICOM

def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, str):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


_DICOM_INSTALL_HINT = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm for 12-bit JPEG Extended files libjpeg rejects)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}
_DEFLATED = "1.2.840.10008.1.2.1.99"


def _inflate_deflated_dicom(data: bytes, name: str, limits: Limits) -> bytes:
    """Rewrite a Deflated Explicit VR Little Endian file as plain Explicit VR LE, inflating with a bound.

    pydicom would inflate the whole dataset at once, whatever its size.
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    fp = io.BytesIO(data)
    preamble = read_preamble(fp, True)
    meta = _read_file_meta_info(fp)
    if str(meta.get("TransferSyntaxUID", "")) != _DEFLATED:
        return data
    compressed = data[fp.tell():]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = DicomBytesIO()
    out.write((preamble or b"\x00" * 128) + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=False)
    head = out.getvalue()
    # The pixel data may hold at most max_decoded_bytes / 4 samples (float32 budget) of BitsAllocated each:
    # read the image attributes from the first MiB of the stream to bound the rest.
    limit = limits.max_decoded_bytes
    try:
        import zlib

        import pydicom

        prefix = zlib.decompressobj(-zlib.MAX_WBITS).decompress(compressed, 1 << 20)
        ds = pydicom.dcmread(io.BytesIO(head + prefix), stop_before_pixels=True, force=True)
        bits = int(getattr(ds, "BitsAllocated", 0) or 0)
        if bits:
            limit = (1 << 20) + limits.max_decoded_bytes // 4 * max(bits, 8) // 8
    except Exception:  # noqa: BLE001 - unreadable prefix: keep the general budget
        pass
    body = bounded_decompress(compressed, "deflate", limit, f"'{name}' (deflated DICOM)")
    return head + body


def _load_dicom(data: bytes, name: str, limits: Limits) -> Scan:
    import pydicom
    from pydicom.errors import InvalidDicomError

    has_preamble = data[128:132] == b"DICM"
    if has_preamble:
        data = _inflate_deflated_dicom(data, name, limits)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except InvalidDicomError as exc:
        raise ScanError(f"'{name}' is not a valid DICOM file: {exc}") from exc
    if not has_preamble and not any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "PixelData")):
        # forced parsing of bytes without the DICM marker found nothing DICOM-like: say so plainly
        raise ScanError(f"'{name}' is not a DICOM file: it has no 'DICM' marker and no DICOM image attributes "
                        "(SOP class, modality, rows). Upload a DICOM image, a zip of a DICOM series, NIfTI, NRRD, "
                        "PNG or TIFF.")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        modality = getattr(ds, "Modality", "unknown")
        sop = getattr(getattr(ds, "SOPClassUID", None), "name", "unknown")
        raise ScanError(
            f"'{name}' is a DICOM {modality} object ({sop}) with no image pixel data. "
            "Expected an image object (CT, MR, CR, DX, US, SC, ...)."
        )
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if rows < 1 or cols < 1 or frames < 1 or samples < 1:
        raise ScanError(f"'{name}' declares an empty image: Rows={rows}, Columns={cols}, NumberOfFrames={frames}, "
                        f"SamplesPerPixel={samples}.")
    tsuid = str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else ""
    # native pixel data longer than NumberOfFrames declares is decoded as extra frames (a wrong
    # NumberOfFrames is common): count those frames against the budget too
    pixel_bytes = ds.get("PixelData")
    ts_uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if isinstance(pixel_bytes, bytes) and not getattr(ts_uid, "is_encapsulated", False):
        bits = int(getattr(ds, "BitsAllocated", 8) or 8)
        frame_bits = rows * cols * samples * bits
        frames = max(frames, (len(pixel_bytes) * 8) // max(frame_bits, 1))
    limits.check_decoded(name, (frames, rows, cols), channels=samples)
    try:
        arr = ds.pixel_array
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # noqa: BLE001 - incl. PanicException from the Rust RLE decoder
        ts_name = getattr(ds.file_meta.TransferSyntaxUID, "name", tsuid) if tsuid else "unknown"
        hint = _DICOM_INSTALL_HINT.get(tsuid)
        text = str(exc)
        if type(exc).__name__ == "PanicException":
            extra = " The compressed pixel data is corrupt (the decoder failed on it)."
        elif "less than expected" in text or "truncat" in text.lower() or "shorter" in text.lower():
            extra = " The pixel data is shorter than the header declares: the file looks truncated."
        elif hint:
            extra = f" If the file is intact, a decoder may be missing. Install: pip install {hint}."
        else:
            extra = ""
        raise ScanError(
            f"'{name}': cannot decode DICOM pixel data with transfer syntax {ts_name} ({tsuid}).{extra} "
            f"Reason: {type(exc).__name__}: {exc}"
        ) from exc
    arr = np.asarray(arr)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if samples == 3 and photometric.startswith("YBR"):
        from pydicom.pixels import convert_color_space

        arr = convert_color_space(arr, photometric, "RGB")
    if samples > 1:
        arr = to_gray(arr)
    arr = arr.astype(np.float32)
    slope = _first(getattr(ds, "RescaleSlope", None))
    intercept = _first(getattr(ds, "RescaleIntercept", None))
    if slope is not None or intercept is not None:
        arr = arr * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
    if photometric == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr
    center = _first(getattr(ds, "WindowCenter", None))
    width = _first(getattr(ds, "WindowWidth", None))
    default_window = (center, width) if center is not None and width and width > 0 else None
    ps = getattr(ds, "PixelSpacing", None)
    spacing: tuple[float, ...] | None = None
    if ps is not None and len(ps) >= 2:
        spacing = (float(ps[0]), float(ps[1]))
        if arr.ndim == 3:  # from the decoded shape, not NumberOfFrames (which may be wrong)
            thick = _first(getattr(ds, "SpacingBetweenSlices", None)) or _first(getattr(ds, "SliceThickness", None))
            spacing = (float(thick or 1.0),) + spacing
    metadata = {}
    for tag in _SAFE_DICOM_TAGS:
        if tag in ds:
            val = ds.data_element(tag).value
            if isinstance(val, (pydicom.multival.MultiValue, list, tuple)):
                val = [v if isinstance(v, (int, float)) else str(v) for v in val]
            elif not isinstance(val, (int, float)):
                val = str(val)
            metadata[tag] = val
    metadata["TransferSyntaxUID"] = tsuid
    return Scan(
        pixels=arr,
        spacing=spacing,
        modality=str(getattr(ds, "Modality", "OT")),
        default_window=default_window,
        metadata=metadata,
    )


# ------------------------------------------------------------------ NIfTI

_NIFTI_HEADER_BYTES = {348: "nifti1", 540: "nifti2"}


def _nifti_header(head: bytes, name: str):
    import nibabel as nib

    for order in ("<", ">"):
        size = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0]) if len(head) >= 4 else 0
        if size in _NIFTI_HEADER_BYTES:
            n = size
            break
    else:
        raise ScanError(f"'{name}' is not a valid NIfTI file: its header size field is not 348 (NIfTI-1) or 540 "
                        "(NIfTI-2).")
    if len(head) < n:
        raise ScanError(f"'{name}' is truncated: {len(head)} bytes, shorter than a NIfTI header ({n} bytes).")
    cls = nib.Nifti1Header if n == 348 else nib.Nifti2Header
    try:
        return cls.from_fileobj(io.BytesIO(head[:n] + b"\x00" * 4), check=True), n
    except Exception as exc:  # noqa: BLE001
        raise ScanError(f"'{name}' is not a valid NIfTI file: {exc}") from exc


def _load_nifti(data: bytes, name: str, gz: bool, limits: Limits) -> Scan:
    if gz:
        try:
            head = _gunzip_prefix(data, 544)
        except ValueError as exc:
            raise ScanError(f"'{name}' is not a readable gzip-compressed NIfTI file: {exc}") from exc
    else:
        head = data[:544]
    header, hsize = _nifti_header(head, name)
    shape = tuple(int(s) for s in header.get_data_shape())
    if not shape or 0 in shape:
        raise ScanError(f"'{name}' declares an empty NIfTI image of shape {shape}.")
    dtype = header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise ScanError(f"'{name}' has NIfTI data type {dtype}: expected an integer or float scalar image.")
    vol_shape = shape[:3]
    limits.check_decoded(name, vol_shape)
    offset = int(header.get_data_offset())
    if offset < hsize:
        offset = hsize
    need = int(np.prod(vol_shape, dtype=np.int64)) * dtype.itemsize  # first volume of a 4-D series only
    if gz:
        try:
            raw = _gunzip_prefix(data, offset + need)  # the first volume only: never inflates further
        except ValueError as exc:
            raise ScanError(f"'{name}' is not a readable gzip-compressed NIfTI file: {exc}") from exc
    else:
        raw = data[:offset + need]
    if len(raw) < offset + need:
        raise ScanError(f"'{name}' is truncated or corrupt: its header declares shape {shape} ({dtype}), "
                        f"{need:,} bytes of voxels from offset {offset}, but only {max(len(raw) - offset, 0):,} "
                        "are there.")
    arr = np.frombuffer(raw, dtype=dtype, count=need // dtype.itemsize, offset=offset)
    arr = arr.reshape(vol_shape, order="F").astype(np.float32)
    slope, inter = header.get_slope_inter()
    if slope is not None and np.isfinite(slope) and slope != 0:
        arr = arr * np.float32(slope)
    if inter is not None and np.isfinite(inter):
        arr = arr + np.float32(inter)
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    # NIfTI is x,y,z; we show axial slices as rows x cols: D,H,W = z, y, x
    if arr.ndim == 3:
        pixels = np.transpose(arr, (2, 1, 0))
        spacing = (zooms[2], zooms[1], zooms[0])
    elif arr.ndim == 2:
        pixels = arr.T
        spacing = (zooms[1], zooms[0])
    else:
        raise ScanError(f"'{name}' has {arr.ndim} dimension(s); expected a 2-D or 3-D NIfTI image.")
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    return Scan(pixels=pixels, spacing=spacing, modality="OT", affine=affine,
                metadata={"nifti_shape": list(shape), "nifti_zooms": list(zooms)})


def _gunzip_prefix(data: bytes, n: int) -> bytes:
    """The first ``n`` decompressed bytes of a gzip stream (less if it is shorter); reads no further."""
    import zlib

    out = bytearray()
    rest = data
    while len(out) < n and rest[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += d.decompress(rest, n - len(out))
        except zlib.error as exc:
            raise ValueError(f"corrupt gzip stream: {exc}") from exc
        if not d.eof:
            break
        rest = d.unused_data
    return bytes(out[:n])


# ------------------------------------------------------------------ NRRD

_NRRD_DETACHED_KEYS = ("data file", "datafile")
_NRRD_ENCODINGS = {"raw": None, "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2",
                   "ascii": "text", "text": "text", "txt": "text"}


def _load_nrrd(data: bytes, name: str, limits: Limits) -> Scan:
    import nrrd
    from nrrd.reader import _determine_datatype

    end = data.find(b"\n\n")
    if end < 0:
        end = data.find(b"\r\n\r\n")
        sep = 4
    else:
        sep = 2
    if end < 0:
        raise ScanError(f"'{name}' is an NRRD header without data (no blank line after the header). "
                        "Uploads must be self-contained NRRD files with attached data.")
    header_bytes = data[:end + sep]
    for line in header_bytes.decode("latin-1").splitlines():  # before any parsing: LIST forms break parsers
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() in _NRRD_DETACHED_KEYS:
            raise ScanError(
                f"'{name}' is a detached-header NRRD: its '{key.strip()}' field points to other file(s) "
                f"({value.strip()[:80]!r}). Uploads must be self-contained: save the volume as a single .nrrd "
                "file with attached data (e.g. in 3D Slicer: Save, format .nrrd), or as NIfTI.")
    try:
        header = nrrd.read_header(io.BytesIO(header_bytes))
    except Exception as exc:  # noqa: BLE001
        raise ScanError(f"'{name}' has an invalid NRRD header: {exc}") from exc
    encoding = str(header.get("encoding", "")).lower()
    if encoding not in _NRRD_ENCODINGS:
        raise ScanError(f"'{name}' uses NRRD encoding '{encoding}'; accepted: raw, gzip, bzip2, ascii.")
    sizes = [int(s) for s in np.atleast_1d(header.get("sizes", []))]
    if not sizes or min(sizes) < 1:
        raise ScanError(f"'{name}' declares NRRD sizes {sizes}: every size must be at least 1.")
    dtype = _determine_datatype(header)
    limits.check_decoded(name, sizes)
    n_values = int(np.prod(sizes, dtype=np.int64))
    need = n_values * dtype.itemsize
    body = data[end + sep:]
    line_skip = int(header.get("line skip", header.get("lineskip", 0)) or 0)
    byte_skip = int(header.get("byte skip", header.get("byteskip", 0)) or 0)
    for _ in range(max(line_skip, 0)):
        nl = body.find(b"\n")
        body = body[nl + 1:] if nl >= 0 else b""
    codec = _NRRD_ENCODINGS[encoding]
    if codec in ("gzip", "bzip2"):
        body = bounded_decompress(body, codec if codec == "bzip2" else "auto", need + max(byte_skip, 0),
                                  f"'{name}' (NRRD {encoding} data, {need:,} bytes declared)")
    if codec == "text":
        values = np.array(body.split()[:n_values + 1], dtype=np.float64)
        if values.size < n_values:
            raise ScanError(f"'{name}' is truncated: its header declares {n_values:,} values, found {values.size:,}.")
        arr = values[:n_values].astype(np.float32)
    else:
        if byte_skip == -1:
            body = body[len(body) - need:] if len(body) >= need else body
        elif byte_skip > 0:
            body = body[byte_skip:]
        if len(body) < need:
            raise ScanError(f"'{name}' is truncated or corrupt: its header declares sizes {sizes} of {dtype} "
                            f"({need:,} bytes), but only {len(body):,} bytes of data follow.")
        arr = np.frombuffer(body, dtype=dtype, count=n_values).astype(np.float32)
    arr = arr.reshape(sizes, order="F")
    while arr.ndim > 3:  # e.g. a vector or time axis: first component
        arr = arr[..., 0] if arr.shape[-1] <= arr.shape[0] else arr[0]
    directions = header.get("space directions")
    dirs = None
    if directions is not None:
        dirs = np.asarray(directions, dtype=np.float64)
        if dirs.ndim != 2 or not np.isfinite(dirs).all():
            dirs = None
    zooms = tuple(float(np.linalg.norm(r)) for r in dirs)[-arr.ndim:] if dirs is not None else (1.0,) * arr.ndim
    affine = np.eye(4)
    if dirs is not None and arr.ndim == 3 and dirs.shape == (3, 3):
        affine[:3, :3] = dirs.T
        origin = header.get("space origin")
        if origin is not None:
            affine[:3, 3] = np.asarray(origin, dtype=np.float64)
        # NRRD space is usually LPS; NIfTI is RAS
        if str(header.get("space", "")).startswith("left-posterior"):
            affine = np.diag([-1, -1, 1, 1]) @ affine
    if arr.ndim == 3:
        pixels = np.transpose(arr, (2, 1, 0))
        spacing = (zooms[2], zooms[1], zooms[0])
    elif arr.ndim == 2:
        pixels = arr.T
        spacing = (zooms[1], zooms[0])
    else:
        raise ScanError(f"'{name}' is a {arr.ndim}-D NRRD; expected a 2-D image or a 3-D volume.")
    return Scan(pixels=pixels, spacing=spacing, affine=affine)


# ------------------------------------------------------------------ display windows

def window(pixels: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map ``[center - width/2, center + width/2]`` linearly to uint8 0..255.

    Examples
    --------
    >>> window(np.array([-1000.0, 40.0, 1000.0]), 40, 400).tolist()
    [0, 128, 255]
    """
    if not width or width <= 0:
        raise ValueError(f"Window width must be positive. Got {width}.")
    lo = center - width / 2.0
    out = (np.asarray(pixels, dtype=np.float32) - lo) / float(width)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def auto_window(pixels: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Percentile window ``(center, width)`` for modalities without HU."""
    lo, hi = np.percentile(pixels, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return float((lo + hi) / 2.0), float(hi - lo)


def detect_format(data: bytes, name: str) -> str:
    """What a file's bytes say it is: "png", "jpeg", "bmp", "tiff", "dicom", "nifti", "nrrd", "zip" or "unknown".

    Examples
    --------
    >>> detect_format(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8), "a.png"), detect_format(b"hello", "notes.txt")
    ('png', 'unknown')
    """
    kind = _kind_from_bytes(data, name)
    return kind.replace("_gz", "").replace("_nopreamble", "")
