"""Resource limits for untrusted uploads: file size, pixel count, decoded bytes, bounded decompression.

Every decoder in :mod:`segcore.io` checks the *decoded* size of what it is about to
produce (all frames, all channels, as float32) against a byte budget **before**
allocating it, and every decompression stream (gzip, zlib, raw deflate, bzip2,
lzma) is read with a bound so that it stops at ``limit + 1`` bytes. A small file
that inflates to gigabytes (a "decompression bomb") is refused with a
:class:`~segcore.io.ScanError` after allocating at most the budget.

Limits come from :class:`Limits`; the defaults can be changed with environment
variables:

=============================  ===============================  ==========
variable                       meaning                          default
=============================  ===============================  ==========
``SEGCORE_MAX_UPLOAD_BYTES``   size of the uploaded file        512 MiB
``SEGCORE_MAX_PIXELS``         pixels (all frames)              256 Mi
``SEGCORE_MAX_DECODED_BYTES``  decoded float32 bytes            1 GiB
=============================  ===============================  ==========
"""

from __future__ import annotations

import bz2
import dataclasses
import lzma
import os
import zlib

__all__ = ["Limits", "LimitExceeded", "bounded_decompress", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS",
           "DEFAULT_MAX_DECODED_BYTES"]

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_PIXELS = 256 * 1024 * 1024
DEFAULT_MAX_DECODED_BYTES = 1024 * 1024 * 1024
OUTPUT_ITEMSIZE = 4  # decoded pixels are float32


