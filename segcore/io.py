"""Scan I/O: one entry point, :func:`load_scan`, for the formats clinics send.

Images are returned as float32 arrays laid out ``H,W`` (grayscale), ``H,W,3``
(colour) or ``D,H,W`` (volumes). Nothing patient-identifying is kept.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Scan",
    "ScanError",
    "load_scan",
    "window",
    "auto_window",
    "CT_PRESETS",
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
]

ACCEPTED_FORMATS = (
    "PNG, JPEG, BMP, TIFF (8/16-bit, multi-page), DICOM (.dcm or DICM preamble), "
    "NIfTI (.nii, .nii.gz) or NRRD (.nrrd)"
)
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_PIXELS = 256 * 1024 * 1024

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


def _size(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{int(n):,} bytes"


class ScanError(ValueError):
    """A scan could not be read; the message says why and what is accepted."""


@dataclasses.dataclass
class Scan:
    """A loaded, de-identified scan.

    Attributes
    ----------
    pixels : np.ndarray
        float32, ``H,W``, ``H,W,3`` or ``D,H,W`` for volumes.
    spacing : tuple of float or None
        mm per pixel along each axis of ``pixels`` (``(row, col)`` or
        ``(slice, row, col)``) where known.
    modality : str
        "CT", "MR", ... for DICOM; "OT" for plain images; NIfTI/NRRD "MR/CT?"
        are unknown ("OT") unless inferred.
    source_name : str
        File name the scan came from.
    default_window : tuple of float or None
        ``(center, width)`` from the file (DICOM) or None.
    affine : np.ndarray or None
        4x4 NIfTI affine mapping voxel to world, kept to write results back.
    metadata : dict
        Technical tags only.
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
        return self.pixels.ndim == 3 and self.pixels.shape[-1] != 3

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3 and self.pixels.shape[-1] == 3

    @property
    def num_slices(self) -> int:
        return self.pixels.shape[0] if self.is_volume else 1

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
        """``image`` (a slice of this scan) as uint8 grayscale in the file's window, else a percentile window."""
        gray = image if image.ndim == 2 else image.mean(-1)
        return window(gray, *(self.default_window or auto_window(gray)))

    def slice_spacing(self, axis: int = 0) -> tuple[float, float] | None:
        """In-plane spacing (mm) of slices taken along ``axis``."""
        if self.spacing is None:
            return None
        if not self.is_volume:
            return tuple(self.spacing[-2:])  # type: ignore[return-value]
        sp = list(self.spacing)
        del sp[axis]
        return (float(sp[0]), float(sp[1]))


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
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
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
}


