"""krau/super-resolution-api as a peer: its own checkout, venv and server process.

Nothing of krau's code lives in this repository. :class:`KrauServer` starts
``<venv python> <checkout>/main.py`` in a scratch folder of its own, in its
default ``single`` mode, and talks to it over its HTTP API, the one srcluster
keeps.

How krau finds its model (read from its source, commit e37ecd1): ``common.py``
maps the form field ``model`` (default ``x4_Anime_6B-Official``) to the path
``models/x4_Anime_6B-Official.onnx``, relative to the working directory;
``onnx_infer.OnnxSRInfer`` opens it with ``ort.InferenceSession`` (a new session
for every request, intra-op threads left at ONNX Runtime's default, all cores)
and runs ``sess.run(["output"], {"input": x})`` on ``[1, 3, h, w]`` float32 in
[0, 1]. Our converted ``realesrgan-x4plus-anime`` ONNX has exactly those input
and output names and dynamic shapes, so a symlink named
``models/x4_Anime_6B-Official.onnx`` in the scratch folder is all it needs.
(The file in krau's repository is not stored there; its Docker image downloads it.)

Its settings come from ``settings.toml`` (whose committed ``mode`` is ``master``)
overridden by ``SRAPI_*`` variables; we set ``SRAPI_MODE=single`` (its documented
default) and leave its inference defaults alone: ``max_thread`` 8 tiles inferred
at once, tile pad 8 px, reflect padding to a multiple of 16, default
``tile_size`` 64 (max 128). Only its timeouts are raised, since its default
30 s would cut a 2-core x4plus-anime run short, and it gets a Redis of ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

MODEL_NAME = "x4_Anime_6B-Official"
"""krau's default model; the file it opens is ``models/<MODEL_NAME>.onnx``."""

REQUIRED_MODULES = (
    "fastapi", "uvicorn", "onnxruntime", "cv2", "numpy", "dynaconf",
    "loguru", "func_timeout", "redis", "httpx", "multipart",
)  # fmt: skip


def find_problem(checkout: Path | None, python: Path | None) -> str | None:
    """Why krau cannot run from ``checkout`` with ``python``, or ``None`` when it can."""
    if checkout is None:
        return "no krau checkout given (--krau DIR or SRCLUSTER_BENCH_KRAU)"
    for name in ("main.py", "onnx_infer.py", "common.py", "sr_queue.py"):
        if not (checkout / name).is_file():
            return f"{checkout} is not a krau/super-resolution-api checkout (no {name})"
    if python is None or not python.exists():
        return f"no Python for krau at {python} (--krau-python); see bench/compare.py's docstring"
    probe = subprocess.run(
        [str(python), "-c", "import " + ", ".join(REQUIRED_MODULES)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"krau's venv {python} lacks its requirements: {last}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KrauServer:
    """krau's server in ``single`` mode, serving our ONNX file as its default model."""

    def __init__(
        self,
        checkout: Path,
        python: Path,
        model_onnx: Path,
        redis_url: str,
        workdir: Path,
        token: str,
    ) -> None:
        self.token = token
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "krau.log"
        self._link = workdir / "models" / f"{MODEL_NAME}.onnx"
        self.use_model(model_onnx)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SRAPI_")}
        env.update(
            {
                "SRAPI_MODE": "single",
                "SRAPI_PROVIDER": "CPUExecutionProvider",
                "SRAPI_TOKEN": token,
                "SRAPI_REDIS_URL": redis_url,
                "SRAPI_HOST": "127.0.0.1",
                "SRAPI_PORT": str(self.port),
                "SRAPI_TEMP_DIR": str(workdir / "temp"),
                "SRAPI_OUTPUT_DIR": str(workdir / "output"),
                "SRAPI_LOG_LEVEL": "INFO",
                "SRAPI_TIMEOUT": "3000",
                "SRAPI_MAX_TIMEOUT": "3600",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.pop("PYTHONPATH", None)
        (workdir / "output").mkdir(exist_ok=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(python), str(checkout / "main.py")],
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def use_model(self, model_onnx: Path) -> None:
        """Serve ``model_onnx`` as krau's default model from the next request on.

        krau opens the file anew for every request, so relinking is enough.
        """
        target = model_onnx.resolve()
        if self._link.is_symlink() and self._link.resolve() == target:
            return
        self._link.parent.mkdir(parents=True, exist_ok=True)
        self._link.unlink(missing_ok=True)
        self._link.symlink_to(target)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 60) -> KrauServer:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"krau exited:\n{self._log_tail()}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(self.url + "/", headers={"X-Token": self.token}, timeout=2).ok:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"krau did not start in {timeout:.0f} s:\n{self._log_tail()}")
            time.sleep(0.2)

    def upscale(self, data: bytes, tile_size: int | None = None, timeout: float = 3000) -> bytes:
        """POST /sr, poll /result until success, download: the PNG bytes.

        ``tile_size`` None leaves krau's default (64).
        """
        form: dict[str, str] = {"timeout": str(int(timeout))}
        if tile_size is not None:
            form["tile_size"] = str(tile_size)
        headers = {"X-Token": self.token}
        reply = requests.post(
            self.url + "/sr",
            headers=headers,
            files={"file": ("photo.png", data, "image/png")},
            data=form,
            timeout=60,
        )
        reply.raise_for_status()
        task = reply.json()["task_id"]
        deadline = time.monotonic() + timeout
        while True:
            status = requests.get(f"{self.url}/result/{task}", headers=headers, timeout=30)
            # 404 until its queue thread picks the task up
            if status.ok:
                state = status.json()["result"]["status"]
                if state == "success":
                    break
                if state == "failed":
                    raise RuntimeError(f"krau failed the task:\n{self._log_tail()}")
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"krau gave no result:\n{self._log_tail()}")
            time.sleep(0.02)
        out = requests.get(f"{self.url}/result/{task}/download", headers=headers, timeout=60)
        out.raise_for_status()
        return out.content

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
