"""Image decoding and encoding: bytes in, an RGB(A) array out, and back.

The contract:

- Formats read: png, jpeg, webp, bmp, tiff, still images only: an animated
  WebP or PNG (APNG), an animated GIF or a TIFF of several full-size pages
  raises :class:`AnimatedImage` (a still GIF is unsupported, like any GIF).
  Formats written: png, jpeg, webp, tiff; bmp input is written as png.
- Pixels are an ``np.ndarray`` of shape ``(H, W, C)`` with ``C`` in ``{1, 3, 4}``
  (gray, RGB, RGBA; never BGR), dtype ``uint8`` or ``uint16``. Gray+alpha and
  palette images are given as RGBA (or RGB when the palette has no
  transparency); CMYK JPEGs as RGB, without their CMYK ICC profile.
- 16-bit samples survive PNG and TIFF; they are rounded to 8 bits
  (``(v + 128) // 257``) for JPEG and WebP, and WebP output is always RGB(A).
- EXIF orientation (all eight values) is applied on decode for every format,
  and the Orientation tag of the kept EXIF is set to 1, so re-encoding never
  rotates twice. ``exif`` is the raw TIFF-structured blob, without the
  ``Exif\\0\\0`` prefix JPEG's APP1 segment uses; TIFF input keeps no EXIF.
- The ICC profile and EXIF are written back for png (8 and 16 bit), jpeg and
  webp (JPEG drops an EXIF blob over its 64 KiB segment); TIFF output carries
  neither. JPEG has no alpha: JPEG output composites RGBA over
  :data:`JPEG_BACKGROUND` (white).
- :func:`probe` reads headers only, so a small file claiming a huge image is
  refused before any pixel memory is allocated.

Errors (see :mod:`common.errors`): :class:`UnsupportedImage` for bytes that are
not an image we read, or are damaged or truncated; :class:`AnimatedImage` for
several frames or pages; :class:`ImageTooLarge` for
width * height over ``max_pixels``, and for a structure over a decode bound
(:mod:`common.bounds`: chunks, scans); :class:`BadParameter` for an unknown format
or quality. No OpenCV or Pillow exception leaves :func:`probe` or :func:`decode`.
A caller passing :func:`encode` an array outside the pixel contract gets
``ValueError``: that is a bug, not bad input.
"""

from __future__ import annotations

import contextlib
import io
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import PIL.Image

from common import bounds, frames
from common.errors import BadParameter, ImageTooLarge, UnsupportedImage
from common.metadata import (
    TIFF_HEADERS,
    png_chunk,
    png_with_metadata,
    reset_orientation,
    strip_exif_prefix,
)

# Pillow's own bomb check warns (an error under pytest) or raises at a limit we
# do not choose; probe() enforces the configured max_pixels instead.
PIL.Image.MAX_IMAGE_PIXELS = None
# Every decoding failure becomes one of our errors; OpenCV's own log lines on stderr
# ("PNG input buffer is incomplete") would only repeat it, less clearly.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

PNG_COMPRESSION = 1
"""zlib level of PNG output. Measured on real-ESRGAN output (2560x1920, 2 cores): level 1
encodes 1.1-1.6x faster than 3 for 5-9 % more bytes; the RLE strategy, smaller on smooth
resized images, made real model output 3x larger. The stitch encodes every result once,
serially, so its speed is the job's tail."""

PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV 4.11+
    PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH]
"""OpenCV's PNG options. The Paeth filter alone, not libpng's adaptive choice among all
five per row: on 2400x2048 model output (Xeon, 4 interleaved rounds) 1.5-2x faster at
the same size (photo 6.46 MB vs 6.40, flat drawing 1.27 vs 1.25). Huffman-only and RLE
were as fast on photos but 2.4-2.6x larger on flat drawings."""

JPEG_BACKGROUND = 255
"""The gray level (on every channel: white) that transparent pixels are flattened over in JPEG
output, which has no alpha channel."""

