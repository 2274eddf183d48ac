"""The ``srcluster`` command as a user runs it: real files, real process, exit codes and messages."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pytest

from common.settings import Settings
from tests.images import crafted_png

PHOTO = Path(__file__).parent / "data" / "photo.png"
ROOT = Path(__file__).resolve().parents[1]
COMPACT = "realesr-animevideov3"


def small_photo(path: Path, height: int = 16, width: int = 20) -> Path:
    """A crop of the test photo written to ``path`` (its extension picks the format)."""
    cv2.imwrite(str(path), cv2.imread(str(PHOTO))[:height, :width])
    return path


def srcluster(
    settings: Settings, *args: str | Path, data_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "SRCLUSTER_DATA_DIR": str(data_dir or settings.data_dir),
        "SRCLUSTER_THREADS": "2",
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "srcluster", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def animated_webp() -> bytes:
    frames = [PIL.Image.new("RGB", (8, 8), (60 * i, 0, 0)) for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:])
    return out.getvalue()


def test_upscale_a_file(settings: Settings, tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), cv2.imread(str(PHOTO))[:30, :40])
    result = srcluster(
        settings, "upscale", small, "-n", "realesr-animevideov3", "-s", "2", "-f", "webp"
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "small_x2.webp"
    assert Path(result.stdout.strip()) == out
    assert cv2.imread(str(out)).shape == (60, 80, 3)


def test_upscale_a_folder_names_outputs_stem_x_scale(settings: Settings, tmp_path: Path) -> None:
    """What README promises: a.png -> OUT/a_x4.png, b.jpg -> OUT/b_x4.jpg (each keeps its format)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        small_photo(folder / name)
    (folder / "notes.txt").write_text("not an image")
    result = srcluster(settings, "upscale", folder, "-o", tmp_path / "out", "-n", COMPACT)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x4.png", "b_x4.jpg"]
    assert (tmp_path / "out" / "b_x4.jpg").read_bytes().startswith(b"\xff\xd8")


def test_output_extension_sets_the_format(settings: Settings, tmp_path: Path) -> None:
    source = small_photo(tmp_path / "photo.jpg")
    for name, magic in (("photo_x4.png", b"\x89PNG"), ("photo_x4.webp", b"RIFF")):
        result = srcluster(settings, "upscale", source, "-o", tmp_path / name, "-n", COMPACT)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / name).read_bytes().startswith(magic), name


def test_ncnn_vulkan_style_command_line(settings: Settings, tmp_path: Path) -> None:
    """``-i in.jpg -o out.png -n realesr-animevideov3 -s 2 -t 0 -f png``: -t 0 is auto, and
    -s 2 runs the x2 network (as realesrgan-ncnn-vulkan does), not x4 then a resize."""
    source = small_photo(tmp_path / "in.jpg")
    out = tmp_path / "out.png"
    args = ["-i", source, "-o", out, "-n", COMPACT, "-s", "2", "-t", "0", "-f", "png"]
    result = srcluster(settings, "upscale", *args)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == out
    assert cv2.imread(str(out)).shape == (32, 40, 3)
    x2 = tmp_path / "x2.png"
    assert srcluster(settings, "upscale", source, "-o", x2, "-n", f"{COMPACT}-x2").returncode == 0
    assert out.read_bytes() == x2.read_bytes()


def test_translucent_to_jpeg_prints_a_note(settings: Settings, tmp_path: Path) -> None:
    rgba = np.dstack([cv2.imread(str(PHOTO))[:16, :20], np.full((16, 20), 255, np.uint8)])
    rgba[:, :5, 3] = 0
    source = tmp_path / "logo.png"
    cv2.imwrite(str(source), rgba)
    result = srcluster(settings, "upscale", source, "-o", tmp_path / "logo.jpg", "-n", COMPACT)
    assert result.returncode == 0, result.stderr
    assert "srcluster: note: logo.png:" in result.stderr and "white" in result.stderr
    assert (cv2.imread(str(tmp_path / "logo.jpg"))[:, :16] > 245).all()


@pytest.mark.parametrize(
    ("output", "extra", "message"),
    [
        ("out.png", ["-f", "jpg"], "-f asks for jpeg"),
        ("out.gif", [], ".gif is not an image extension"),
        ("out.bmp", [], "does not write bmp"),
        ("a-file/out.png", [], "a-file is a file, not a folder"),
        ("/proc/self/out.png", [], "cannot write /proc/self/out.png"),
    ],
)
def test_bad_output_is_refused_before_inference(
    settings: Settings, tmp_path: Path, output: str, extra: list[str], message: str
) -> None:
    """One line, exit 2, nothing written, and no model even converted (a fresh model cache
    stays empty): the refusal came before any inference."""
    source = small_photo(tmp_path / "in.png")
    (tmp_path / "a-file").write_text("in the way")
    before = sorted(tmp_path.rglob("*"))
    fresh = tmp_path / "fresh-data"
    target = output if output.startswith("/") else tmp_path / output
    result = srcluster(
        settings, "upscale", source, "-o", target, "-n", COMPACT, *extra, data_dir=fresh
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("srcluster: error:") and len(result.stderr.splitlines()) == 1
    assert message in result.stderr, result.stderr
    assert sorted(p for p in tmp_path.rglob("*") if fresh not in p.parents and p != fresh) == before
    assert not list(fresh.rglob("*.onnx")), "nothing was inferred"


def test_folder_outputs_that_would_collide_are_refused(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.jpg", "a.jpeg"):
        small_photo(folder / name)
    result = srcluster(settings, "upscale", folder, "-o", tmp_path / "out", "-n", COMPACT)
    assert result.returncode == 2
    assert "a.jpeg and a.jpg would both be written as a_x4.jpg" in result.stderr
    assert not (tmp_path / "out").exists()


def test_models_lists_and_adds(settings: Settings, tmp_path: Path) -> None:
    listed = srcluster(settings, "models")
    assert listed.returncode == 0
    for name in ("realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3"):
        assert name in listed.stdout
    from common.models import Registry

    onnx_file = Registry(settings).onnx_path("realesr-animevideov3-x2")
    added = srcluster(settings, "models", "add", "mine", onnx_file)
    assert added.returncode == 0, added.stderr
    assert "x2" in added.stdout
    assert "mine" in srcluster(settings, "models").stdout


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("text", [], "not a supported image"),
        ("empty", [], "empty"),
        ("truncated", [], "truncated"),
        ("missing", [], "does not exist"),
        ("photo", ["-n", "no-such-model"], "no-such-model"),
        ("photo", ["-s", "9"], "scale"),
        ("photo", ["-s", "1"], "scale"),
        ("photo", ["-t", "99999"], "tile_size"),
        ("photo", ["--resize-to", "abc"], "resize_to"),
        ("photo", ["-f", "gif"], "format"),
        ("huge", [], "limit"),
        ("animated", [], "still images only"),
        ("photo", ["-i", "other.png"], "two inputs"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    settings: Settings, tmp_path: Path, setup, args, message
) -> None:
    path = tmp_path / "input.png"
    data = PHOTO.read_bytes()
    content = {
        "text": b"hello, I am text",
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "photo": data,
        "huge": crafted_png(100000, 100000),
        "animated": animated_webp(),
    }.get(setup)
    if content is not None:
        path.write_bytes(content)
    result = srcluster(settings, "upscale", path, "-n", "realesr-animevideov3", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr.lower() or message in result.stderr
    assert result.stderr.startswith("srcluster: error:")
