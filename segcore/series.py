"""DICOM series: many files (or one zip of them, or one enhanced multi-frame file) become one :class:`Scan` volume.

Entry points: :func:`load_series` (paths, a folder, or ``(name, bytes)`` pairs) and :func:`load_zip` (the bytes of
a ``.zip``; :func:`segcore.io.load_scan` dispatches ``.zip`` uploads here).

What happens
------------
1. Every file is read **header first** (no pixels) to find its series, position and orientation; a file that is
   not DICOM, not readable, or not an image is skipped and named in ``Scan.metadata["skipped"]``.
2. Files are grouped by ``SeriesInstanceUID``. Several series are never mixed: :class:`SeriesChoiceError` lists them
   (description, modality, number of images) so that a caller can offer a pick list and call again with
   ``series_uid=``.
3. Within the series, images of the most common size and orientation are kept (others, e.g. a localizer, are
   skipped with a note), duplicates (same SOPInstanceUID) are dropped, and slices are sorted by
   ``ImagePositionPatient`` projected on the slice normal (``InstanceNumber`` when positions are missing).
   Several images at one position (echoes, phases) are refused: the series is not one volume.
4. The whole series is checked against the byte budget (sum of file sizes, ``Limits.max_bytes``) and the decoded
   budget (``slices x rows x cols`` float32, ``Limits.max_pixels``/``max_decoded_bytes``) **before** any pixels
   are decoded; each file is then decoded by :func:`segcore.io.load_scan` with all its guards. A file whose pixels
   cannot be decoded is skipped and named; the series is refused only when nothing usable remains.

Geometry
--------
``Scan.pixels`` is ``D,H,W``: ``D`` slices in increasing position along the normal ``n = row_dir x col_dir``
(the cross product of the two ``ImageOrientationPatient`` vectors), ``H`` rows, ``W`` columns. ``Scan.spacing``
is ``(slice, row, col)`` in mm; the slice spacing is the median distance between neighbouring slices along ``n``.
Gaps (a step over 1.5 x the median) and non-uniform spacing are reported in ``Scan.metadata["warnings"]``.

``Scan.affine`` follows the NIfTI path of :mod:`segcore.io`: voxel ``(i, j, k)`` = (column, row, slice), i.e.
``pixels[k, j, i]``, maps to RAS millimetres (``RAS = diag(-1, -1, 1) @ LPS``, DICOM being LPS)::

    LPS(i, j, k) = IPP_0 + i * col_spacing * row_dir + j * row_spacing * col_dir + k * step

where ``step`` is the mean displacement between consecutive slices. **Gantry tilt is handled, not refused**:
with a tilted gantry ``step`` is not parallel to ``n`` and the affine is sheared, which maps every voxel to its
true position (the pixels are kept as acquired, not resampled); a warning gives the tilt angle. Slice positions
that do not lie on one line (varying tilt, several stacks) are refused.

De-identification: as for single files, only technical tags are kept. For DICOM SEG export the references to
the source are kept in ``Scan.metadata["dicom_refs"]``: Study/Series/Frame-of-Reference/SOP-Class UIDs, the
per-slice SOP Instance UIDs (and frame numbers of multi-frame files) and positions. UIDs identify images, not
patients: no name, ID, date or accession number is kept.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat as stat_mod
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from .io import Scan, ScanError, load_scan
from .limits import LimitExceeded, Limits

__all__ = ["MAX_ZIP_MEMBERS", "SeriesChoiceError", "SeriesInfo", "load_series", "load_zip", "read_zip_members",
           "series_zip"]

MAX_ZIP_MEMBERS = 20000
_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """One series found in an upload (what a pick list shows)."""

    uid: str
    description: str
    modality: str
    num_images: int
    rows: int
    columns: int

    def label(self) -> str:
        desc = self.description or "(no description)"
        return f"{desc} · {self.modality} · {self.num_images} image(s) · {self.rows}x{self.columns}"


class SeriesChoiceError(ScanError):
    """The upload holds several series; ``series`` lists them (pass one's ``uid`` as ``series_uid=``)."""

    def __init__(self, message: str, series: Sequence[SeriesInfo]):
        super().__init__(message)
        self.series = list(series)


@dataclasses.dataclass
class _Slice:
    """One 2-D image of the series: a single-frame file or one frame of a multi-frame file."""

    file: int
    frame: int | None  # 0-based frame of a multi-frame file
    position: np.ndarray | None  # ImagePositionPatient, LPS mm
    instance: int | None
    rescale: tuple[float, float] | None = None  # (slope, intercept) of an enhanced object's functional groups


@dataclasses.dataclass
class _Header:
    name: str
    data: bytes
    series_uid: str
    study_uid: str
    for_uid: str
    sop_uid: str
    sop_class: str
    modality: str
    description: str
    rows: int
    cols: int
    frames: int
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    thickness: float | None
    slices: list[_Slice]


def _short(name: str, n: int = 120) -> str:
    s = "".join(ch if ch.isprintable() else "?" for ch in str(name))
    return s if len(s) <= n else s[: n - 1] + "…"


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.isfinite(arr).all() else None


def _item(ds: Any, seq: str, attr: str):
    """``ds.seq[0].attr`` or None (functional-group lookups)."""
    s = getattr(ds, seq, None)
    if not s:
        return None
    return getattr(s[0], attr, None)


def _rescale(group: Any) -> tuple[float, float] | None:
    """(slope, intercept) of a functional group's PixelValueTransformationSequence, if any."""
    slope = _item(group, "PixelValueTransformationSequence", "RescaleSlope")
    inter = _item(group, "PixelValueTransformationSequence", "RescaleIntercept")
    if slope is None and inter is None:
        return None
    try:
        return (1.0 if slope is None else float(slope), 0.0 if inter is None else float(inter))
    except (TypeError, ValueError):
        return None


def _read_header(name: str, data: bytes, index: int, limits: Limits) -> _Header:
    """Parse one file's header (no pixels); raises ScanError with the reason."""
    import pydicom

    from .io import _inflate_deflated_dicom, _kind_from_bytes

    kind = _kind_from_bytes(data, name)
    if kind not in ("dicom", "dicom_nopreamble"):
        raise ScanError("not a DICOM file" + (f" (looks like {kind.upper()})" if kind != "unknown" else ""))
    preamble = kind == "dicom"
    try:
        raw = _inflate_deflated_dicom(data, name, limits) if preamble else data
        ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, force=not preamble)
    except LimitExceeded as exc:
        raise ScanError(str(exc)) from exc
    except _PASS_THROUGH:
        raise
    except BaseException as exc:
        raise ScanError(f"unreadable DICOM header: {type(exc).__name__}: {_short(exc, 200)}") from exc
    sop_class = str(getattr(ds, "SOPClassUID", "") or "")
    if sop_class == _SEG_SOP_CLASS:
        raise ScanError("a DICOM SEG object, not an image (import it with segcore.dicomseg.read_seg)")
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows < 1 or cols < 1:
        raise ScanError(f"not an image (DICOM {getattr(ds, 'Modality', '?')} object without Rows/Columns)")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
    shared = shared[0] if shared else None
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)

    orientation = _floats(getattr(ds, "ImageOrientationPatient", None) or [], 6)
    spacing = _floats(getattr(ds, "PixelSpacing", None) or [], 2)
    thickness = getattr(ds, "SpacingBetweenSlices", None) or getattr(ds, "SliceThickness", None)
    if shared is not None:  # enhanced multi-frame: orientation and spacing in the shared functional groups
        if orientation is None:
            orientation = _floats(_item(shared, "PlaneOrientationSequence", "ImageOrientationPatient") or [], 6)
        if spacing is None:
            spacing = _floats(_item(shared, "PixelMeasuresSequence", "PixelSpacing") or [], 2)
        if thickness is None:
            thickness = (_item(shared, "PixelMeasuresSequence", "SpacingBetweenSlices")
                         or _item(shared, "PixelMeasuresSequence", "SliceThickness"))
    instance = getattr(ds, "InstanceNumber", None)
    try:
        instance = int(instance) if instance is not None and str(instance).strip() != "" else None
    except (TypeError, ValueError):
        instance = None
    slices: list[_Slice] = []
    if frames > 1:
        positions: list[np.ndarray | None] = [None] * frames
        # enhanced objects keep the rescale in the functional groups (load_scan applies only the top-level one)
        top_rescale = "RescaleSlope" in ds or "RescaleIntercept" in ds
        shared_rescale = None if shared is None or top_rescale else _rescale(shared)
        rescales: list[tuple[float, float] | None] = [shared_rescale] * frames
        if per_frame is not None and len(per_frame) == frames:
            for f, item in enumerate(per_frame):
                if not top_rescale:
                    rescales[f] = _rescale(item) or shared_rescale
                positions[f] = _floats(_item(item, "PlanePositionSequence", "ImagePositionPatient") or [], 3)
                if orientation is None:
                    orientation = _floats(_item(item, "PlaneOrientationSequence", "ImageOrientationPatient") or [], 6)
                if spacing is None:
                    spacing = _floats(_item(item, "PixelMeasuresSequence", "PixelSpacing") or [], 2)
        for f in range(frames):
            slices.append(_Slice(index, f, positions[f], f, rescales[f]))
    else:
        slices.append(_Slice(index, None, _floats(getattr(ds, "ImagePositionPatient", None) or [], 3), instance))
    try:
        thick = float(thickness) if thickness is not None else None
    except (TypeError, ValueError):
        thick = None
    return _Header(
        name=name, data=data, series_uid=str(getattr(ds, "SeriesInstanceUID", "") or ""),
        study_uid=str(getattr(ds, "StudyInstanceUID", "") or ""),
        for_uid=str(getattr(ds, "FrameOfReferenceUID", "") or ""), sop_uid=str(getattr(ds, "SOPInstanceUID", "") or ""),
        sop_class=sop_class, modality=str(getattr(ds, "Modality", "OT") or "OT"),
        description=str(getattr(ds, "SeriesDescription", "") or ""), rows=rows, cols=cols, frames=frames,
        orientation=orientation, pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        thickness=thick if thick is not None and np.isfinite(thick) and thick > 0 else None, slices=slices)