Pixels = npt.NDArray[Any]
"""An (H, W, C) uint8 or uint16 array, C in {1, 3, 4}, RGB(A) channel order."""


@dataclass(frozen=True)
class FormatSpec:
    """One file format: its canonical name, content type and file extensions."""

    name: str
    content_type: str
    extensions: tuple[str, ...]
    writable: bool
    max_side: int | None = None
    """Largest width or height the encoder accepts, when it has a limit."""


FORMATS: dict[str, FormatSpec] = {
    "png": FormatSpec("png", "image/png", (".png",), writable=True),
    # libjpeg-turbo's JPEG_MAX_DIMENSION, below the format's 65535
    "jpeg": FormatSpec("jpeg", "image/jpeg", (".jpg", ".jpeg"), writable=True, max_side=65500),
    "webp": FormatSpec("webp", "image/webp", (".webp",), writable=True, max_side=16383),
    "bmp": FormatSpec("bmp", "image/bmp", (".bmp",), writable=False),
    "tiff": FormatSpec("tiff", "image/tiff", (".tif", ".tiff"), writable=True),
}

OUTPUT_FORMATS = frozenset(name for name, spec in FORMATS.items() if spec.writable)

_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
_PIL_OPENERS = ["PNG", "JPEG", "WEBP", "BMP", "TIFF"]
# Pillow names a JPEG with a multi-picture index (many phone photos) "MPO".
_PIL_FORMATS = {name: name.lower() for name in _PIL_OPENERS} | {"MPO": "jpeg"}


def normalize_format(name: str) -> str:
    """Canonical format name for ``png|jpg|jpeg|webp|tiff|tif|bmp`` (any case, optional dot).

    Raises:
        BadParameter: anything else (``detail["parameter"] == "format"``).
    """
    key = name.strip().lower().removeprefix(".")
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise BadParameter(
            f"unknown image format {name!r}; use one of png, jpeg, webp, tiff, bmp",
            parameter="format",
            value=name,
        )
    return key


def content_type(fmt: str) -> str:
    """MIME type of a format name or alias, e.g. ``"jpg"`` -> ``"image/jpeg"``."""
    return FORMATS[normalize_format(fmt)].content_type


def extension(fmt: str) -> str:
    """Preferred file extension, with the dot, e.g. ``"jpeg"`` -> ``".jpg"``."""
    return FORMATS[normalize_format(fmt)].extensions[0]


def default_output_format(input_fmt: str) -> str:
    """The format to write when the caller names none: the input's, or png for bmp."""
    fmt = normalize_format(input_fmt)
    return fmt if fmt in OUTPUT_FORMATS else "png"


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`probe` learns from the header. Width and height are those of
    the image :func:`decode` gives, after EXIF orientation."""

    format: str
    width: int
    height: int


@dataclass(eq=False)
class Image:
    """A decoded image; see the module docstring for the pixel contract."""

    pixels: Pixels
    format: str
    """The source format's canonical name."""
    icc: bytes | None = None
    exif: bytes | None = None
    """Raw TIFF-structured EXIF with Orientation already 1, or None."""

    def __post_init__(self) -> None:
        _check_pixels(self.pixels)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def has_alpha(self) -> bool:
        return self.channels == 4

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8


def probe(data: bytes, max_pixels: int) -> ImageInfo:
    """Read the header of ``data``: format and size. Decodes no pixels.

    Raises:
        UnsupportedImage: empty, not an image, a format we do not read, a
            damaged header, or a zero width or height.
        ImageTooLarge: width * height > ``max_pixels`` (detail: pixels, limit).
    """
    header = _read_header(data)
    try:
        return _check_size(header, max_pixels)
    finally:
        header.im.close()


