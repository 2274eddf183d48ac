"""Decode bounds: what a file's structure may hold before any of it is decoded.

The pixel limit (:func:`common.imageio.probe`) stops a small file that claims a
huge image. These stop a file that claims a small image and still costs
seconds and hundreds of megabytes to read: a PNG of millions of empty chunks,
or of huge iCCP/zTXt/iTXt/eXIf chunks; a progressive JPEG of thousands of scans,
each a pass over the whole image. Each check walks the block structure only
(lengths and markers), in time linear in the file and without allocating.

Every refusal is :class:`~common.errors.ImageTooLarge` (413) naming the limit.
"""

from __future__ import annotations

import struct

from common.errors import ImageTooLarge

MAX_PNG_CHUNKS = 20_000
"""Chunks a PNG may have: a 50 MB file written in libpng's 8 KiB IDAT chunks has 6,400."""

MAX_PNG_ANCILLARY_BYTES = 1 << 20
"""Bytes of one chunk other than IDAT (iCCP, zTXt, iTXt, tEXt, eXIf...): 1 MiB."""

MAX_PNG_ANCILLARY_TOTAL = 8 << 20
"""Bytes of all chunks other than IDAT together."""

MAX_JPEG_SCANS = 100
"""Scans a JPEG may have: a progressive JPEG has about 10; each scan is a pass over the image."""

MAX_JPEG_SEGMENTS = 10_000
"""Marker segments (APPn, DQT, DHT...) a JPEG may have."""


def check(data: bytes, fmt: str) -> None:
    """Refuse ``data`` (a file of format ``fmt``) if its structure is over a bound.

    A damaged structure is left to the decoder to name; only counts and sizes
    are refused here.

    Raises:
        ImageTooLarge: too many chunks, scans or segments, or an ancillary chunk too large.
    """
    if fmt == "png":
        _check_png(data)
    elif fmt == "jpeg":
        _check_jpeg(data)


def _refuse(message: str, **detail: object) -> ImageTooLarge:
    return ImageTooLarge(message, parameter="file", **detail)


def _check_png(data: bytes) -> None:
    pos, count, ancillary = 8, 0, 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        count += 1
        if count > MAX_PNG_CHUNKS:
            raise _refuse(
                f"the png has over {MAX_PNG_CHUNKS} chunks; a real image has a few hundred",
                limit=MAX_PNG_CHUNKS,
            )
        if kind != b"IDAT":
            name = kind.decode("latin-1", errors="replace")
            if length > MAX_PNG_ANCILLARY_BYTES:
                raise _refuse(
                    f"the png's {name} chunk is {length} bytes, over the limit of "
                    f"{MAX_PNG_ANCILLARY_BYTES} for a chunk that is not pixel data",
                    chunk=name,
                    bytes=length,
                    limit=MAX_PNG_ANCILLARY_BYTES,
                )
            ancillary += length
            if ancillary > MAX_PNG_ANCILLARY_TOTAL:
                raise _refuse(
                    f"the png's chunks other than pixel data take over "
                    f"{MAX_PNG_ANCILLARY_TOTAL} bytes",
                    limit=MAX_PNG_ANCILLARY_TOTAL,
                )
        if kind == b"IEND":
            return
        pos += 12 + length


_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
"""Markers without a length: TEM, RST0-7, SOI, EOI."""


def _check_jpeg(data: bytes) -> None:
    pos, scans, segments = 2, 0, 0
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return  # damaged: the decoder says so
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            return
        if marker in _STANDALONE:
            pos += 2
            continue
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise _refuse(
                f"the jpeg has over {MAX_JPEG_SEGMENTS} marker segments", limit=MAX_JPEG_SEGMENTS
            )
        (length,) = struct.unpack_from(">H", data, pos + 2)
        pos += 2 + length
        if marker != 0xDA:  # SOS: entropy-coded data follows its header
            continue
        scans += 1
        if scans > MAX_JPEG_SCANS:
            raise _refuse(
                f"the jpeg has over {MAX_JPEG_SCANS} scans (a progressive jpeg has about "
                "10); each is a pass over the whole image",
                limit=MAX_JPEG_SCANS,
            )
        # skip entropy-coded bytes: 0xFF is stuffed as FF00 there, or is a restart marker
        while True:
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= end:
                return
            following = data[pos + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                pos += 1 if following == 0xFF else 2
                continue
            break
