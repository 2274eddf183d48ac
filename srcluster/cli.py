"""``srcluster``: upscale images on this machine and manage models.

Every user mistake (bad file, bad parameter, unknown model) ends with one line
on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from common.errors import BadParameter, InputError, SrclusterError
from common.imageio import FORMATS, extension
from common.models import DEFAULT_MODEL, Registry
from common.params import UpscaleParams, parse_params
from common.pipeline import upscale_bytes
from common.settings import Settings
from srcluster import submit

EXIT_USAGE = 2

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srcluster", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser(
        "upscale", help="upscale an image or a folder of images on this machine"
    )
    up.add_argument("input", type=Path, help="an image file, or a folder of them")
    up.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output file (or folder for a folder input); default: NAME_xS.EXT beside the input",
    )
    _upscale_options(up)

    remote = commands.add_parser(
        "submit", help="upscale an image or a folder of images on a remote cluster"
    )
    submit.add_arguments(remote)
    _upscale_options(remote)

    cluster = commands.add_parser(
        "up", help="run Redis, a worker, the API and Flower on this machine"
    )
    cluster.add_argument(
        "-c",
        "--processes",
        type=int,
        default=1,
        help="worker processes (each gets cores/processes inference threads)",
    )
    cluster.add_argument(
        "-p", "--port", type=int, help="API port (default $SRCLUSTER_API_PORT or 8000)"
    )
    cluster.add_argument("--no-flower", action="store_true", help="do not start Flower")

    models = commands.add_parser("models", help="list models, or register one with 'models add'")
    model_commands = models.add_subparsers(dest="models_command")
    add = model_commands.add_parser("add", help="register an ONNX super-resolution model")
    add.add_argument("name")
    add.add_argument("path", type=Path)
    return parser


def _upscale_options(up: argparse.ArgumentParser) -> None:
    """The options ``upscale`` and ``submit`` share (the API's fields)."""
    up.add_argument(
        "-n", "--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})"
    )
    up.add_argument("-s", "--scale", help="output scale, 2..8 (default: the model's)")
    up.add_argument(
        "--resize-to", help="final size WxH (0 keeps the aspect) or a ratio such as 1/2"
    )
    up.add_argument("-t", "--tile-size", help="tile side in input px, 32..1024 (default: auto)")
    up.add_argument("--tile-pad", help="context px around each tile (default: the model's)")
    up.add_argument(
        "--skip-alpha", action="store_true", help="resize the alpha channel instead of inferring it"
    )
    up.add_argument("-f", "--format", help="png, jpg, webp or tiff (default: the input's)")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _output_path(
    source: Path, output: Path | None, params: UpscaleParams, scale: float, fmt: str
) -> Path:
    if output is not None and not output.is_dir():
        return output
    folder = output if output is not None else source.parent
    suffix = f"x{scale:g}" if params.resize_to is None else "resized"
    return folder / f"{source.stem}_{suffix}{extension(fmt)}"


def _upscale_one(
    source: Path,
    target: Path | None,
    params: UpscaleParams,
    settings: Settings,
    registry: Registry,
    quiet: bool,
) -> Path:
    data = source.read_bytes()
    bar: tqdm[None] | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if quiet or total < 2:
            return
        if bar is None:
            bar = tqdm(total=total, unit="tile", desc=source.name, leave=False, disable=None)
        bar.update(done - bar.n)

    try:
        encoded, plan = upscale_bytes(data, params, settings, registry=registry, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    scale = plan.output_width / plan.width
    path = _output_path(source, target, params, round(scale, 3), plan.format)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded)
    return path


def _cmd_upscale(args: argparse.Namespace, settings: Settings) -> int:
    params = parse_params(
        model=args.model,
        scale=args.scale,
        tile_size=args.tile_size,
        tile_pad=args.tile_pad,
        skip_alpha=args.skip_alpha,
        resize_to=args.resize_to,
        format=args.format,
    )
    registry = Registry(settings)
    registry.get(params.model)  # an unknown model fails before any file is read
    source: Path = args.input
    if not source.exists():
        raise InputError(f"{source} does not exist")
    if not source.is_dir():
        written = _upscale_one(source, args.output, params, settings, registry, args.quiet)
        print(written)
        return 0
    files = sorted(
        p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise InputError(f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    target = args.output or source.with_name(source.name + "_upscaled")
    if target.exists() and not target.is_dir():
        raise BadParameter(
            f"{target} is a file; a folder input needs a folder output", parameter="output"
        )
    target.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in tqdm(files, unit="image", disable=True if args.quiet else None):
        try:
            _upscale_one(path, target, params, settings, registry, quiet=True)
        except InputError as error:
            failures += 1
            print(f"srcluster: {path.name}: {error.message}", file=sys.stderr)
    print(f"{len(files) - failures} of {len(files)} images written to {target}")
    return 0 if failures == 0 else 1


def _cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    registry = Registry(settings)
    if args.models_command == "add":
        spec = registry.add(args.name, args.path)
        print(f"registered {spec.name}: x{spec.scale}")
        return 0
    print(f"{'name':28} {'scale':>5} {'source':8} {'pad':>4} {'tile':>5}  onnx")
    for spec in registry.specs():
        cached = "cached" if registry.is_cached(spec.name) else "converted on first use"
        print(
            f"{spec.name:28} {spec.scale:>5} {spec.source:8} {spec.default_pad:>4} {spec.max_tile:>5}  {cached}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "upscale":
            return _cmd_upscale(args, settings)
        if args.command == "submit":
            return submit.run(
                args, settings, output_path=_output_path, image_suffixes=IMAGE_SUFFIXES
            )
        if args.command == "up":
            from srcluster.up import up

            return up(settings, processes=args.processes, flower=not args.no_flower, port=args.port)
        return _cmd_models(args, settings)
    except SrclusterError as error:
        print(f"srcluster: error: {error.message}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(
            f"srcluster: error: {error.strerror or error}: {error.filename or ''}".rstrip(": "),
            file=sys.stderr,
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


__all__ = ["FORMATS", "main"]