def decode(data: bytes, max_pixels: int) -> Image:
    """Decode ``data`` to an :class:`Image`, orientation applied, metadata kept.

    Raises:
        UnsupportedImage: as :func:`probe`, or the pixel data is damaged or
            truncated, or its sample type is not 8/16-bit unsigned.
        ImageTooLarge: as :func:`probe`.
    """
    header = _read_header(data)
    im, fmt = header.im, header.fmt
    try:
        _check_size(header, max_pixels)
        icc = im.info.get("icc_profile") or None
        if fmt in ("png", "tiff"):
            # OpenCV keeps 16-bit samples, which Pillow flattens for RGB(A).
            pixels = _decode_cv2(header.data, fmt)
        else:
            # Pillow refuses truncated 8-bit files; OpenCV 4.x fills them with gray.
            if im.mode == "CMYK":
                icc = None  # describes the CMYK data, wrong for the RGB we give
            pixels = _decode_pillow(im, fmt)
        if pixels.shape[:2] != (im.height, im.width):
            raise _damaged(fmt)
    finally:
        im.close()
    return Image(_orient(pixels, header.orientation), fmt, icc=icc, exif=header.exif)


def encode(
    pixels: Pixels,
    fmt: str,
    *,
    icc: bytes | None = None,
    exif: bytes | None = None,
    jpeg_quality: int = 95,
    webp_quality: int = 95,
) -> bytes:
    """Encode ``pixels`` (see the module contract) as ``fmt``.

    ``exif`` may come with or without the ``Exif\\0\\0`` prefix; it is written
    as given, so pass the Orientation-reset blob :func:`decode` returns.
    ``webp_quality`` 101 means lossless.

    Raises:
        BadParameter: ``fmt`` is not an output format, a quality is out of
            range, ``exif`` is not TIFF-structured, or the image is wider or
            taller than the format allows (``detail["limit"]``).
        ValueError: ``pixels`` breaks the pixel contract.
    """
    fmt = normalize_format(fmt)
    spec = FORMATS[fmt]
    if not spec.writable:
        raise BadParameter(
            f"{fmt} is read but not written; use png, jpeg, webp or tiff", parameter="format"
        )
    if not 1 <= jpeg_quality <= 100:
        raise BadParameter("jpeg_quality must be within 1..100", parameter="jpeg_quality")
    if not 1 <= webp_quality <= 101:
        raise BadParameter("webp_quality must be within 1..101", parameter="webp_quality")
    a = _check_pixels(pixels)
    if spec.max_side is not None and max(a.shape[:2]) > spec.max_side:
        raise BadParameter(
            f"{fmt} cannot hold an image of {a.shape[1]}x{a.shape[0]} pixels "
            f"(at most {spec.max_side} per side); use png or tiff",
            parameter="format",
            limit=spec.max_side,
        )
    tiff_exif = strip_exif_prefix(exif) if exif else None
    if tiff_exif is not None and not tiff_exif.startswith(TIFF_HEADERS):
        raise BadParameter("exif is not a TIFF-structured EXIF blob", parameter="exif")

    if fmt == "png":
        png = _cv2_encode(".png", a, PNG_PARAMS)
        return png_with_metadata(png, icc, tiff_exif)
    if fmt == "tiff":
        return _cv2_encode(".tiff", a, [])

    a8 = _to_uint8(a)
    out = io.BytesIO()
    if fmt == "jpeg":
        rgb = a8[:, :, 0] if a8.shape[2] == 1 else a8[:, :, :3]
        if a8.shape[2] == 4:
            rgb = flatten(a8)
        PIL.Image.fromarray(np.ascontiguousarray(rgb)).save(
            out,
            "JPEG",
            quality=jpeg_quality,
            # full chroma at high quality: upscaled output is all fine detail
            subsampling=0 if jpeg_quality >= 90 else -1,
            icc_profile=icc,
            # one APP1 segment holds at most 65533 bytes; a bigger blob (from a
            # PNG or WebP) is dropped rather than failing the whole image
            exif=b"Exif\x00\x00" + tiff_exif if tiff_exif and len(tiff_exif) <= 65527 else b"",
        )
    else:
        if a8.shape[2] == 1:
            a8 = np.repeat(a8, 3, axis=2)
        lossless = webp_quality == 101
        PIL.Image.fromarray(a8).save(
            out,
            "WEBP",
            lossless=lossless,
            # for lossless, quality is effort: 25 is 3x faster than 80, ~1% larger
            quality=25 if lossless else webp_quality,
            # keep RGB under fully transparent pixels, so lossless is exact
            exact=lossless,
            icc_profile=icc,
            exif=tiff_exif or b"",
        )
    return out.getvalue()


