"""The local pipeline, with real weights: tiled output equals whole-image inference, images keep what they are."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageCms

from common import tiling
from common.engines import get_engine
from common.errors import BadParameter, ImageTooLarge, UnknownModel, UnsupportedImage
from common.imageio import Image, decode, encode
from common.models import Registry
from common.params import parse_params
from common.pipeline import ALPHA_FLATTENED, make_plan, run_plan, upscale_bytes, whole_image
from common.settings import Settings

COMPACT = "realesr-animevideov3"


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def tiled(
    settings: Settings, model: str, rgb: np.ndarray, tile: int, pad: int | None = None
) -> np.ndarray:
    spec = Registry(settings).get(model)
    image = Image(pixels=rgb, format="png", icc=None, exif=None)
    plan = make_plan(image, parse_params(model=model, tile_size=tile, tile_pad=pad), spec, settings)
    assert len(plan.tiles) > 1, "the test must exercise several tiles"
    return run_plan(plan, rgb, get_engine(model, settings))


def test_compact_tiles_are_bit_exact_to_whole_image_at_default_pad(settings, photo) -> None:
    rgb = photo[:90, :110]
    reference = whole_image(get_engine(COMPACT, settings), rgb)
    out = tiled(settings, COMPACT, rgb, tile=32)
    assert out.shape == reference.shape
    assert int(np.abs(out.astype(int) - reference.astype(int)).max()) <= 1


def test_compact_too_small_pad_is_not_exact(settings, photo) -> None:
    """Guards the test above: with little context the seams show, so exactness is earned."""
    rgb = photo[:90, :110]
    reference = whole_image(get_engine(COMPACT, settings), rgb)
    out = tiled(settings, COMPACT, rgb, tile=32, pad=2)
    assert int(np.abs(out.astype(int) - reference.astype(int)).max()) > 1


@pytest.mark.slow
def test_x4plus_tiles_match_whole_image_at_default_pad(settings, photo) -> None:
    # realesrgan-x4plus' receptive field is far wider than its default pad of 28. Measured
    # on this crop (3 tiles of 40, every pixel near a seam): 50.8 dB, max |diff| 8; the bar
    # is 50 dB. Real plans have far fewer seams (63 dB on a 600x400 photo in 6 windows).
    # This is the pad's geometry, so ORT fp32 on both sides: on a BF16 host ``auto`` runs
    # OpenVINO bf16, whose own rounding (54-56 dB from fp32, gated in test_engines.py)
    # differs between window shapes and pulled this worst case to 49.5 dB.
    fp32 = dataclasses.replace(settings, engine="ort", precision="fp32")
    rgb = photo[:56, :100]
    reference = whole_image(get_engine("realesrgan-x4plus", fp32), rgb)
    out = tiled(fp32, "realesrgan-x4plus", rgb, tile=40)
    assert psnr(out, reference) >= 50.0


def _png(pixels: np.ndarray) -> bytes:
    return encode(pixels, "png")


def _run(settings: Settings, data: bytes, **params: object) -> Image:
    encoded, _ = upscale_bytes(data, parse_params(model=COMPACT, **params), settings)
    return decode(encoded, 1 << 30)


def test_rgba_keeps_an_upscaled_alpha(settings, photo) -> None:
    rgb = photo[:40, :48]
    alpha = np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (40, 1))[..., None]
    out = _run(settings, _png(np.dstack([rgb, alpha])))
    assert out.pixels.shape == (160, 192, 4)
    expected = np.tile(np.linspace(0, 255, 192), (160, 1))
    assert np.abs(out.pixels[..., 3].astype(float) - expected).mean() < 8


def test_skip_alpha_resizes_alpha_and_opaque_alpha_stays_opaque(settings, photo) -> None:
    rgb = photo[:20, :24]
    opaque = np.full((20, 24, 1), 255, np.uint8)
    out = _run(settings, _png(np.dstack([rgb, opaque])))
    assert out.pixels.shape == (80, 96, 4) and (out.pixels[..., 3] == 255).all()
    holed = opaque.copy()
    holed[5:10, 5:10] = 0
    out = _run(settings, _png(np.dstack([rgb, holed])), skip_alpha=True)
    assert out.pixels[30, 30, 3] == 0 and out.pixels[70, 80, 3] == 255


@pytest.mark.parametrize("skip_alpha", [False, True])
def test_translucent_to_jpeg_is_flattened_over_white_and_says_so(
    settings, photo, skip_alpha: bool
) -> None:
    rgb = photo[:20, :24]
    alpha = np.full((20, 24, 1), 255, np.uint8)
    alpha[:, :8] = 0
    params = parse_params(model=COMPACT, format="jpg", skip_alpha=skip_alpha)
    encoded, plan = upscale_bytes(_png(np.dstack([rgb, alpha])), params, settings)
    assert plan.notes == (ALPHA_FLATTENED,) and "white" in plan.notes[0]
    out = decode(encoded, 1 << 20).pixels
    assert out.shape == (80, 96, 3)
    assert (out[:, :28] > 245).all(), "the transparent third is white"
    # the same image kept as png, or an opaque one as jpeg, has nothing to say
    _, as_png = upscale_bytes(_png(np.dstack([rgb, alpha])), parse_params(model=COMPACT), settings)
    opaque = _png(np.dstack([rgb, np.full_like(alpha, 255)]))
    _, as_jpeg = upscale_bytes(opaque, params, settings)
    assert as_png.notes == () and as_jpeg.notes == ()


def test_16_bit_png_stays_16_bit(settings, photo) -> None:
    rgb16 = photo[:24, :32].astype(np.uint16) * 257 + 100
    out = _run(settings, _png(rgb16))
    assert out.pixels.dtype == np.uint16 and out.pixels.shape == (96, 128, 3)
    rgb8 = _run(settings, _png(photo[:24, :32])).pixels
    assert psnr(out.pixels / 257.0, rgb8.astype(float)) > 35  # same picture, finer levels


def test_gray_stays_gray(settings, photo) -> None:
    gray = photo[:24, :32].mean(axis=2).astype(np.uint8)[..., None]
    out = _run(settings, _png(gray))
    assert out.pixels.shape == (96, 128, 1)


@pytest.mark.parametrize(("width", "height"), [(97, 131), (1, 1), (3, 500)])
def test_odd_sizes(settings, photo, width: int, height: int) -> None:
    rgb = np.resize(photo, (height, width, 3)).astype(np.uint8)
    out = _run(settings, _png(rgb), tile_size=64)
    assert out.pixels.shape == (height * 4, width * 4, 3)


def test_exif_orientation_is_applied(settings, photo) -> None:
    pil = PILImage.fromarray(photo[:20, :30])
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    pil.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    out = _run(settings, buffer.getvalue(), format="png")
    assert out.pixels.shape[:2] == (120, 80)
    assert out.exif is not None, "the EXIF block is carried over"
    kept = PILImage.Exif()
    kept.load(out.exif)
    assert kept.get(0x0112, 1) == 1, "orientation was applied, so the tag must say 1"


def test_icc_profile_survives(settings, photo) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(photo[:16, :16], "png", icc=icc)
    for fmt in ("png", "jpeg", "webp"):
        assert _run(settings, data, format=fmt).icc == icc


def test_scale_and_resize_to(settings, photo) -> None:
    data = _png(photo[:20, :30])
    assert _run(settings, data, scale=2).pixels.shape[:2] == (40, 60)
    assert _run(settings, data, scale=6).pixels.shape[:2] == (120, 180)
    assert _run(settings, data, resize_to="1/2").pixels.shape[:2] == (40, 60)
    assert _run(settings, data, resize_to="300x0").pixels.shape[:2] == (200, 300)
    assert _run(settings, data, resize_to="64x64").pixels.shape[:2] == (64, 64)


@pytest.mark.parametrize(
    ("data", "params", "error"),
    [
        (b"", {}, UnsupportedImage),
        (b"this is not an image", {}, UnsupportedImage),
        ("truncated", {}, UnsupportedImage),
        ("photo", {"model": "no-such-model"}, UnknownModel),
        ("photo", {"scale": 9}, BadParameter),
        ("photo", {"scale": 1}, BadParameter),
        ("photo", {"tile_size": 0}, BadParameter),
        ("photo", {"resize_to": "abc"}, BadParameter),
        ("photo", {"resize_to": "1/0"}, BadParameter),
        ("photo", {"format": "gif"}, BadParameter),
    ],
)
def test_bad_input_gives_a_clear_error(settings, photo, data, params, error) -> None:
    png = _png(photo[:16, :16])
    payload = (
        {"photo": png, "truncated": png[: len(png) // 2]}.get(data, data)
        if isinstance(data, str)
        else data
    )
    with pytest.raises(error) as caught:
        upscale_bytes(payload, parse_params(**{"model": COMPACT, **params}), settings)
    assert caught.value.message


def test_pixel_limit(settings, photo) -> None:
    small = Settings(data_dir=settings.data_dir, max_pixels=100)
    with pytest.raises(ImageTooLarge):
        upscale_bytes(_png(photo[:16, :16]), parse_params(model=COMPACT), small)


def test_reflection_border_matters(settings, photo) -> None:
    """The reference extends the border by reflection; without it the border differs visibly."""
    rgb = photo[:40, :40]
    engine = get_engine(COMPACT, settings)
    reflected = whole_image(engine, rgb)
    plain = tiling.from_unit_float(engine.run(tiling.to_unit_float(rgb[None]))[0], rgb.dtype)
    assert np.abs(reflected[:4].astype(int) - plain[:4].astype(int)).max() > 10
