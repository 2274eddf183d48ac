"""A real headless Chromium for the page tests: Debian's ``chromium`` and ``chromium-driver``.

When they are missing, :func:`chromium` installs them with apt-get if it can
(root and apt-get present: a clean CI machine of this kind), and otherwise skips
the test saying why. The browser is kept off the network: every host name but
127.0.0.1 resolves to nothing, and its background services are off.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

BINARY = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
PACKAGES = ("chromium", "chromium-driver")
INSTALL_TIMEOUT = 900
"""Seconds for apt-get update and install (a clean machine downloads about 100 MB)."""

FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the suite runs as root, where Chromium's sandbox refuses to start
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--no-first-run",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--lang=en-US",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def _missing() -> bool:
    return not (BINARY.exists() and DRIVER.exists())


def _cannot_install() -> str | None:
    """Why apt-get cannot install the packages here, or ``None`` if it can try."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available (not a Debian-like system)"
    if os.geteuid() != 0:
        return "installing them needs root (run: apt-get install chromium chromium-driver)"
    return None


def _install() -> str | None:
    """Install the packages; the error's text on failure."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
    )
    for step in steps:
        try:
            done = subprocess.run(
                step, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            return f"{' '.join(step)} took over {INSTALL_TIMEOUT} s"
        if done.returncode != 0:
            return f"{' '.join(step)} failed:\n{(done.stdout + done.stderr)[-2000:]}"
    return None


def chromium() -> tuple[Path, Path]:
    """The browser and its driver, installed first when missing and possible; else skip.

    An install that was possible but failed fails the test under CI (``CI`` set),
    where the browser test must run, and skips it elsewhere.
    """
    if _missing():
        reason = _cannot_install()
        if reason is not None:
            pytest.skip(f"no headless Chromium ({', '.join(PACKAGES)}): {reason}")
        error = _install()
        if error is not None or _missing():
            message = f"could not install {', '.join(PACKAGES)}: {error or 'files still missing'}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    return BINARY, DRIVER


def start(downloads: Path, width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium under chromedriver that saves downloads in ``downloads``."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (test extras)")
    binary, driver = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for flag in (*FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    service = webdriver.ChromeService(executable_path=str(driver))
    browser = webdriver.Chrome(options=options, service=service)
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    return browser


def console_errors(browser: Any) -> list[str]:
    """The console's error messages since the last call (CSP violations land here)."""
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(browser: Any, path: Path) -> None:
    """A PNG of the whole page, not only the part in the window."""
    size = browser.execute_script(
        "return [window.innerWidth, document.documentElement.scrollHeight];"
    )
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))