def flatten(rgba: Pixels, background: int = JPEG_BACKGROUND) -> Pixels:
    """Composite 8-bit (H, W, 4) ``rgba`` over a flat ``background`` gray: (H, W, 3) uint8."""
    color = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    mixed = (color * alpha + background * (255 - alpha) + 127) // 255
    return mixed.astype(np.uint8)


# --- decoding ---------------------------------------------------------------

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
    (b"BM", "bmp"),
    (b"GIF8", "GIF"),
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)


def _sniff(data: bytes) -> str:
    """Name what ``data`` looks like, for messages: a format of ours or a description."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp":
        return "HEIF/AVIF"
    text = data[:1024].decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n").lower()
    # the last few bytes may be a character cut in half
    if "\ufffd" in text[:-3] or "\x00" in text:
        return "unrecognised binary data"
    if "<svg" in text:
        return "SVG"
    if text.startswith("<"):
        return "XML/HTML text"
    return "text"


_warnings_lock = threading.Lock()


@contextlib.contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Silence Pillow's warnings about broken files: we refuse or decode those
    all the same, and pytest turns stray warnings into errors.

    catch_warnings swaps process-wide state; two threads interleaving it can
    leave "ignore" installed for good, so our uses take turns.
    """
    with _warnings_lock, warnings.catch_warnings(action="ignore"):
        yield


def _damaged(fmt: str) -> UnsupportedImage:
    return UnsupportedImage(f"the {fmt} image is damaged or truncated", format=fmt)


@dataclass(frozen=True)
class _Header:
    im: PIL.Image.Image
    """Opened lazily: header read, no pixels."""
    fmt: str
    data: bytes
    """The file, for a TIFF with its Orientation tag set to 1."""
    exif: bytes | None
    orientation: int


def _read_header(data: bytes) -> _Header:
    if not data:
        raise UnsupportedImage("the file is empty (0 bytes)", format=None)
    found = _sniff(data)
    if found == "GIF" and (count := frames.gif_frames(data)) > 1:
        raise frames.animated("GIF", count)
    if found not in FORMATS:
        raise UnsupportedImage(
            f"{found} is not a supported image format (png, jpeg, webp, bmp, tiff)",
            format=found,
        )
    bounds.check(data, found)
    orientation = 1
    if found == "tiff":
        # Pillow 13 and OpenCV 5 apply a TIFF's own Orientation tag, older
        # versions do not: neutralised, all give the stored pixels and size.
        data, orientation = reset_orientation(data)
    try:
        with _quiet_pillow():
            im = PIL.Image.open(io.BytesIO(data), formats=_PIL_OPENERS)
    except Exception:
        # Pillow refuses a 0-pixel PNG as "cannot identify": say why.
        if found == "png" and data[12:16] == b"IHDR" and len(data) >= 24:
            width, height = struct.unpack_from(">II", data, 16)
            if width == 0 or height == 0:
                raise _zero_size("png") from None
        raise UnsupportedImage(
            f"the {found} image is damaged or truncated, or a variant we do not read",
            format=found,
        ) from None
    fmt = _PIL_FORMATS.get(im.format or "", found)
    try:
        with _quiet_pillow():
            count = frames.still_frames(im, fmt)
    except Exception:
        im.close()
        raise _damaged(fmt) from None
    if count > 1:
        im.close()
        raise frames.animated(fmt, count)
    exif = None
    if fmt != "tiff":  # a TIFF's tags are the file's structure, not an EXIF blob
        exif, orientation = _exif_of(im, fmt, data)
    return _Header(im, fmt, data, exif, orientation)


