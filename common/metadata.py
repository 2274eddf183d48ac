"""Byte-level image metadata: EXIF orientation and PNG chunks, read and written in place.

Pillow and OpenCV either drop these or rewrite them; the functions here touch
only the bytes they must, so everything else a camera wrote (maker notes with
absolute offsets) survives an upscale. No pixels here: see :mod:`common.imageio`.
"""

from __future__ import annotations

import struct
import zlib

TIFF_HEADERS = (b"II*\x00", b"MM\x00*")
"""How a classic TIFF structure (a TIFF file or an EXIF blob) starts: little- or big-endian."""

_ORIENTATION_TAG = 0x0112


def strip_exif_prefix(blob: bytes) -> bytes:
    return blob[6:] if blob.startswith(b"Exif\x00\x00") else blob


def reset_orientation(tiff: bytes) -> tuple[bytes, int]:
    """``tiff`` (an EXIF blob or a whole TIFF file) with IFD0's Orientation set
    to 1, and the orientation (1..8) it asked for."""
    slot = _orientation_slot(tiff)
    if slot is None:
        return tiff, 1
    value, offset, code = slot
    if value != 1:
        patched = bytearray(tiff)
        struct.pack_into(code, patched, offset, 1)
        tiff = bytes(patched)
    return tiff, value if 1 <= value <= 8 else 1


def _orientation_slot(tiff: bytes) -> tuple[int, int, str] | None:
    """(value, byte offset, struct code) of IFD0's Orientation entry, if any.

    Patching the value in place keeps every other byte (maker notes hold
    absolute offsets that re-serialising with Pillow would break).
    """
    if not tiff.startswith(TIFF_HEADERS):
        return None  # BigTIFF's layout differs; it keeps its orientation
    order = "<" if tiff.startswith(b"II") else ">"
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):
            entry = ifd + 2 + 12 * i
            tag, kind, n = struct.unpack_from(order + "HHI", tiff, entry)
            if tag == _ORIENTATION_TAG and n == 1 and kind in (3, 4):  # SHORT or LONG
                code = order + ("H" if kind == 3 else "I")
                (value,) = struct.unpack_from(code, tiff, entry + 8)
                return int(value), entry + 8, code
    except struct.error:
        return None
    return None


def png_chunk(data: bytes, kind: bytes) -> bytes | None:
    """The payload of the first whole ``kind`` chunk, or None; skips IDAT unread."""
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        if pos + 12 + length > len(data):
            return None
        found = data[pos + 4 : pos + 8]
        if found == kind:
            return data[pos + 8 : pos + 8 + length]
        if found == b"IEND":
            return None
        pos += 12 + length
    return None


def png_chunk_bytes(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_with_metadata(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert iCCP and eXIf after IHDR; OpenCV writes neither for 16-bit data."""
    extra = b""
    if icc:
        # name, NUL, compression method 0 (zlib), compressed profile
        extra += png_chunk_bytes(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif:
        extra += png_chunk_bytes(b"eXIf", exif)
    if not extra:
        return png
    ihdr_end = 8 + 12 + 13
    if png[12:16] != b"IHDR":
        raise ValueError("OpenCV wrote a PNG that does not start with IHDR")
    return png[:ihdr_end] + extra + png[ihdr_end:]
