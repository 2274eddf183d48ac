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
from common.imageio import FORMATS, default_output_format
from common.models import Registry
from common.params import UpscaleParams, parse_params
from common.pipeline import upscale_bytes
from common.settings import Settings
from srcluster import models as commands_models
from srcluster import submit
from srcluster.options import (
    add_upscale_options,
    check_writable,
    output_name,
    read_upscale_options,
)

EXIT_USAGE = 2

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srcluster", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    upscale = commands.add_parser(
        "upscale",
        help="upscale an image or a folder of images on this machine",
        description="Upscale on this machine. realesrgan-ncnn-vulkan's habits hold: "
        "-i in.jpg -o out.png -n MODEL -s 4 -t 0 -f png.",
    )
    add_upscale_options(upscale)

    remote = commands.add_parser(
        "submit", help="upscale an image or a folder of images on a remote cluster"
    )
    add_upscale_options(remote)
    submit.add_arguments(remote)

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

    models = commands.add_parser(
        "models",
        help="list models, or register one with 'models add'",
        description="With SRCLUSTER_REDIS_URL set, the cluster's models: 'add' and 'rm' change "
        "them for every host. Without it, this host's.",
    )
    model_commands = models.add_subparsers(dest="models_command")
    add = model_commands.add_parser("add", help="register an ONNX super-resolution model")
    add.add_argument("name")
    add.add_argument("path", type=Path)
    add.add_argument("--description", default="", help="one line shown by GET /models")
    add.add_argument(
        "--replace", action="store_true", help="replace the model of that name if there is one"
    )
    rm = model_commands.add_parser("rm", help="delete a cluster model (SRCLUSTER_REDIS_URL)")
    rm.add_argument("name")
    return parser


def _upscale_one(
    source: Path,
    target: Path,
    params: UpscaleParams,
    settings: Settings,
    registry: Registry,
    quiet: bool,
    into_folder: bool,
) -> Path:
    """Upscale ``source`` into the file ``target``, or into the folder ``target``
    under :func:`~srcluster.options.output_name`."""
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
    path = target
    if into_folder:
        scale = round(plan.output_width / plan.width, 3)
        path = target / output_name(source, scale, params.resize_to is not None, plan.format)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded)
    for note in plan.notes:
        print(f"srcluster: note: {source.name}: {note}", file=sys.stderr)
    return path


def _images_in(folder: Path) -> list[Path]:
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise InputError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _check_names(files: list[Path], params: UpscaleParams, scale: float | None) -> None:
    """Refuse a folder run in which two inputs would write the same output (a.jpg, a.jpeg)."""
    seen: dict[str, Path] = {}
    for path in files:
        fmt = params.format or default_output_format(path.suffix)
        name = output_name(path, scale or 0, params.resize_to is not None, fmt)
        if name in seen:
            raise BadParameter(
                f"{seen[name].name} and {path.name} would both be written as {name}; "
                "rename one, or move it out of the folder",
                parameter="input",
            )
        seen[name] = path


def _cmd_upscale(args: argparse.Namespace, settings: Settings) -> int:
    request = read_upscale_options(args)
    params = parse_params(**request.fields)
    registry = Registry(settings)
    spec = registry.get(params.model)  # an unknown model fails before any file is read
    source = request.source
    if not source.exists():
        raise InputError(f"{source} does not exist")
    if not source.is_dir():
        into_folder = request.output is None or request.folder_output
        target = source.parent if request.output is None else Path(request.output)
        check_writable(target, folder=into_folder)
        written = _upscale_one(
            source, target, params, settings, registry, args.quiet, into_folder=into_folder
        )
        print(written)
        return 0
    files = _images_in(source)
    target = Path(request.output) if request.output else source.with_name(source.name + "_upscaled")
    if target.exists() and not target.is_dir():
        raise BadParameter(
            f"{target} is a file; a folder input needs a folder output", parameter="output"
        )
    check_writable(target, folder=True)
    # names depend on the scale only through the model's (resize_to names them "resized")
    _check_names(files, params, params.scale or spec.scale)
    target.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in tqdm(files, unit="image", disable=True if args.quiet else None):
        try:
            _upscale_one(path, target, params, settings, registry, quiet=True, into_folder=True)
        except InputError as error:
            failures += 1
            print(f"srcluster: {path.name}: {error.message}", file=sys.stderr)
    print(f"{len(files) - failures} of {len(files)} images written to {target}")
    return 0 if failures == 0 else 1


def _cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    if settings.redis_url:
        return commands_models.cluster_models(args, settings)
    registry = Registry(settings)
    if args.models_command == "add":
        spec = registry.add(
            args.name, args.path, description=args.description, replace=args.replace
        )
        print(f"registered {spec.name} on this host: x{spec.scale}")
        return 0
    if args.models_command == "rm":
        raise BadParameter(
            "models rm deletes a cluster model: set SRCLUSTER_REDIS_URL to the cluster's Redis",
            parameter="name",
        )
    return commands_models.print_models(registry)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "upscale":
            return _cmd_upscale(args, settings)
        if args.command == "submit":
            return submit.run(args, settings, images_in=_images_in, check_names=_check_names)
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