def load_scan(
    source: str | os.PathLike | bytes,
    name: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Scan:
    """Load a scan from a path or from bytes (an upload).

    Parameters
    ----------
    source : str, PathLike or bytes
        File path or the file's bytes.
    name : str, optional
        File name (used for the extension when ``source`` is bytes).
    max_bytes : int
        Files larger than this are refused.
    max_pixels : int
        Images declaring more pixels than this are refused (decompression bombs).

    Returns
    -------
    Scan

    Raises
    ------
    ScanError
        Empty, truncated, mismatched, unsupported or oversized input.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "upload"
    else:
        path = Path(source)
        name = name or path.name
        if not path.is_file():
            raise ScanError(f"No such file: '{path}'. Expected a path to a {ACCEPTED_FORMATS} file.")
        size = path.stat().st_size
        if size > max_bytes:
            raise ScanError(f"'{name}' is {_size(size)}, over the {_size(max_bytes)} limit.")
        data = path.read_bytes()
    if len(data) == 0:
        raise ScanError(f"'{name}' is empty (0 bytes). Expected a {ACCEPTED_FORMATS} file.")
    if len(data) > max_bytes:
        raise ScanError(f"'{name}' is {_size(len(data))}, over the {_size(max_bytes)} limit.")

    kind = _kind_from_bytes(data, name)
    ext = "".join(Path(name).suffixes[-2:]).lower() if name.lower().endswith(".nii.gz") else Path(name).suffix.lower()
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

    try:
        if kind in ("png", "jpeg", "bmp", "tiff"):
            scan = _load_raster(data, name, kind, max_pixels)
        elif kind in ("dicom", "dicom_nopreamble"):
            scan = _load_dicom(data, name, max_pixels)
        elif kind in ("nifti", "nifti_gz"):
            scan = _load_nifti(data, name, gz=kind == "nifti_gz", max_pixels=max_pixels)
        elif kind == "nrrd":
            scan = _load_nrrd(data, name, max_pixels)
        else:  # pragma: no cover - guarded above
            raise ScanError(f"Unsupported format for '{name}'.")
    except ScanError:
        raise
    except MemoryError as exc:
        raise ScanError(f"'{name}' is too large to decode in memory.") from exc
    except Exception as exc:  # noqa: BLE001 - turn library errors into a clear message
        raise ScanError(
            f"'{name}' looks like {kind.replace('_gz', '').upper()} but could not be decoded "
            f"(it may be truncated or corrupt): {type(exc).__name__}: {exc}"
        ) from exc
    scan.source_name = name
    scan.format = kind.replace("_gz", "").replace("_nopreamble", "")
    if not np.isfinite(scan.pixels).all():
        scan.pixels = np.nan_to_num(scan.pixels, nan=0.0, posinf=0.0, neginf=0.0)
    return scan


def _check_pixels(name: str, shape: tuple[int, ...], max_pixels: int) -> None:
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if n > max_pixels:
        dims = "x".join(str(int(s)) for s in shape)
        raise ScanError(
            f"'{name}' declares {dims} = {n:,} pixels, over the limit of {max_pixels:,} "
            "(possible decompression bomb). Downsample the image or raise max_pixels."
        )


def _load_raster(data: bytes, name: str, kind: str, max_pixels: int) -> Scan:
    from PIL import Image, ImageSequence

    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit below, with a clear message
    if kind == "tiff":
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            pages = tif.pages
            if len(pages) == 0:
                raise ScanError(f"'{name}' is a TIFF with no pages.")
            shape0 = pages[0].shape
            _check_pixels(name, (len(pages),) + tuple(shape0), max_pixels)
            arr = tif.asarray(key=range(len(pages))) if len(pages) > 1 else pages[0].asarray()
        arr = np.asarray(arr)
        if arr.ndim == 3 and arr.shape[-1] == 4:
            arr = _flatten_rgba(arr)
        elif arr.ndim == 4 and arr.shape[-1] in (3, 4):
            arr = arr[..., :3].astype(np.float32).mean(axis=-1)
        return Scan(pixels=arr.astype(np.float32))

    with Image.open(io.BytesIO(data)) as img:
        _check_pixels(name, (img.height, img.width), max_pixels)
        frames = []
        for frame in ImageSequence.Iterator(img):
            frames.append(_pil_to_array(frame))
            if len(frames) > 1 and frames[-1].shape != frames[0].shape:
                frames.pop()
                break
    arr = frames[0] if len(frames) == 1 else np.stack(frames)
    return Scan(pixels=arr.astype(np.float32))


def _flatten_rgba(arr: np.ndarray) -> np.ndarray:
    rgb = arr[..., :3].astype(np.float32)
    maxv = 65535.0 if arr.dtype == np.uint16 else 255.0
    alpha = arr[..., 3:4].astype(np.float32) / maxv
    # composite over black, the usual background for scans
    return rgb * alpha


def _pil_to_array(img) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "1"):
        arr = np.asarray(img)
        if mode == "1":
            arr = arr.astype(np.uint8) * 255
        return arr.astype(np.float32)
    if mode == "LA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        rgb = _flatten_rgba(np.asarray(img))
        return _maybe_gray(rgb)
    if mode != "RGB":
        img = img.convert("RGB")
    return _maybe_gray(np.asarray(img).astype(np.float32))


def _maybe_gray(rgb: np.ndarray) -> np.ndarray:
    """Colour images whose channels are equal are grayscale scans saved as RGB."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return rgb[..., 0].copy()
    return rgb


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


def _load_dicom(data: bytes, name: str, max_pixels: int) -> Scan:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not data[128:132] == b"DICM")
    except InvalidDicomError as exc:
        raise ScanError(f"'{name}' is not a valid DICOM file: {exc}") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        modality = getattr(ds, "Modality", "unknown")
        sop = getattr(getattr(ds, "SOPClassUID", None), "name", "unknown")
        raise ScanError(
            f"'{name}' is a DICOM {modality} object ({sop}) with no image pixel data. "
            "Expected an image object (CT, MR, CR, DX, US, SC, ...)."
        )
    rows, cols = int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    _check_pixels(name, (frames, rows, cols), max_pixels)
    tsuid = str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else ""
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        ts_name = getattr(ds.file_meta.TransferSyntaxUID, "name", tsuid) if tsuid else "unknown"
        hint = _DICOM_INSTALL_HINT.get(tsuid)
        extra = f" Install: pip install {hint}." if hint else ""
        if "less than expected" in str(exc) or "truncat" in str(exc).lower():
            extra = " The pixel data is shorter than the header declares: the file looks truncated."
        raise ScanError(
            f"'{name}': cannot decode DICOM pixel data with transfer syntax {ts_name} ({tsuid}).{extra} "
            f"Reason: {type(exc).__name__}: {exc}"
        ) from exc
    arr = np.asarray(arr)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    if samples == 3 and photometric.startswith("YBR"):
        from pydicom.pixels import convert_color_space

        arr = convert_color_space(arr, photometric, "RGB")
    arr = arr.astype(np.float32)
    slope = _first(getattr(ds, "RescaleSlope", None))
    intercept = _first(getattr(ds, "RescaleIntercept", None))
    if slope is not None or intercept is not None:
        arr = arr * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
    if photometric == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr
    if samples == 3:
        arr = _maybe_gray(arr)
    center = _first(getattr(ds, "WindowCenter", None))
    width = _first(getattr(ds, "WindowWidth", None))
    default_window = (center, width) if center is not None and width and width > 0 else None
    ps = getattr(ds, "PixelSpacing", None)
    spacing: tuple[float, ...] | None = None
    if ps is not None and len(ps) >= 2:
        spacing = (float(ps[0]), float(ps[1]))
        if frames > 1 and arr.ndim == 3 and samples == 1:
            thick = _first(getattr(ds, "SpacingBetweenSlices", None)) or _first(getattr(ds, "SliceThickness", None)) or 1.0
            spacing = (float(thick),) + spacing
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


