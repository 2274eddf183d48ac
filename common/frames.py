"""Frames: whether an image file holds one picture or several (an animation, a page stack).

srcluster upscales still images only. An animated WebP or PNG (APNG), an
animated GIF, or a TIFF of several full-size pages is refused with
:class:`~common.errors.AnimatedImage` rather than cut to its first frame, so
no caller gets one frame back believing it got the animation. What is not an
animation: a JPEG's multi-picture index (phone photos carry previews and depth
maps that way) and a TIFF's reduced-resolution page (a thumbnail).

Counting reads headers and block structure only; no frame is decoded.
"""

from __future__ import annotations

import PIL.Image

from common.errors import AnimatedImage

REDUCED_RESOLUTION = 1
"""Bit 0 of a TIFF page's NewSubfileType (tag 254): the page is a smaller copy of another."""


def animated(fmt: str, count: int) -> AnimatedImage:
    """The refusal of a file of ``count`` frames (pages, for a TIFF) in format ``fmt``."""
    kind = f"a {fmt} of {count} pages" if fmt == "tiff" else f"an animated {fmt} ({count} frames)"
    return AnimatedImage(
        f"the file is {kind}; srcluster upscales still images only: send one frame "
        "as its own png, jpeg or webp file",
        parameter="file",
        format=fmt,
        frames=count,
    )


def still_frames(im: PIL.Image.Image, fmt: str) -> int:
    """Frames of an animated WebP or APNG, or full-size pages of a TIFF; 1 for a still.

    ``im`` is opened (header read) and left at its first frame. Pillow's errors on a
    damaged file pass through: the caller names the damage.
    """
    if fmt not in ("png", "webp", "tiff"):
        return 1
    count = int(getattr(im, "n_frames", 1))
    if fmt != "tiff" or count < 2:
        return count
    pages = 0
    for index in range(count):
        im.seek(index)
        if not int(getattr(im, "tag_v2", {}).get(254, 0)) & REDUCED_RESOLUTION:
            pages += 1
    im.seek(0)
    return pages


def gif_frames(data: bytes) -> int:
    """Image descriptors in a GIF file, counted from its block structure without decoding.

    A damaged file counts what came before the damage.
    """
    pos = 13  # signature and logical screen descriptor
    if len(data) < pos:
        return 0
    if data[10] & 0x80:  # global colour table
        pos += 3 << ((data[10] & 7) + 1)
    count = 0
    while pos < len(data):
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: introducer, label, then sub-blocks
            pos += 2
        elif block == 0x2C:  # image: descriptor, local colour table, LZW size, sub-blocks
            count += 1
            if pos + 10 > len(data):
                break
            packed = data[pos + 9]
            pos += 10 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0) + 1
        else:
            break
        while pos < len(data) and data[pos] != 0:  # sub-blocks: a size byte, then that many
            pos += data[pos] + 1
        pos += 1
    return count