class LimitExceeded(ValueError):
    """A decoded or decompressed size is over its limit (a :class:`~segcore.io.ScanError` is raised from it)."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        n = int(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be a positive integer number of bytes/pixels. Got {value!r}.") from exc
    if n <= 0:
        raise ValueError(f"{name} must be a positive integer. Got {n}.")
    return n


def _size(n: float) -> str:
    if n >= 1024**3:
        return f"{n / 1024**3:.2f} GiB"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{int(n):,} bytes"


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one upload may cost.

    Parameters
    ----------
    max_bytes : int
        Size of the file itself.
    max_pixels : int
        Pixels over all frames and slices (not counting colour channels).
    max_decoded_bytes : int
        Bytes of the decoded array: frames x rows x cols x channels x 4 (float32).

    Examples
    --------
    >>> Limits(max_decoded_bytes=100).check_decoded("x.png", (5, 5), channels=1)
    >>> Limits(max_decoded_bytes=99).check_decoded("x.png", (5, 5), channels=1)
    Traceback (most recent call last):
    ...
    segcore.limits.LimitExceeded: 'x.png' would decode to 5x5 x 1 channel(s) x 4 bytes = 100 bytes, over the \
decoded-size budget of 99 bytes (SEGCORE_MAX_DECODED_BYTES). Downsample or crop the image, or raise the budget.
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"Limits.{f.name} must be a positive integer. Got {v!r}.")

    @classmethod
    def from_env(cls, **overrides: int | None) -> "Limits":
        """Defaults, overridden by the environment, overridden by keyword arguments that are not None."""
        base = {"max_bytes": _env_int("SEGCORE_MAX_UPLOAD_BYTES", DEFAULT_MAX_BYTES),
                "max_pixels": _env_int("SEGCORE_MAX_PIXELS", DEFAULT_MAX_PIXELS),
                "max_decoded_bytes": _env_int("SEGCORE_MAX_DECODED_BYTES", DEFAULT_MAX_DECODED_BYTES)}
        base.update({k: int(v) for k, v in overrides.items() if v is not None})
        return cls(**base)

    def check_file_size(self, name: str, size: int) -> None:
        if size > self.max_bytes:
            raise LimitExceeded(f"'{name}' is {_size(size)}, over the {_size(self.max_bytes)} limit "
                                "(SEGCORE_MAX_UPLOAD_BYTES).")

    def check_decoded(self, name: str, shape, channels: int = 1) -> None:
        """Refuse an array of ``shape`` (frames, rows, cols...) x ``channels`` before it is allocated."""
        dims = [int(s) for s in shape]
        if any(d < 0 for d in dims) or channels < 1:
            raise LimitExceeded(f"'{name}' declares an invalid shape {tuple(dims)} with {channels} channel(s).")
        pixels = 1
        for d in dims:
            pixels *= d
        text = "x".join(str(d) for d in dims)
        if pixels > self.max_pixels:
            raise LimitExceeded(
                f"'{name}' declares {text} = {pixels:,} pixels, over the limit of {self.max_pixels:,} "
                "(possible decompression bomb; SEGCORE_MAX_PIXELS). Downsample the image or raise max_pixels.")
        nbytes = pixels * channels * OUTPUT_ITEMSIZE
        if nbytes > self.max_decoded_bytes:
            raise LimitExceeded(
                f"'{name}' would decode to {text} x {channels} channel(s) x {OUTPUT_ITEMSIZE} bytes = "
                f"{_size(nbytes)}, over the decoded-size budget of {_size(self.max_decoded_bytes)} "
                "(SEGCORE_MAX_DECODED_BYTES). Downsample or crop the image, or raise the budget.")


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "zlib": zlib.MAX_WBITS, "deflate": -zlib.MAX_WBITS,
          "auto": 32 + zlib.MAX_WBITS}


def _decompressor(codec: str):
    if codec in _WBITS:
        return zlib.decompressobj(_WBITS[codec])
    if codec == "bzip2":
        return bz2.BZ2Decompressor()
    if codec == "lzma":
        return lzma.LZMADecompressor()
    raise ValueError(f"Unknown codec '{codec}'. Expected gzip, zlib, deflate, auto, bzip2 or lzma.")


_STEP = 8 * 1024 * 1024


def bounded_decompress(data: bytes, codec: str, limit: int, what: str = "data") -> bytes:
    """Decompress ``data`` but never produce more than ``limit`` bytes.

    The stream is inflated in steps of at most 8 MiB, so a bomb costs at most
    ``limit`` bytes of memory before it is refused.

    Parameters
    ----------
    data : bytes
        Compressed bytes.
    codec : {"gzip", "zlib", "deflate", "auto", "bzip2", "lzma"}
        ``deflate`` is raw deflate (no header), ``auto`` accepts gzip or zlib headers.
        Concatenated gzip members are read one after the other.
    limit : int
        Largest acceptable decompressed size in bytes.

    Returns
    -------
    bytes
        The decompressed bytes (shorter than expected if the stream is truncated: callers check).

    Raises
    ------
    LimitExceeded
        The stream inflates to more than ``limit`` bytes.
    ValueError
        The stream is corrupt.

    Examples
    --------
    >>> import zlib
    >>> bounded_decompress(zlib.compress(b"a" * 10), "zlib", 10)
    b'aaaaaaaaaa'
    >>> bounded_decompress(zlib.compress(b"a" * 11), "zlib", 10)
    Traceback (most recent call last):
    ...
    segcore.limits.LimitExceeded: data decompresses to more than 10 bytes (possible decompression bomb).
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0. Got {limit}.")
    chunks: list[bytes] = []
    total = 0
    rest = bytes(data)
    d = _decompressor(codec)
    while True:
        try:
            if codec in _WBITS:
                chunk = d.decompress(rest, min(_STEP, limit + 1 - total))
                rest = d.unconsumed_tail
            else:
                chunk = d.decompress(rest, min(_STEP, limit + 1 - total))
                rest = b""
        except (zlib.error, OSError, EOFError, lzma.LZMAError) as exc:
            raise ValueError(f"{what} is not a valid {codec} stream: {exc}") from exc
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise LimitExceeded(f"{what} decompresses to more than {_size(limit)} (possible decompression bomb).")
        if d.eof:
            # another gzip member may follow (gzip allows concatenation); anything else ends the stream
            if codec in ("gzip", "auto") and d.unused_data[:2] == b"\x1f\x8b":
                rest, d = d.unused_data, _decompressor(codec)
                continue
            break
        needs_input = getattr(d, "needs_input", None)
        if not chunk and (not rest if needs_input is None else needs_input):
            break  # truncated stream: return what there is
    return b"".join(chunks)
