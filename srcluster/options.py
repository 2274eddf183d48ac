"""The upscale options ``srcluster upscale`` and ``srcluster submit`` share, and what they mean.

They follow realesrgan-ncnn-vulkan's habits, so its users can type
``-i in.jpg -o out.png -n realesrgan-x4plus -s 4 -t 0 -f png``:

- the input is ``-i/--input`` or the positional argument (one of them);
- the output format is ``-f`` when given, else ``-o``'s extension, else the
  input's (png for bmp). An ``-o`` extension naming another format than ``-f``
  is an error (realesrgan-ncnn-vulkan silently takes the extension), and so is
  one that names no format we write, unless ``-f`` says which;
- ``-t 0`` is the automatic tile size, as there;
- ``-n realesr-animevideov3 -s 2`` (or ``-s 3``) runs that model's own x2 (x3)
  network, as there; any other scale runs the model and resizes its output;
- an output that cannot be written is refused before anything is inferred.

Every mistake raises :class:`~common.errors.BadParameter` naming the option, so
the CLI prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import BadParameter
from common.imageio import OUTPUT_FORMATS, extension, normalize_format
from common.models import DEFAULT_MODEL

COMPACT_FAMILY = "realesr-animevideov3"
"""The model whose x2 and x3 networks ``-s 2`` / ``-s 3`` pick, as in realesrgan-ncnn-vulkan."""

AUTO_TILE = ("0", "auto")
"""``-t`` values meaning "choose the tile size" (realesrgan-ncnn-vulkan's 0)."""


def add_upscale_options(parser: argparse.ArgumentParser) -> None:
    """Add the input, output and upscale options to ``parser`` (see the module docstring)."""
    parser.add_argument(
        "input", nargs="?", type=Path, help="an image file, or a folder of them (or use -i)"
    )
    parser.add_argument(
        "-i", "--input", dest="input_option", type=Path, metavar="INPUT", help="same as INPUT"
    )
    parser.add_argument(
        "-o",
        "--output",
        help="output file, or folder (for a folder input, or ending in /); its extension sets "
        "the format; default: NAME_xS.EXT beside the input",
    )
    parser.add_argument(
        "-n", "--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})"
    )
    parser.add_argument("-s", "--scale", help="output scale, 2..8 (default: the model's)")
    parser.add_argument(
        "--resize-to", help="final size WxH (0 keeps the aspect) or a ratio such as 1/2"
    )
    parser.add_argument(
        "-t", "--tile-size", help="tile side in input px, 32..1024, or 0 = auto (default)"
    )
    parser.add_argument("--tile-pad", help="context px around each tile (default: the model's)")
    parser.add_argument(
        "--skip-alpha", action="store_true", help="resize the alpha channel instead of inferring it"
    )
    parser.add_argument(
        "-f",
        "--format",
        help="png, jpg, webp or tiff (default: -o's extension, else the input's)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


@dataclass(frozen=True)
class UpscaleRequest:
    """What the options ask for: the input, the raw ``-o``, and the fields of one upscale.

    ``fields`` are named as :func:`common.params.parse_params`'s arguments and the API's
    form fields (``model``, ``scale``, ``tile_size``, ``tile_pad``, ``skip_alpha``,
    ``resize_to``, ``format``); ``None`` means "the default".
    """

    source: Path
    output: str | None
    fields: dict[str, Any]

    @property
    def folder_output(self) -> bool:
        """Whether ``-o`` names a folder: the input is one, or ``-o`` is one or ends in a slash."""
        if self.source.is_dir():
            return True
        return self.output is not None and (
            self.output.endswith(("/", os.sep)) or Path(self.output).is_dir()
        )


def read_upscale_options(args: argparse.Namespace) -> UpscaleRequest:
    """The request the parsed options make.

    Raises:
        BadParameter: no input or two different ones, a ``-o``/``-f`` clash, an ``-o``
            extension that names no writable format, or a malformed ``-f``.
    """
    given = [p for p in (args.input, args.input_option) if p is not None]
    if not given:
        raise BadParameter("give an input: srcluster upscale IN, or -i IN", parameter="input")
    if len(given) == 2 and given[0] != given[1]:
        raise BadParameter(
            f"two inputs given ({given[0]} and -i {given[1]}); give one", parameter="input"
        )
    model, scale = _native_scale(args.model, args.scale)
    tile = args.tile_size
    if tile is not None and tile.strip().lower() in AUTO_TILE:
        tile = None
    request = UpscaleRequest(given[0], args.output, {})
    fmt = output_format(None if request.folder_output else args.output, args.format)
    request.fields.update(
        model=model,
        scale=scale,
        tile_size=tile,
        tile_pad=args.tile_pad,
        skip_alpha=bool(args.skip_alpha),
        resize_to=args.resize_to,
        format=fmt,
    )
    return request


def _native_scale(model: str, scale: str | None) -> tuple[str, str | None]:
    """``realesr-animevideov3`` at scale 2 or 3 is its own x2/x3 network, as in ncnn-vulkan."""
    if model.strip() == COMPACT_FAMILY and scale is not None:
        try:
            value = float(scale)
        except ValueError:
            return model, scale  # parse_params names the mistake
        if value in (2.0, 3.0):
            return f"{COMPACT_FAMILY}-x{value:g}", None
    return model, scale


def output_format(output: str | None, fmt: str | None) -> str | None:
    """The format to write to the file ``output``: ``fmt``, else the extension's, else ``None``
    (the input's).

    Raises:
        BadParameter: ``fmt`` is malformed; the extension names a format other than ``fmt``,
            or (without ``fmt``) one we do not write or none at all.
    """
    explicit = normalize_format(fmt) if fmt is not None and fmt.strip() else None
    suffix = Path(output).suffix if output is not None else ""
    if not suffix:
        return explicit
    try:
        implied = normalize_format(suffix)
    except BadParameter:
        if explicit is not None:
            return explicit  # -o out.dat -f png: the explicit format, in that file
        raise BadParameter(
            f"-o {output}: {suffix} is not an image extension; use .png, .jpg, .webp or .tif, "
            "or give -f",
            parameter="output",
        ) from None
    if implied not in OUTPUT_FORMATS:
        raise BadParameter(
            f"-o {output}: srcluster does not write {implied}; use .png, .jpg, .webp or .tif",
            parameter="output",
        )
    if explicit is not None and explicit != implied:
        raise BadParameter(
            f"-o {output} is a {implied} name but -f asks for {explicit}; "
            "drop one of them or make them agree",
            parameter="format",
        )
    return implied


def output_name(source: Path, scale: float, resized: bool, fmt: str) -> str:
    """The name of ``source``'s result in a folder: ``NAME_x4.png`` (``NAME_resized.png`` with
    ``--resize-to``), the extension that of ``fmt``."""
    suffix = "resized" if resized else f"x{scale:g}"
    return f"{source.stem}_{suffix}{extension(fmt)}"


def check_writable(target: Path, *, folder: bool = False) -> None:
    """Refuse ``target`` unless a file can be written there, or (``folder``) files can be
    written inside it; folders that do not exist yet may be made.

    Creates nothing that stays: the nearest existing folder is probed with a
    temporary file, removed at once, so permissions, read-only mounts and a
    file in the way of a folder are all found before any inference.

    Raises:
        BadParameter: ``target`` is a folder where a file was meant (or a file where a
            folder was), an existing file we may not write, or lies under a path that
            is not a writable folder (``parameter`` is ``output``).
    """
    if not folder and target.is_dir():
        raise BadParameter(f"{target} is a folder, not a file", parameter="output")
    if folder and target.exists() and not target.is_dir():
        raise BadParameter(f"{target} is a file, not a folder", parameter="output")
    if not folder and target.exists() and not os.access(target, os.W_OK):
        raise BadParameter(f"cannot write {target}: permission denied", parameter="output")
    place = target if folder else target.parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise BadParameter(
            f"cannot write {target}: {place} is a file, not a folder", parameter="output"
        )
    try:
        with tempfile.TemporaryFile(dir=place):
            pass
    except OSError as error:
        raise BadParameter(
            f"cannot write {target}: {error.strerror or error} in {place}", parameter="output"
        ) from None