# ------------------------------------------------------------------ inputs

def _expand(items: Iterable[Any], limits: Limits, skipped: list[dict]) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` for every item (paths read, folders walked), within the series byte budget."""
    out: list[tuple[str, bytes]] = []
    total = 0
    for item in items:
        if isinstance(item, tuple) and len(item) == 2:
            name, data = str(item[0]), item[1]
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ScanError(f"Series item {_short(name)!r} holds {type(data).__name__}, expected bytes.")
            pairs = [(name, bytes(data))]
        elif isinstance(item, (str, os.PathLike)):
            path = Path(item)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            elif path.is_file():
                files = [path]
            else:
                raise ScanError(f"No such file or folder: '{path}'.")
            pairs = []
            pending = total
            for p in files:
                size = p.stat().st_size
                pending += size
                if pending > limits.max_bytes:
                    raise ScanError(f"The series is over the {limits.max_bytes:,}-byte upload limit "
                                    f"(SEGCORE_MAX_UPLOAD_BYTES) at file '{p.name}'.")
                pairs.append((p.name, p.read_bytes()))
        else:
            raise ScanError(f"Series items must be paths or (name, bytes) pairs. Got {type(item).__name__}.")
        for name, data in pairs:
            total += len(data)
            if total > limits.max_bytes:
                raise ScanError(f"The series is over the {limits.max_bytes:,}-byte upload limit "
                                f"(SEGCORE_MAX_UPLOAD_BYTES) at file {_short(name)!r}.")
            if len(data) == 0:
                skipped.append({"name": _short(name), "reason": "empty file (0 bytes)"})
                continue
            out.append((name, data))
    return out


def _unsafe_name(name: str) -> bool:
    if "\x00" in name:
        return True
    for p in (PurePosixPath(name), PureWindowsPath(name)):
        if p.is_absolute() or p.drive or ".." in p.parts:
            return True
    return name.startswith(("/", "\\"))


def read_zip_members(data: bytes, name: str = "upload.zip", limits: Limits | None = None
                     ) -> tuple[list[tuple[str, bytes]], list[dict]]:
    """The files of a zip as ``(name, bytes)``, read with bounds; and what was ignored, with reasons.

    Nothing is extracted to disk. Directories, unsafe names (absolute paths, ``..``), links, encrypted members,
    macOS resource forks and ``DICOMDIR`` are ignored with a note. The total uncompressed size is bounded by
    ``limits.max_bytes`` (declared sizes are checked first, actual bytes while reading: a member inflating past
    its declared size stops there), the number of members by :data:`MAX_ZIP_MEMBERS`. A zip inside the zip is
    refused.

    Raises
    ------
    ScanError
        Not a zip, corrupt, too many members, over the budget (zip bomb), or a nested zip.
    """
    limits = limits or Limits.from_env()
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise ScanError(f"'{_short(name)}' is not a readable zip archive: {exc}") from exc
    if len(infos) > MAX_ZIP_MEMBERS:
        raise ScanError(f"'{_short(name)}' holds {len(infos):,} members, over the limit of {MAX_ZIP_MEMBERS:,}.")
    declared = sum(int(i.file_size) for i in infos if not i.is_dir())
    if declared > limits.max_bytes:
        raise ScanError(f"'{_short(name)}' would unpack to {declared:,} bytes, over the {limits.max_bytes:,}-byte "
                        "limit (SEGCORE_MAX_UPLOAD_BYTES): refused as a possible zip bomb.")
    members: list[tuple[str, bytes]] = []
    ignored: list[dict] = []
    total = 0
    for info in infos:
        mname = info.filename
        mode = (info.external_attr >> 16) & 0o170000
        base = PurePosixPath(mname.replace("\\", "/")).name
        reason = None
        if info.is_dir():
            reason = "folder"
        elif _unsafe_name(mname):
            reason = "unsafe path (absolute or containing '..'): ignored"
        elif mode == stat_mod.S_IFLNK:
            reason = "symbolic link: ignored"
        elif info.flag_bits & 0x1:
            reason = "encrypted member: ignored"
        elif mname.startswith("__MACOSX/") or base.startswith("._"):
            reason = "macOS metadata: ignored"
        elif base.upper() == "DICOMDIR":
            reason = "DICOMDIR index: ignored (the image files are read directly)"
        if reason:
            ignored.append({"name": _short(mname), "reason": reason})
            continue
        if base.lower().endswith(".zip"):
            raise ScanError(f"'{_short(name)}' contains another zip archive ({_short(mname)!r}): nested archives "
                            "are not accepted. Unpack it and upload the inner archive or its files.")
        budget = limits.max_bytes - total
        try:
            with zf.open(info) as f:
                chunks, got = [], 0
                while True:
                    chunk = f.read(min(1 << 20, budget + 1 - got))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    got += len(chunk)
                    if got > budget or got > info.file_size:
                        raise ScanError(f"'{_short(name)}': member {_short(mname)!r} inflates past its declared "
                                        "size or the archive's byte budget: refused as a possible zip bomb.")
        except ScanError:
            raise
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, OSError, EOFError) as exc:
            ignored.append({"name": _short(mname), "reason": f"unreadable zip member: {_short(exc, 200)}"})
            continue
        body = b"".join(chunks)
        total += len(body)
        if body[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            raise ScanError(f"'{_short(name)}' contains another zip archive ({_short(mname)!r}): nested archives "
                            "are not accepted. Unpack it and upload the inner archive or its files.")
        members.append((mname, body))
    return members, ignored


def series_zip(items: Sequence[tuple[str, bytes]]) -> bytes:
    """The files of a series as one zip (stored, not recompressed): a single blob that :func:`load_scan` reads back
    as the same series, e.g. to keep a multi-file upload as one review case."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i, (name, data) in enumerate(items):
            base = PurePosixPath(str(name).replace("\\", "/")).name or f"file{i:05d}"
            z.writestr(f"{i:05d}_{base}", bytes(data))
    return buf.getvalue()


def load_zip(data: bytes, name: str = "upload.zip", *, series_uid: str | None = None,
             limits: Limits | None = None) -> Scan:
    """One DICOM series from the bytes of a zip (see :func:`read_zip_members` for what is accepted).

    Raises
    ------
    SeriesChoiceError
        The zip holds several series (pick one with ``series_uid=``).
    ScanError
        Everything else (see :func:`load_series`).
    """
    limits = limits or Limits.from_env()
    members, ignored = read_zip_members(data, name, limits)
    scan = load_series(members, series_uid=series_uid, limits=limits, name=name, _skipped=ignored)
    scan.source_name = name
    return scan


# ------------------------------------------------------------------ the series

def _choose(groups: dict[str, list[_Header]], series_uid: str | None, name: str) -> list[_Header]:
    infos = [SeriesInfo(uid=u, description=hs[0].description, modality=hs[0].modality,
                        num_images=sum(len(h.slices) for h in hs), rows=hs[0].rows, columns=hs[0].cols)
             for u, hs in groups.items()]
    if series_uid is not None:
        if series_uid not in groups:
            raise SeriesChoiceError(f"'{_short(name)}' has no series with SeriesInstanceUID {series_uid!r}. Series "
                                    "found: " + "; ".join(f"{i.uid} ({i.label()})" for i in infos) + ".", infos)
        return groups[series_uid]
    if len(groups) > 1:
        raise SeriesChoiceError(
            f"'{_short(name)}' holds {len(groups)} DICOM series; they are never mixed. Choose one: "
            + "; ".join(f"{i.label()} [{i.uid}]" for i in infos) + ".", infos)
    return next(iter(groups.values()))


def _keep_main_stack(headers: list[_Header], skipped: list[dict]) -> list[_Header]:
    """Keep the most common (rows, cols, orientation); drop duplicate SOPInstanceUIDs."""
    def key(h: _Header):
        o = None if h.orientation is None else tuple(np.round(h.orientation, 3))
        return (h.rows, h.cols, o)

    counts: dict[Any, int] = {}
    for h in headers:
        counts[key(h)] = counts.get(key(h), 0) + len(h.slices)
    main = max(counts, key=lambda k: counts[k])
    kept, seen = [], set()
    for h in headers:
        if key(h) != main:
            skipped.append({"name": _short(h.name), "reason": f"{h.rows}x{h.cols} image with a different size or "
                            "orientation from the rest of the series (e.g. a localizer): left out"})
        elif h.sop_uid and h.sop_uid in seen:
            skipped.append({"name": _short(h.name), "reason": "duplicate of another file (same SOPInstanceUID)"})
        else:
            seen.add(h.sop_uid)
            kept.append(h)
    return kept


def _normal(orientation: np.ndarray) -> np.ndarray:
    n = np.cross(orientation[:3], orientation[3:])
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        raise ScanError(f"ImageOrientationPatient {orientation.tolist()} does not define a plane.")
    return n / norm


def _order(headers: list[_Header], warnings: list[str], name: str) -> list[_Slice]:
    slices = [s for h in headers for s in h.slices]
    orientation = headers[0].orientation
    if orientation is not None and all(s.position is not None for s in slices):
        n = _normal(orientation)
        proj = np.array([float(s.position @ n) for s in slices])
        order = np.lexsort((np.array([s.instance if s.instance is not None else 0 for s in slices]), proj))
        slices = [slices[i] for i in order]
        proj = proj[order]
        if len(slices) > 1:
            step = np.diff(proj)
            tol = 1e-3 * max(float(np.median(step)), 1e-3)
            dup = int((step <= tol).sum())
            if dup:
                raise ScanError(f"'{_short(name)}': {dup + 1} or more images of the series share one position along "
                                "the slice normal: the series holds several volumes (e.g. echoes, phases or "
                                "repeats) and cannot be stacked. Export each volume as its own series.")
        return slices
    if all(s.instance is not None for s in slices):
        warnings.append("Slice positions (ImagePositionPatient/ImageOrientationPatient) are missing: slices are "
                        "sorted by InstanceNumber and the slice spacing comes from SpacingBetweenSlices/"
                        "SliceThickness (1 mm if absent); the affine is not known.")
        return sorted(slices, key=lambda s: (s.instance, s.file, s.frame or 0))
    warnings.append("Slice positions and instance numbers are missing: slices are in file-name order and the "
                    "slice spacing comes from SpacingBetweenSlices/SliceThickness (1 mm if absent).")
    names = {s.file: h.name for h in headers for s in h.slices}
    return sorted(slices, key=lambda s: (names[s.file], s.frame or 0))


def _geometry(slices: list[_Slice], head: _Header, warnings: list[str], name: str
              ) -> tuple[tuple[float, ...] | None, np.ndarray | None]:
    """Spacing ``(slice, row, col)`` and the RAS affine of the sorted slices (see the module docstring)."""
    ps = head.pixel_spacing
    row_sp, col_sp = ps if ps is not None else (1.0, 1.0)
    if ps is None:
        warnings.append("PixelSpacing is missing: 1 mm is assumed in-plane; measurements in mm are not reliable.")
    orientation = head.orientation
    positioned = orientation is not None and all(s.position is not None for s in slices)
    if not positioned:
        return ((head.thickness or 1.0, row_sp, col_sp) if len(slices) > 1 else (row_sp, col_sp)), None
    n = _normal(orientation)
    pos = np.stack([s.position for s in slices])
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * col_sp
    lps[:3, 1] = orientation[3:] * row_sp
    lps[:3, 3] = pos[0]
    if len(slices) == 1:
        lps[:3, 2] = n * (head.thickness or 1.0)
        return (row_sp, col_sp), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    proj = pos @ n
    steps = np.diff(proj)
    dz = float(np.median(steps))
    gaps = np.nonzero(steps > 1.5 * dz)[0]
    for g in gaps[:5]:
        missing = round(float(steps[g] / dz)) - 1
        warnings.append(f"Gap in the series: {steps[g]:.2f} mm between slices {g} and {g + 1} (about {missing} "
                        f"slice(s) missing at a {dz:.2f} mm spacing); the volume is stacked without them.")
    if len(gaps) > 5:
        warnings.append(f"... and {len(gaps) - 5} more gaps.")
    if not len(gaps) and float(steps.max() - steps.min()) > max(0.01, 0.01 * dz):
        warnings.append(f"Non-uniform slice spacing: from {steps.min():.3f} to {steps.max():.3f} mm; the median "
                        f"{dz:.3f} mm is used for the spacing and the affine.")
    span = pos[-1] - pos[0]
    # without gaps the mean step maps the first and last slice exactly; with gaps, a step of the median spacing
    # along the same direction (the stacked volume has no regular grid there: see the warning)
    step = span / (len(slices) - 1) if not len(gaps) else span * (dz / float(span @ n))
    # positions must lie on one line (a constant step, possibly tilted)
    unit = span / np.linalg.norm(span)
    along = (pos - pos[0]) @ unit
    off_line = np.linalg.norm((pos - pos[0]) - along[:, None] * unit, axis=1)
    if off_line.max() > max(0.5 * min(row_sp, col_sp), 0.05):
        raise ScanError(f"'{_short(name)}': slice positions do not lie on one line (up to {off_line.max():.2f} mm off; "
                        "varying gantry tilt or several stacks in one series). Resample the series to a regular "
                        "grid (e.g. with dcm2niix) and upload the NIfTI.")
    tilt = float(np.degrees(np.arccos(np.clip(abs(step @ n) / np.linalg.norm(step), -1.0, 1.0))))
    if tilt > 0.1:
        warnings.append(f"Gantry tilt of {tilt:.1f}°: the slices are kept as acquired and the affine is sheared so "
                        "that every voxel maps to its true position; in-plane measurements are exact, 3-D distances "
                        "treat the grid as orthogonal.")
    lps[:3, 2] = step
    return (dz, row_sp, col_sp), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def load_series(items: Iterable[Any], *, series_uid: str | None = None, limits: Limits | None = None,
                name: str | None = None, _skipped: list[dict] | None = None) -> Scan:
    """One volume from the files of a DICOM series.

    Parameters
    ----------
    items : iterable
        Paths (files or folders, walked recursively) and/or ``(name, bytes)`` pairs (uploads).
    series_uid : str, optional
        The SeriesInstanceUID to load when the files hold several series.
    limits : Limits, optional
        Budgets for the whole series (see the module docstring); default :meth:`Limits.from_env`.
    name : str, optional
        A name for the series in messages and ``Scan.source_name`` (default: the first file's name).

    Returns
    -------
    Scan
        ``format="dicom"``, ``pixels`` ``D,H,W`` (``H,W`` for a one-image series), ``spacing``, ``affine`` and
        ``metadata`` with technical tags, ``warnings`` (list of str), ``skipped`` (list of ``{"name", "reason"}``)
        and ``dicom_refs`` (see the module docstring). The SeriesDescription (free text, which may name a person)
        is only shown in the pick list of :class:`SeriesChoiceError`, never kept.

    Raises
    ------
    SeriesChoiceError
        Several series and no (or an unknown) ``series_uid``.
    ScanError
        No usable image, over a budget, several volumes in one series, or positions off one line.
    """
    limits = limits or Limits.from_env()
    skipped: list[dict] = list(_skipped or [])
    files = _expand(items, limits, skipped)
    name = name or (files[0][0] + (f" (+{len(files) - 1} files)" if len(files) > 1 else "") if files else "series")
    headers: list[_Header] = []
    for fname, data in files:
        try:
            headers.append(_read_header(fname, data, len(headers), limits))
        except ScanError as exc:
            skipped.append({"name": _short(fname), "reason": str(exc)})
    if not headers:
        detail = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped[:8])
        raise ScanError(f"'{_short(name)}' contains no readable DICOM image" + (f" ({detail})" if detail else "")
                        + ". Expected the DICOM files of one series (or a zip of them).")
    groups: dict[str, list[_Header]] = {}
    for h in headers:
        groups.setdefault(h.series_uid, []).append(h)
    chosen = _keep_main_stack(_choose(groups, series_uid, name), skipped)
    for i, h in enumerate(chosen):  # renumber so that slices point into `chosen`
        for s in h.slices:
            s.file = i
    warnings: list[str] = []
    slices = _order(chosen, warnings, name)
    head = chosen[0]
    try:
        limits.check_decoded(name, (len(slices), head.rows, head.cols))
    except LimitExceeded as exc:
        raise ScanError(str(exc)) from exc

    pixels = np.empty((len(slices), head.rows, head.cols), np.float32)
    where: dict[int, list[tuple[int, _Slice]]] = {}
    for k, s in enumerate(slices):
        where.setdefault(s.file, []).append((k, s))
    good = np.zeros(len(slices), bool)
    first: Scan | None = None
    for fidx in sorted(where):
        h = chosen[fidx]
        try:
            one = load_scan(h.data, h.name, limits=limits)
            arr = one.pixels if one.pixels.ndim == 3 else one.pixels[None]
            if arr.shape[1:] != (h.rows, h.cols) or arr.shape[0] < max(f.frame or 0 for _, f in where[fidx]) + 1:
                raise ScanError(f"decoded to shape {arr.shape}, expected {h.frames} frame(s) of {h.rows}x{h.cols}")
        except ScanError as exc:
            skipped.append({"name": _short(h.name), "reason": str(exc)})
            continue
        for k, s in where[fidx]:
            pixels[k] = arr[s.frame or 0]
            if s.rescale is not None and s.rescale != (1.0, 0.0):
                pixels[k] = pixels[k] * np.float32(s.rescale[0]) + np.float32(s.rescale[1])
            good[k] = True
        if first is None:
            first = one
    if first is None or not good.any():
        detail = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped[-5:])
        raise ScanError(f"'{_short(name)}': no image of the series could be decoded ({detail}).")
    if not good.all():
        pixels = pixels[good]
        slices = [s for s, ok in zip(slices, good) if ok]
    spacing, affine = _geometry(slices, head, warnings, name)
    if len(skipped) and any(s["name"] for s in skipped):
        warnings.append(f"{len(skipped)} file(s) skipped: " + "; ".join(f"{s['name']} ({s['reason']})"
                                                                        for s in skipped[:5])
                        + (" ..." if len(skipped) > 5 else ""))
    metadata = {k: v for k, v in first.metadata.items() if k not in ("ImagePositionPatient", "NumberOfFrames")}
    metadata.update({
        "series": True,
        "num_files": len({s.file for s in slices}),
        "warnings": warnings,
        "skipped": skipped,
        "dicom_refs": {
            "StudyInstanceUID": head.study_uid,
            "SeriesInstanceUID": head.series_uid,
            "FrameOfReferenceUID": head.for_uid,
            "SOPClassUID": head.sop_class,
            "Modality": head.modality,
            "Rows": head.rows,
            "Columns": head.cols,
            "PixelSpacing": list(head.pixel_spacing) if head.pixel_spacing else None,
            "ImageOrientationPatient": None if head.orientation is None else head.orientation.tolist(),
            "SliceThickness": head.thickness,
            "sop_instance_uids": [chosen[s.file].sop_uid for s in slices],
            "frame_numbers": [None if s.frame is None else s.frame + 1 for s in slices],
            "positions": [None if s.position is None else s.position.tolist() for s in slices],
        },
    })
    scan = Scan(pixels=pixels if len(pixels) > 1 else pixels[0], spacing=spacing, modality=head.modality,
                source_name=name, default_window=first.default_window, affine=affine, metadata=metadata,
                format="dicom")
    return scan
