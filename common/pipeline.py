"""The local pipeline: plan -> infer -> stitch -> finish, on this machine.

It is also the reference the cluster must reproduce pixel for pixel, so it is
written as the same steps the cluster runs, with the same functions:

1. :func:`make_plan` decides everything before inference (tile plan, planes,
   output size and format) from the decoded image and the parameters.
2. :func:`plane_inputs` builds each plane's reflection-extended input; a plane
   is an RGB image the model sees: the colour, and the alpha channel (as gray
   RGB) unless it is opaque or ``skip_alpha`` asks for a plain resize.
3. :func:`infer_windows` runs a batch of equal windows through the engine and
   :func:`common.tiling.tile_core` crops each output to its integer core.
4. :func:`assemble` puts the planes together into the final pixels and resizes.

A job's work is numbered in *parts*, one tile of one plane each; the numbering
has one owner, :meth:`JobPlan.part` and its inverse :meth:`JobPlan.locate`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from common import groups, memory, tiling
from common.engines import Engine, get_engine
from common.errors import BadParameter, ImageTooLarge
from common.imageio import Image, decode, default_output_format, encode
from common.models import ModelSpec, Registry
from common.params import UpscaleParams
from common.settings import Settings

ALPHA_FLATTENED = (
    "the image has transparency and JPEG has none: transparent areas were flattened over "
    "white (#ffffff); ask for png or webp to keep them"
)
"""The note of a translucent input written as JPEG (see :data:`common.imageio.JPEG_BACKGROUND`)."""

Progress = Callable[[int, int], None]
"""Called with ``(done, total)`` tiles as work advances."""


@dataclass(frozen=True)
class JobPlan:
    """Everything decided before inference; JSON-serializable through :meth:`to_dict`.

    ``planes`` lists what the model infers: ``"color"`` always, ``"alpha"`` when the
    input has a non-opaque alpha channel and ``skip_alpha`` is off. The work is
    :attr:`part_count` parts, numbered by :meth:`part`, carried ``group`` at a time
    by the cluster's tasks (:meth:`group_parts`; see :mod:`common.groups`).
    """

    model: str
    model_scale: int
    width: int
    height: int
    channels: int
    dtype: str
    tile: int
    pad: int
    planes: tuple[str, ...]
    output_width: int
    output_height: int
    format: str
    group: int = 1
    notes: tuple[str, ...] = ()
    """What the caller should know about the result that it did not ask for, in words."""

    @cached_property
    def tiles(self) -> tiling.TilePlan:
        # a pure function of the fields; the instance is frozen, so compute it once
        return tiling.plan_tiles(self.width, self.height, self.tile, self.pad)

    @cached_property
    def column_origins(self) -> tuple[int, ...]:
        """Window x origins of the tile grid's columns (tiles are numbered row by row)."""
        first_row = self.tiles.tiles[0].window_y
        return tuple(t.window_x for t in self.tiles.tiles if t.window_y == first_row)

    @property
    def part_count(self) -> int:
        """Parts of the job: every tile of every plane."""
        return len(self.planes) * len(self.tiles)

    def part(self, plane: int, tile: tiling.Tile) -> int:
        """The number of ``tile`` of plane ``plane`` (an index into :attr:`planes`)."""
        return plane * len(self.tiles) + tile.index

    def locate(self, part: int) -> tuple[int, tiling.Tile]:
        """Inverse of :meth:`part`: ``(plane index, tile)`` of part ``part``.

        Raises:
            ValueError: no such part.
        """
        if not 0 <= part < self.part_count:
            raise ValueError(f"part {part} is not within 0..{self.part_count - 1}")
        plane, index = divmod(part, len(self.tiles))
        return plane, self.tiles.tiles[index]

    @property
    def group_count(self) -> int:
        """Tasks the cluster runs for this job: the parts, ``group`` at a time."""
        return -(-self.part_count // self.group)

    def group_parts(self, group: int) -> range:
        """The part numbers task ``group`` carries (consecutive; the last group may be short).

        Raises:
            ValueError: no such group.
        """
        if not 0 <= group < self.group_count:
            raise ValueError(f"group {group} is not within 0..{self.group_count - 1}")
        return range(group * self.group, min((group + 1) * self.group, self.part_count))

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(self.dtype)

    def plane_channels(self, plane: str) -> int:
        """Channels a plane's canvas keeps: 3 for colour, 1 for gray colour or alpha."""
        return 3 if plane == "color" and self.channels >= 3 else 1

    def to_dict(self) -> dict[str, Any]:
        # not asdict(): that would also carry the cached tile plan
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["planes"] = list(self.planes)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobPlan:
        return cls(
            **{**data, "planes": tuple(data["planes"]), "notes": tuple(data.get("notes", ()))}
        )


def _is_opaque(alpha: npt.NDArray[Any]) -> bool:
    return bool((alpha == np.iinfo(alpha.dtype).max).all())


def make_plan(
    image: Image,
    params: UpscaleParams,
    spec: ModelSpec,
    settings: Settings,
    workers: int = 1,
    *,
    engine: str = "ort-cpu",
    window_budget: int | None = None,
) -> JobPlan:
    """Decide tiles, planes, output size and format for ``image``.

    ``workers`` is the tile processes that will share the job; ``engine`` the
    memory key (:data:`common.memory.ENGINE_KEYS`) of what runs the windows and
    ``window_budget`` the bytes one window may take (default: this host's share,
    :func:`common.memory.inference_budget`). Auto tiles infer the fewest pixels
    within that budget (:func:`common.tiling.auto_tile_size`).

    Raises:
        ImageTooLarge: the upscaled or final image would exceed ``settings.max_output_pixels``.
        BadParameter: the parameters cannot apply to this image.
    """
    height, width = image.pixels.shape[:2]
    pad = spec.default_pad if params.tile_pad is None else params.tile_pad
    budget = memory.inference_budget() if window_budget is None else window_budget
    tile = params.tile_size or tiling.auto_tile_size(
        width,
        height,
        pad,
        spec.max_tile,
        workers,
        max_window_pixels=memory.window_pixel_limit(spec.window_memory(engine), budget),
    )
    translucent = image.has_alpha and not _is_opaque(image.pixels[..., 3])
    planes = ("color", "alpha") if translucent and not params.skip_alpha else ("color",)
    scale = spec.scale if params.scale is None else params.scale
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    if params.resize_to is not None:
        out_w, out_h = params.resize_to.apply(out_w, out_h)
    limit = settings.max_output_pixels
    for w, h in ((width * spec.scale, height * spec.scale), (out_w, out_h)):
        if w * h > limit:
            raise ImageTooLarge(
                f"the output would be {w}x{h}, over the limit of {limit} pixels",
                pixels=w * h,
                limit=limit,
            )
    fmt = params.format or default_output_format(image.format)
    if fmt not in ("png", "jpeg", "webp", "tiff"):
        raise BadParameter(f"cannot write {fmt}", parameter="format", value=fmt)
    notes = (ALPHA_FLATTENED,) if translucent and fmt == "jpeg" else ()
    plan = JobPlan(
        model=spec.name,
        model_scale=spec.scale,
        width=width,
        height=height,
        channels=image.channels,
        dtype=str(image.pixels.dtype),
        tile=tile,
        pad=pad,
        planes=planes,
        output_width=out_w,
        output_height=out_h,
        format=fmt,
        notes=notes,
    )
    if settings.parts_per_group > 0:
        group = settings.parts_per_group
    else:
        tiles = plan.tiles
        group = groups.group_size(
            plan.part_count,
            workers,
            tiles.window_width * tiles.window_height,
            spec.cpu_seconds_per_megapixel,
            settings.tile_time_limit,
        )
    return dataclasses.replace(plan, group=group)


def plane_inputs(pixels: npt.NDArray[Any], plan: JobPlan) -> list[npt.NDArray[Any]]:
    """Each plane's model input: (H + 2B, W + 2B, 3) reflection-extended, in the input's dtype."""
    planes = []
    for plane in plan.planes:
        if plane == "alpha":
            rgb = np.repeat(pixels[..., 3:4], 3, axis=2)
        elif pixels.shape[2] >= 3:
            rgb = pixels[..., :3]
        else:
            rgb = np.repeat(pixels[..., :1], 3, axis=2)
        planes.append(tiling.extend(rgb))
    return planes


def infer_windows(engine: Engine, windows: Sequence[npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
    """Run equal-shape integer windows ((h, w, 3) each) through the model as one batch.

    Returns float32 (N, 3, h*s, w*s), unclipped.
    """
    batch = tiling.to_unit_float(np.stack(windows))
    return engine.run(batch)


def assemble(
    plan: JobPlan,
    canvases: Sequence[npt.NDArray[Any]],
    alpha: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]:
    """Assemble the plane canvases into the final (H', W', C) pixels.

    ``alpha`` (the input's (H, W) alpha channel, see :func:`uninferred_alpha`) is
    needed only when the input has alpha that was not inferred (opaque or
    ``skip_alpha``): it is resized bilinearly, which rings less than Lanczos on
    hard mask edges.
    """
    color = canvases[0]
    model_h, model_w = color.shape[:2]
    if plan.channels == 4:
        if "alpha" in plan.planes:
            alpha = canvases[plan.planes.index("alpha")]
        else:
            if alpha is None:
                raise ValueError("assemble() needs the input alpha to resize it")
            alpha = cv2.resize(alpha, (model_w, model_h), interpolation=cv2.INTER_LINEAR)
        result = np.dstack([color, alpha.reshape(model_h, model_w, 1)])
    else:
        result = color
    if (plan.output_width, plan.output_height) != (model_w, model_h):
        shrinking = plan.output_width * plan.output_height < model_w * model_h
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
        channels = result.shape[2]
        result = cv2.resize(
            result, (plan.output_width, plan.output_height), interpolation=interpolation
        )
        result = result.reshape(plan.output_height, plan.output_width, channels)
    return result


def uninferred_alpha(pixels: npt.NDArray[Any], plan: JobPlan) -> npt.NDArray[Any] | None:
    """The input alpha that :func:`assemble` resizes, or ``None`` when the model infers it."""
    if plan.channels == 4 and "alpha" not in plan.planes:
        return np.ascontiguousarray(pixels[..., 3])
    return None


def run_plan(
    plan: JobPlan,
    pixels: npt.NDArray[Any],
    engine: Engine,
    *,
    batch: int = 1,
    progress: Progress | None = None,
) -> npt.NDArray[Any]:
    """Infer every tile of every plane of ``plan`` here and return the final pixels."""
    tiles = plan.tiles
    dtype = plan.numpy_dtype
    total = plan.part_count
    done = 0
    canvases = []
    for plane, extended in zip(plan.planes, plane_inputs(pixels, plan), strict=True):
        channels = plan.plane_channels(plane)
        canvas = tiling.Canvas(tiles, plan.model_scale, channels, dtype)
        for first in range(0, len(tiles), batch):
            group = tiles.tiles[first : first + batch]
            outputs = infer_windows(engine, [tiling.window(extended, tiles, t) for t in group])
            for tile, output in zip(group, outputs, strict=True):
                core = tiling.tile_core(tiles, tile, output, plan.model_scale, channels, dtype)
                canvas.paste(tile, core)
            done += len(group)
            if progress is not None:
                progress(done, total)
        canvases.append(canvas.pixels)
    return assemble(plan, canvases, uninferred_alpha(pixels, plan))


def upscale_image(
    image: Image,
    params: UpscaleParams,
    settings: Settings,
    *,
    registry: Registry | None = None,
    batch: int = 1,
    progress: Progress | None = None,
) -> tuple[npt.NDArray[Any], JobPlan]:
    """Upscale a decoded image on this machine; returns the final pixels and the plan used.

    Raises:
        UnknownModel, BadParameter, ImageTooLarge: see :func:`make_plan`.
    """
    registry = registry or Registry(settings)
    spec = registry.get(params.model)
    engine = get_engine(spec.name, settings)
    plan = make_plan(image, params, spec, settings, engine=memory_key(engine))
    return run_plan(plan, image.pixels, engine, batch=batch, progress=progress), plan


def memory_key(engine: Engine) -> str:
    """The :mod:`common.memory` key of what ``engine`` runs on."""
    if engine.provider in ("cuda", "tensorrt"):
        return f"ort-cuda-{engine.precision}"
    return "openvino-cpu" if engine.provider.startswith("openvino") else "ort-cpu"


def check_bytes(data: bytes, settings: Settings) -> None:
    """Refuse a file over ``settings.max_bytes`` before anything decodes it.

    Raises:
        ImageTooLarge: it is.
    """
    if len(data) > settings.max_bytes:
        raise ImageTooLarge(
            f"the file is {len(data)} bytes, over the limit of {settings.max_bytes}",
            bytes=len(data),
            limit=settings.max_bytes,
        )


def upscale_bytes(
    data: bytes,
    params: UpscaleParams,
    settings: Settings,
    *,
    registry: Registry | None = None,
    progress: Progress | None = None,
) -> tuple[bytes, JobPlan]:
    """Decode, upscale and encode one image file; ICC profile and EXIF are carried over.

    Raises:
        UnsupportedImage, ImageTooLarge: the bytes are not a usable image.
        UnknownModel, BadParameter: see :func:`make_plan`.
    """
    check_bytes(data, settings)
    image = decode(data, settings.max_pixels)
    pixels, plan = upscale_image(image, params, settings, registry=registry, progress=progress)
    return encode_result(pixels, plan, settings, icc=image.icc, exif=image.exif), plan


def encode_result(
    pixels: npt.NDArray[Any],
    plan: JobPlan,
    settings: Settings,
    *,
    icc: bytes | None,
    exif: bytes | None,
) -> bytes:
    """Encode a job's final pixels in its output format, at the configured qualities.

    Raises:
        BadParameter: see :func:`common.imageio.encode`.
    """
    return encode(
        pixels,
        plan.format,
        icc=icc,
        exif=exif,
        jpeg_quality=settings.jpeg_quality,
        webp_quality=settings.webp_quality,
    )


def whole_image(engine: Engine, rgb: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The tiling reference: the model on the whole reflection-extended image, cropped back.

    ``rgb`` is (H, W, 3) uint8/uint16; returns (H*s, W*s, 3) of the same dtype.
    """
    border = tiling.BORDER
    output = infer_windows(engine, [tiling.extend(rgb)])[0]
    s = engine.scale
    h, w = rgb.shape[:2]
    core = output[:, border * s : (border + h) * s, border * s : (border + w) * s]
    return tiling.from_unit_float(core, rgb.dtype)
