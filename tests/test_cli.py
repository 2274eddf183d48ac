"""The ``srcluster`` command as a user runs it: real files, real process, exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from common.settings import Settings
from tests.images import crafted_png

PHOTO = Path(__file__).parent / "data" / "photo.png"


def srcluster(settings: Settings, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {
        "SRCLUSTER_DATA_DIR": str(settings.data_dir),
        "SRCLUSTER_THREADS": "2",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, "-m", "srcluster", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


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


def test_upscale_a_folder_keeps_names(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        cv2.imwrite(str(folder / name), cv2.imread(str(PHOTO))[:16, :20])
    (folder / "notes.txt").write_text("not an image")
    result = srcluster(
        settings, "upscale", folder, "-o", tmp_path / "out", "-n", "realesr-animevideov3"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x4.png", "b_x4.jpg"]


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
    }.get(setup)
    if content is not None:
        path.write_bytes(content)
    result = srcluster(settings, "upscale", path, "-n", "realesr-animevideov3", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr.lower() or message in result.stderr
    assert result.stderr.startswith("srcluster: error:")
