"""common.imageio: round trips, orientation, metadata and refusals of bad input."""

from __future__ import annotations

import io
import struct
import time

import cv2
import numpy as np
import PIL.Image
import PIL.ImageCms
import PIL.ImageOps
import pytest

from common import imageio
from common.errors import AnimatedImage, BadParameter, ImageTooLarge, UnsupportedImage
from tests.images import crafted_png, png_chunk

LIMIT = 4096 * 4096


@pytest.fixture(scope="module")
def icc() -> bytes:
    profile = PIL.ImageCms.ImageCmsProfile(PIL.ImageCms.createProfile("sRGB"))
    return bytes(profile.tobytes())


def noise(h: int, w: int, c: int, dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(seed)
    return rng.integers(0, top, size=(h, w, c), endpoint=True, dtype=dtype)


def smooth(h: int, w: int) -> np.ndarray:
    """An RGB gradient: JPEG and lossy WebP keep it close."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256 // 2], 2)


def pil_bytes(im: PIL.Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def exif_blob(orientation: int) -> bytes:
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "srcluster test camera"
    return exif.tobytes()


def orientation_of(exif: bytes | None) -> int:
    assert exif is not None and exif.startswith((b"II*\x00", b"MM\x00*"))
    loaded = PIL.Image.Exif()
    loaded.load(exif)
    return int(loaded[0x0112])


# --- formats ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("png", "png"),
        ("JPG", "jpeg"),
        ("jpeg", "jpeg"),
        ("WebP", "webp"),
        ("tif", "tiff"),
        ("TIFF", "tiff"),
        ("bmp", "bmp"),
        (".jpg", "jpeg"),
    ],
)
def test_normalize_format(name: str, canonical: str) -> None:
    assert imageio.normalize_format(name) == canonical


@pytest.mark.parametrize("name", ["gif", "svg", "", "pngg", "image/png"])
def test_normalize_format_refuses(name: str) -> None:
    with pytest.raises(BadParameter) as caught:
        imageio.normalize_format(name)
    assert caught.value.detail["parameter"] == "format"


def test_content_types_and_outputs() -> None:
    assert imageio.content_type("jpg") == "image/jpeg"
    assert imageio.content_type("tif") == "image/tiff"
    assert imageio.extension("jpeg") == ".jpg"
    assert sorted(imageio.OUTPUT_FORMATS) == ["jpeg", "png", "tiff", "webp"]
    assert imageio.default_output_format("bmp") == "png"
    assert imageio.default_output_format("JPG") == "jpeg"


# --- round trips --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_round_trip_is_exact(dtype: type, channels: int) -> None:
    pixels = noise(13, 21, channels, dtype)
    image = imageio.decode(imageio.encode(pixels, "png"), LIMIT)
    assert image.format == "png"
    assert image.pixels.dtype == dtype
    assert image.bit_depth == (16 if dtype == np.uint16 else 8)
    assert image.has_alpha == (channels == 4)
    np.testing.assert_array_equal(image.pixels, pixels)


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff_round_trip_is_exact(dtype: type, channels: int) -> None:
    pixels = noise(11, 17, channels, dtype)
    image = imageio.decode(imageio.encode(pixels, "tiff"), LIMIT)
    assert image.format == "tiff"
    assert image.pixels.dtype == dtype
    np.testing.assert_array_equal(image.pixels, pixels)


@pytest.mark.parametrize("channels", [3, 4])
def test_webp_lossless_is_exact(channels: int) -> None:
    pixels = noise(9, 14, channels)
    image = imageio.decode(imageio.encode(pixels, "webp", webp_quality=101), LIMIT)
    np.testing.assert_array_equal(image.pixels, pixels)


def test_webp_lossy_is_close_and_gray_becomes_rgb() -> None:
    pixels = smooth(40, 60).astype(np.uint8)
    image = imageio.decode(imageio.encode(pixels, "webp", webp_quality=90), LIMIT)
    assert np.abs(image.pixels.astype(int) - pixels).mean() < 3
    gray = imageio.decode(imageio.encode(pixels[:, :, :1], "webp", webp_quality=101), LIMIT)
    np.testing.assert_array_equal(gray.pixels, np.repeat(pixels[:, :, :1], 3, axis=2))


def test_jpeg_flattens_alpha_over_white() -> None:
    rgb = smooth(40, 60).astype(np.uint8)
    alpha = np.tile(np.array([0, 128, 255], np.uint8).repeat(20), (40, 1))[..., None]
    image = imageio.decode(imageio.encode(np.dstack([rgb, alpha]), "jpeg", jpeg_quality=95), LIMIT)
    assert image.format == "jpeg" and image.channels == 3
    a = alpha.astype(int) / 255
    expected = rgb * a + imageio.JPEG_BACKGROUND * (1 - a)
    assert np.abs(image.pixels.astype(int) - expected).mean() < 2
    assert (image.pixels[:, :15] > 250).all(), "fully transparent is white, not black"


def test_jpeg_gray_stays_gray() -> None:
    gray = smooth(16, 24)[:, :, :1].astype(np.uint8)
    image = imageio.decode(imageio.encode(gray, "jpeg"), LIMIT)
    assert image.channels == 1
    assert np.abs(image.pixels.astype(int) - gray).mean() < 2


def test_16_bit_is_rounded_to_8_for_webp() -> None:
    pixels = np.array([[[0, 128, 129], [32767, 65406, 65535]]], np.uint16)
    image = imageio.decode(imageio.encode(pixels, "webp", webp_quality=101), LIMIT)
    assert image.pixels.dtype == np.uint8
    assert image.pixels.tolist() == [[[0, 0, 1], [127, 254, 255]]]


def test_bmp_decodes() -> None:
    pixels = noise(7, 10, 3)
    image = imageio.decode(pil_bytes(PIL.Image.fromarray(pixels), "BMP"), LIMIT)
    assert image.format == "bmp"
    np.testing.assert_array_equal(image.pixels, pixels)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
def test_channel_order_is_rgb(fmt: str) -> None:
    red = PIL.Image.new("RGB", (8, 8), (255, 0, 0))
    params = {"lossless": True} if fmt == "WEBP" else {}
    pixel = imageio.decode(pil_bytes(red, fmt, **params), LIMIT).pixels[4, 4]
    assert pixel[0] > 240 and pixel[1] < 15 and pixel[2] < 15


def test_gray_alpha_and_palettes() -> None:
    la = imageio.decode(pil_bytes(PIL.Image.new("LA", (3, 2), (10, 20)), "PNG"), LIMIT)
    assert la.pixels.shape == (2, 3, 4) and la.pixels[0, 0].tolist() == [10, 10, 10, 20]

    palette = PIL.Image.new("P", (3, 2), 1)
    palette.putpalette([0, 0, 0, 40, 50, 60] + [0] * 762)
    opaque = imageio.decode(pil_bytes(palette, "PNG"), LIMIT)
    assert opaque.pixels.shape == (2, 3, 3) and opaque.pixels[0, 0].tolist() == [40, 50, 60]
    clear = imageio.decode(pil_bytes(palette, "PNG", transparency=1), LIMIT)
    assert clear.pixels.shape == (2, 3, 4) and clear.pixels[0, 0].tolist() == [40, 50, 60, 0]


def test_mpo_reads_as_jpeg() -> None:
    first = PIL.Image.new("RGB", (8, 8), (0, 0, 255))
    mpo = pil_bytes(first, "MPO", save_all=True, append_images=[PIL.Image.new("RGB", (8, 8))])
    assert PIL.Image.open(io.BytesIO(mpo)).format == "MPO"
    image = imageio.decode(mpo, LIMIT)
    assert image.format == "jpeg" and image.pixels[4, 4, 2] > 240


def frames(fmt: str, count: int) -> bytes:
    """``count`` 8x8 frames of different grays saved as one ``fmt`` file (animated when > 1)."""
    ims = [PIL.Image.new("RGB", (8, 8), (40 * i,) * 3) for i in range(count)]
    return pil_bytes(ims[0], fmt, save_all=True, append_images=ims[1:])


@pytest.mark.parametrize("fmt", ["WEBP", "PNG", "TIFF", "GIF"])
def test_animated_images_are_refused_naming_their_frames(fmt: str) -> None:
    with pytest.raises(AnimatedImage) as info:
        imageio.decode(frames(fmt, 3), LIMIT)
    assert info.value.http_status == 422
    assert info.value.detail["frames"] == 3 and info.value.detail["parameter"] == "file"
    assert "still images only" in info.value.message
    with pytest.raises(AnimatedImage):
        imageio.probe(frames(fmt, 3), LIMIT)


@pytest.mark.parametrize("fmt", ["WEBP", "PNG", "TIFF"])
def test_one_frame_saved_as_animation_is_a_still(fmt: str) -> None:
    assert imageio.decode(frames(fmt, 1), LIMIT).pixels.shape == (8, 8, 3)


def test_a_still_gif_stays_unsupported() -> None:
    with pytest.raises(UnsupportedImage, match="GIF is not a supported"):
        imageio.decode(frames("GIF", 1), LIMIT)


def test_a_tiff_with_a_thumbnail_page_is_a_still() -> None:
    """Page 2 marked reduced-resolution (NewSubfileType bit 0) is a preview, not a frame."""
    page, thumbnail = PIL.Image.new("RGB", (64, 64), (9, 9, 9)), PIL.Image.new("RGB", (8, 8))
    data = bytearray(
        pil_bytes(page, "TIFF", save_all=True, append_images=[thumbnail], tiffinfo={254: 0})
    )
    assert data[:2] == b"II"
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from(
        "<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0]
    )[0]
    for entry in range(struct.unpack_from("<H", data, second)[0]):
        at = second + 2 + 12 * entry
        if struct.unpack_from("<H", data, at)[0] == 254:
            struct.pack_into("<I", data, at + 8, 1)
    assert imageio.decode(bytes(data), LIMIT).pixels.shape == (64, 64, 3)


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = PIL.Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    image = imageio.decode(pil_bytes(cmyk, "JPEG"), LIMIT)
    assert image.channels == 3
    red, green, blue = image.pixels[4, 4].tolist()
    assert red > 240 and green < 15 and blue < 15


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff"])
@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 500), (97, 131)])
def test_odd_sizes(fmt: str, h: int, w: int) -> None:
    pixels = smooth(h, w).astype(np.uint8)
    image = imageio.decode(imageio.encode(pixels, fmt), LIMIT)
    assert (image.height, image.width) == (h, w)
    assert imageio.probe(imageio.encode(pixels, fmt), LIMIT) == imageio.ImageInfo(fmt, w, h)


# --- orientation and metadata -------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(orientation: int, fmt: str) -> None:
    stored = PIL.Image.fromarray(noise(5, 8, 3, seed=orientation))
    png = pil_bytes(stored, "PNG", exif=exif_blob(orientation))
    expected = np.asarray(PIL.ImageOps.exif_transpose(PIL.Image.open(io.BytesIO(png))))
    if fmt == "TIFF":  # the orientation is a tag of the file itself
        data = pil_bytes(stored, fmt, tiffinfo={0x0112: orientation})
    else:
        data = pil_bytes(stored, fmt, exif=exif_blob(orientation), lossless=True)
    image = imageio.decode(data, LIMIT)
    np.testing.assert_array_equal(image.pixels, expected)
    info = imageio.probe(data, LIMIT)
    assert (info.height, info.width) == expected.shape[:2]
    if fmt != "TIFF":
        assert orientation_of(image.exif) == 1


def quadrants(h: int, w: int) -> np.ndarray:
    """Top-left red, top-right green, bottom-left blue, bottom-right white."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 255)
    return a


def corner_colors(a: np.ndarray) -> list[str]:
    names = {(255, 0, 0): "red", (0, 255, 0): "green", (0, 0, 255): "blue"}
    names[(255, 255, 255)] = "white"
    h, w = a.shape[:2]
    corners = [a[2, 2], a[2, w - 3], a[h - 3, 2], a[h - 3, w - 3]]
    # the nearest named colour, so that JPEG's small errors do not matter
    return [names[min(names, key=lambda rgb: np.abs(np.subtract(rgb, c)).sum())] for c in corners]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize(
    ("orientation", "shape", "corners"),
    [
        # 6: the camera was turned 90 degrees; viewers rotate clockwise
        (6, (32, 16), ["blue", "red", "white", "green"]),
        (3, (16, 32), ["white", "blue", "green", "red"]),
    ],
)
def test_orientation_is_applied(
    fmt: str, orientation: int, shape: tuple[int, int], corners: list[str]
) -> None:
    stored = PIL.Image.fromarray(quadrants(16, 32))
    image = imageio.decode(pil_bytes(stored, fmt, exif=exif_blob(orientation)), LIMIT)
    assert image.pixels.shape[:2] == shape
    assert corner_colors(image.pixels) == corners
    assert orientation_of(image.exif) == 1
    # written back and read again, it is not rotated a second time
    again = imageio.decode(imageio.encode(image.pixels, "png", exif=image.exif), LIMIT)
    np.testing.assert_array_equal(again.pixels, image.pixels)


def test_tiff_orientation_is_applied() -> None:
    stored = PIL.Image.fromarray(quadrants(16, 32))
    image = imageio.decode(pil_bytes(stored, "TIFF", tiffinfo={0x0112: 6}), LIMIT)
    assert corner_colors(image.pixels) == ["blue", "red", "white", "green"]
    assert image.exif is None


@pytest.mark.parametrize(
    ("fmt", "dtype"),
    [("png", np.uint8), ("png", np.uint16), ("jpeg", np.uint8), ("webp", np.uint8)],
)
def test_icc_and_exif_survive(icc: bytes, fmt: str, dtype: type) -> None:
    source = pil_bytes(PIL.Image.fromarray(smooth(8, 12).astype(np.uint8)), "JPEG")
    source = pil_bytes(PIL.Image.open(io.BytesIO(source)), "JPEG", icc_profile=icc)
    decoded = imageio.decode(source, LIMIT)
    assert decoded.icc == icc

    pixels = decoded.pixels.astype(dtype) * (257 if dtype == np.uint16 else 1)
    exif = exif_blob(1)[6:]
    data = imageio.encode(pixels, fmt, icc=decoded.icc, exif=exif)
    again = imageio.decode(data, LIMIT)
    assert again.icc == icc
    assert again.exif == exif
    assert again.pixels.dtype == dtype
    assert PIL.Image.open(io.BytesIO(data)).info["icc_profile"] == icc  # others can read it


def test_jpeg_drops_exif_too_big_for_its_segment() -> None:
    big = PIL.Image.Exif()
    big[0x010E] = "x" * 70_000  # ImageDescription
    image = imageio.decode(imageio.encode(noise(4, 4, 3), "jpeg", exif=big.tobytes()), LIMIT)
    assert image.exif is None


# --- refusals -----------------------------------------------------------------


def flipped_idat_byte() -> bytes:
    data = bytearray(imageio.encode(smooth(60, 80).astype(np.uint8), "png"))
    data[data.index(b"IDAT") + 20] ^= 0xFF
    return bytes(data)


BAD_INPUTS = {
    "empty": (b"", "empty"),
    "hello": (b"hello", "text"),
    "text file": (b"name,width\nphoto,640\n" * 20, "text"),
    "utf-8 text": ("café crème, ".encode() * 200, "text"),
    "svg": (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    "garbage after header": (crafted_png(8, 8)[:33] + bytes(range(256)) * 4, "damaged"),
    "bad crc": (flipped_idat_byte(), "damaged"),
    "zero size": (crafted_png(0, 0), "zero"),
    "zero height": (crafted_png(9, 0), "zero"),
    "random": (np.random.default_rng(1).bytes(3000), "not a supported"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_unsupported(name: str) -> None:
    data, words = BAD_INPUTS[name]
    with pytest.raises(UnsupportedImage, match=words):
        imageio.decode(data, LIMIT)


def test_gif_is_named() -> None:
    gif = pil_bytes(PIL.Image.new("RGB", (4, 4)), "GIF")
    for read in (imageio.probe, imageio.decode):
        with pytest.raises(UnsupportedImage, match="GIF") as caught:
            read(gif, LIMIT)
        assert caught.value.detail["format"] == "GIF"


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff", "bmp"])
def test_truncated_is_damaged(fmt: str) -> None:
    pixels = smooth(60, 80).astype(np.uint8)
    if fmt == "bmp":
        data = pil_bytes(PIL.Image.fromarray(pixels), "BMP")
    else:
        data = imageio.encode(pixels, fmt)
    imageio.decode(data, LIMIT)
    with pytest.raises(UnsupportedImage, match="damaged or truncated"):
        imageio.decode(data[: len(data) // 2], LIMIT)


def test_header_claiming_a_huge_png_is_refused_fast() -> None:
    bomb = crafted_png(100_000, 100_000)
    started = time.perf_counter()
    for read in (imageio.probe, imageio.decode):
        with pytest.raises(ImageTooLarge) as caught:
            read(bomb, LIMIT)
        assert caught.value.detail == {
            "pixels": 10**10,
            "limit": LIMIT,
            "width": 100_000,
            "height": 100_000,
        }
    assert time.perf_counter() - started < 0.5


def test_over_the_pixel_limit() -> None:
    data = imageio.encode(noise(10, 10, 3), "jpeg")
    assert imageio.probe(data, 100) == imageio.ImageInfo("jpeg", 10, 10)
    with pytest.raises(ImageTooLarge):
        imageio.decode(data, 99)


@pytest.mark.parametrize(("channels", "words"), [(1, "float32"), (3, "variant we do not read")])
def test_float_tiff_is_unsupported(channels: int, words: str) -> None:
    # Pillow reads a gray float TIFF's header, not an RGB one's
    ok, buf = cv2.imencode(".tiff", np.zeros((4, 4, channels), np.float32))
    assert ok
    with pytest.raises(UnsupportedImage, match=words):
        imageio.decode(buf.tobytes(), LIMIT)


def test_encode_refusals() -> None:
    pixels = noise(4, 4, 3)
    with pytest.raises(BadParameter, match="bmp"):
        imageio.encode(pixels, "bmp")
    with pytest.raises(BadParameter) as caught:
        imageio.encode(pixels, "jpeg", jpeg_quality=0)
    assert caught.value.detail["parameter"] == "jpeg_quality"
    with pytest.raises(BadParameter):
        imageio.encode(pixels, "webp", webp_quality=102)
    with pytest.raises(BadParameter) as caught:
        imageio.encode(np.zeros((1, 16384, 3), np.uint8), "webp")
    assert caught.value.detail == {"parameter": "format", "limit": 16383}
    with pytest.raises(BadParameter, match="exif"):
        imageio.encode(pixels, "png", exif=b"not exif")
    with pytest.raises(ValueError):
        imageio.encode(pixels.astype(np.float32), "png")
    with pytest.raises(ValueError):
        imageio.encode(pixels[:, :, :2], "png")


# --- decode bounds (common.bounds): real files within them decode ----------------------


def test_files_within_the_decode_bounds_decode() -> None:
    """What real encoders write passes: a progressive JPEG with an EXIF thumbnail-sized
    APP1, a PNG split into thousands of IDAT chunks, a PNG with a real ICC profile."""
    rgb = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    out = io.BytesIO()
    PIL.Image.fromarray(rgb).save(out, "JPEG", progressive=True, quality=90, exif=b"\0" * 30000)
    assert imageio.decode(out.getvalue(), 1 << 20).pixels.shape == (96, 128, 3)
    png = imageio.encode(rgb, "png")
    ihdr = png[:33]
    # re-chunk the IDAT payload into 100-byte pieces (libpng reads them as one stream)
    payload = b""
    pos = 33
    while png[pos + 4 : pos + 8] != b"IEND":
        (length,) = struct.unpack_from(">I", png, pos)
        if png[pos + 4 : pos + 8] == b"IDAT":
            payload += png[pos + 8 : pos + 8 + length]
        pos += 12 + length
    pieces = [payload[i : i + 100] for i in range(0, len(payload), 100)]
    assert len(pieces) > 300
    rechunked = ihdr + b"".join(png_chunk(b"IDAT", p) for p in pieces) + png_chunk(b"IEND", b"")
    assert np.array_equal(imageio.decode(rechunked, 1 << 20).pixels, rgb)
    icc = PIL.ImageCms.ImageCmsProfile(PIL.ImageCms.createProfile("sRGB")).tobytes()
    with_icc = imageio.encode(rgb, "png", icc=icc)
    assert imageio.decode(with_icc, 1 << 20).icc == icc