def _load_nifti(data: bytes, name: str, gz: bool, max_pixels: int) -> Scan:
    import nibabel as nib

    raw = data
    if gz:
        try:
            # bounded decompression: never inflate past the pixel limit (+ header)
            d = gzip.GzipFile(fileobj=io.BytesIO(data))
            raw = d.read(max_pixels * 8 + 1024)
        except (OSError, EOFError) as exc:
            raise ScanError(f"'{name}' is not a readable gzip-compressed NIfTI file: {exc}") from exc
    if len(raw) < 348:
        raise ScanError(f"'{name}' is truncated: {len(raw)} bytes, shorter than a NIfTI header (348 bytes).")
    try:
        img = nib.Nifti1Image.from_bytes(raw)
    except Exception:  # noqa: BLE001
        try:
            img = nib.Nifti2Image.from_bytes(raw)
        except Exception as exc:  # noqa: BLE001
            raise ScanError(f"'{name}' is not a valid NIfTI file: {exc}") from exc
    shape = img.shape
    _check_pixels(name, shape, max_pixels)
    try:
        arr = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001
        raise ScanError(f"'{name}' is truncated or corrupt: its header declares shape {shape}: {exc}") from exc
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    while arr.ndim > 3:  # 4-D (time series): first volume
        arr = arr[..., 0]
    # NIfTI is x,y,z; we show axial slices as rows x cols: D,H,W = z, y, x
    if arr.ndim == 3:
        pixels = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))
        spacing = (zooms[2], zooms[1], zooms[0])
    elif arr.ndim == 2:
        pixels = np.ascontiguousarray(arr.T)
        spacing = (zooms[1], zooms[0])
    else:
        raise ScanError(f"'{name}' has {arr.ndim} dimensions; expected a 2-D or 3-D NIfTI image.")
    return Scan(pixels=pixels, spacing=spacing, modality="OT", affine=np.asarray(img.affine, dtype=np.float64),
                metadata={"nifti_shape": list(shape), "nifti_zooms": list(zooms)})


def _load_nrrd(data: bytes, name: str, max_pixels: int) -> Scan:
    import tempfile

    import nrrd

    with tempfile.NamedTemporaryFile(suffix=".nrrd") as tmp:
        tmp.write(data)
        tmp.flush()
        header = nrrd.read_header(tmp.name)
        sizes = tuple(int(s) for s in header.get("sizes", ()))
        _check_pixels(name, sizes, max_pixels)
        arr, header = nrrd.read(tmp.name)
    arr = np.asarray(arr, dtype=np.float32)
    directions = header.get("space directions")
    if directions is not None:
        dirs = np.asarray(directions, dtype=np.float64)
        zooms = tuple(float(np.linalg.norm(r)) for r in dirs)
    else:
        zooms = (1.0,) * arr.ndim
    affine = np.eye(4)
    if directions is not None and arr.ndim == 3:
        affine[:3, :3] = np.asarray(directions, dtype=np.float64).T
        origin = header.get("space origin")
        if origin is not None:
            affine[:3, 3] = np.asarray(origin, dtype=np.float64)
        # NRRD space is usually LPS; NIfTI is RAS
        if str(header.get("space", "")).startswith("left-posterior"):
            affine = np.diag([-1, -1, 1, 1]) @ affine
    if arr.ndim == 3:
        pixels = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))
        spacing = (zooms[2], zooms[1], zooms[0])
    else:
        pixels = np.ascontiguousarray(arr.T)
        spacing = (zooms[1], zooms[0])
    return Scan(pixels=pixels, spacing=spacing, affine=affine)


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