def _zero_size(fmt: str) -> UnsupportedImage:
    return UnsupportedImage(f"the {fmt} image has zero width or height", format=fmt)


def _check_size(header: _Header, max_pixels: int) -> ImageInfo:
    width, height = header.im.size
    if width <= 0 or height <= 0:
        raise _zero_size(header.fmt)
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            pixels=width * height,
            limit=max_pixels,
            width=width,
            height=height,
        )
    if header.orientation >= 5:
        width, height = height, width
    return ImageInfo(header.fmt, width, height)


def _decode_cv2(data: bytes, fmt: str) -> Pixels:
    try:
        a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        a = None
    if a is None:
        raise _damaged(fmt)
    if a.dtype not in (np.uint8, np.uint16):
        raise UnsupportedImage(
            f"{fmt} images with {a.dtype} samples are not supported (8 or 16-bit only)",
            format=fmt,
            dtype=str(a.dtype),
        )
    if a.ndim == 2:
        return a[:, :, np.newaxis]
    channels = a.shape[2]
    if channels == 3:
        return cv2.cvtColor(a, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(a, cv2.COLOR_BGRA2RGBA)
    if channels == 2:  # gray + alpha, from TIFF
        return np.concatenate([a[:, :, :1]] * 3 + [a[:, :, 1:]], axis=2)
    raise UnsupportedImage(f"{fmt} images with {channels} channels are not supported", format=fmt)


def _decode_pillow(im: PIL.Image.Image, fmt: str) -> Pixels:
    try:
        with _quiet_pillow():
            im.load()
            if im.mode == "1":
                im = im.convert("L")
            elif im.mode != "L":
                alpha = im.has_transparency_data
                im = im.convert("RGBA" if alpha else "RGB")
            a = np.array(im)
    except Exception:
        # Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError...
        raise _damaged(fmt) from None
    return a[:, :, np.newaxis] if a.ndim == 2 else a


def _exif_of(im: PIL.Image.Image, fmt: str, data: bytes) -> tuple[bytes | None, int]:
    """The EXIF to keep (Orientation reset to 1) and the orientation to apply."""
    raw = png_chunk(data, b"eXIf") if fmt == "png" else im.info.get("exif")
    if not isinstance(raw, bytes) or not raw:
        return None, 1
    exif = strip_exif_prefix(raw)
    if not exif.startswith(TIFF_HEADERS):
        return None, 1  # not something we can vouch for when writing it back
    return reset_orientation(exif)


def _orient(a: Pixels, orientation: int) -> Pixels:
    """Apply EXIF orientation ``orientation`` (1..8), as viewers display it."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.transpose(1, 0, 2)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = a.transpose(1, 0, 2)[::-1, ::-1]
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


# --- encoding ---------------------------------------------------------------


def _check_pixels(pixels: Pixels) -> Pixels:
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 3:
        raise ValueError("pixels must be an (H, W, C) numpy array")
    if pixels.shape[2] not in (1, 3, 4) or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"pixels must have 1, 3 or 4 channels of uint8 or uint16, "
            f"not {pixels.shape[2]} of {pixels.dtype}"
        )
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError("pixels must not be empty")
    return pixels


def _to_uint8(a: Pixels) -> Pixels:
    if a.dtype == np.uint8:
        return a
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _cv2_encode(ext: str, a: Pixels, params: list[int]) -> bytes:
    if a.shape[2] == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
    elif a.shape[2] == 4:
        a = cv2.cvtColor(a, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(ext, a, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {a.shape} {a.dtype} array as {ext}")
    return buf.tobytes()
