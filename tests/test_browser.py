"""The web page and the docs page in a real headless Chromium, against a real cluster.

A person's path through ``/ui``: token, drop an image, options, Upscale (once,
however often it is clicked), the tiles' progress, the before/after slider by
keyboard and pointer, the download (the very bytes ``/download`` serves), the
jobs still there after a reload, a phone-sized screen, a cancel, and a file the
service refuses shown in the service's own words. ``/docs`` renders the served
OpenAPI description's operations. Neither page may trip its Content-Security-Policy.

Screenshots go to ``$SRCLUSTER_SCREENSHOTS`` when set (else a temporary folder).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from common.cluster.store import JobStore
from common.settings import Settings
from srcluster.client import Client, ServiceError
from tests import browser as chromium
from tests.cluster import ApiServer, wait_for
from tests.tokens import ALICE

pytest.importorskip(
    "selenium", reason="selenium comes with the test extras (pip install '.[test]')"
)
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

pytestmark = [pytest.mark.cluster, pytest.mark.browser, pytest.mark.slow]

COMPACT = "realesr-animevideov3"
X = "\u00d7"
"""The multiplication sign the page writes sizes with (``W x H`` with this sign)."""
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("SRCLUSTER_SCREENSHOTS")
    folder = Path(configured) if configured else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Any]:
    driver = chromium.start(downloads)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser: Any, api: ApiServer, worker: Any) -> Any:
    """``/ui`` with nothing remembered, the token typed in, the models listed."""
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.get(api.url + "/ui")
    browser.execute_script("localStorage.clear(); indexedDB.deleteDatabase('srcluster');")
    browser.get(api.url + "/ui")
    find(browser, "#token").send_keys(ALICE, Keys.TAB)  # leaving the field stores it, lists models
    wait_for(lambda: COMPACT in option_values(browser, "#model"), 20, "the model list")
    return browser


def find(where: Any, css: str) -> Any:
    """The element for ``css`` in ``where`` (the browser or an element)."""
    return where.find_element(By.CSS_SELECTOR, css)


def find_all(where: Any, css: str) -> list[Any]:
    return list(where.find_elements(By.CSS_SELECTOR, css))


def first(where: Any, css: str, what: str, timeout: float = 20) -> Any:
    """The first element for ``css``, once there is one."""
    return wait_for(lambda: find_all(where, css), timeout, what)[0]  # type: ignore[index]


def natural_width(browser: Any, img: Any) -> int:
    return int(browser.execute_script("return arguments[0].naturalWidth", img))


def option_values(browser: Any, css: str) -> list[str]:
    values: list[str] = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' option')].map((o) => o.value);", css
    )
    return values


def choose(browser: Any, css: str, value: str) -> None:
    Select(find(browser, css)).select_by_value(value)


def image_file(folder: Path, photo: np.ndarray, width: int, height: int) -> Path:
    path = folder / f"photo-{width}x{height}.png"
    resized = cv2.resize(photo, (width, height), interpolation=cv2.INTER_CUBIC)
    assert cv2.imwrite(str(path), cv2.cvtColor(resized, cv2.COLOR_RGB2BGR))
    return path


def job_card(browser: Any) -> Any:
    cards = find_all(browser, "#jobs .job")
    assert len(cards) == 1, f"{len(cards)} job cards"
    return cards[0]


def api_result(api: ApiServer, job_id: str) -> dict[str, Any]:
    with Client(api.url, ALICE, timeout=10) as client:
        return client.result(job_id)


def assert_csp_clean(browser: Any) -> None:
    errors = chromium.console_errors(browser)
    assert not [e for e in errors if "Content Security Policy" in e], errors


def drop_file(browser: Any, css: str, name: str, data: bytes, mime: str) -> None:
    """Drop a file on ``css`` as a person dragging it from their desktop would."""
    browser.execute_script(
        """const [target, name, base64, mime] = arguments;
           const raw = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
           const transfer = new DataTransfer();
           transfer.items.add(new File([raw], name, {type: mime}));
           const zone = document.querySelector(target);
           for (const type of ['dragenter', 'dragover', 'drop']) {
             zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true,
                                                     cancelable: true}));
           }""",
        css,
        name,
        base64.b64encode(data).decode(),
        mime,
    )


def no_sideways_scroll(browser: Any) -> bool:
    return bool(
        browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth;")
    )


def test_upload_progress_slider_download_another_reload(
    page: Any, api: ApiServer, photo: np.ndarray, tmp_path: Path, downloads: Path, shots: Path
) -> None:
    source = image_file(tmp_path, photo, 320, 240)
    choose(page, "#model", COMPACT)
    choose(page, "#format", "png")
    find(page, "#tile").send_keys("32")
    find(page, "#file").send_keys(str(source))
    wait_for(lambda: f"320 {X} 240 px" in find(page, "#preview-caption").text, 10, "the preview")
    assert f"1280 {X} 960 px" in find(page, "#preview-caption").text  # the output size it will have
    assert find(page, "#model-desc").text  # the model's one-line description

    ActionChains(page).double_click(find(page, "#go")).perform()
    card = first(page, "#jobs .job", "the job card")
    job_id = card.get_attribute("data-id")

    # follow the card's progress bar until the job is done
    seen: list[tuple[str, int, int]] = []
    deadline = time.monotonic() + 120
    while card.get_attribute("data-status") != "success":
        assert time.monotonic() < deadline, f"the job did not finish: {seen[-3:]}"
        assert card.get_attribute("data-status") in ("pending", "processing"), card.text
        bar = find(card, ".bar")
        value, top = bar.get_dom_attribute("value"), bar.get_dom_attribute("max")
        if value is not None and bar.is_displayed():  # no value: tile count not known yet
            seen.append((card.get_attribute("data-status"), int(value), int(top)))
        time.sleep(0.05)
    total = api_result(api, job_id)["progress"]["total"]
    assert total > 1
    assert seen and all(seen_total == total for _, _, seen_total in seen), seen
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)
    assert len(find_all(page, "#jobs .job")) == 1  # the double click sent one job
    assert find(page, "#go").get_attribute("disabled")  # and the same job cannot be sent again

    # the result: the output beside the input resized, its size and time
    wait_for(lambda: find(card, ".result").is_displayed(), 30, "the result")
    after = find(card, ".after")
    before = find(card, ".before")
    wait_for(lambda: natural_width(page, after), 10, "the output to show")
    assert natural_width(page, after) == 1280
    assert natural_width(page, before) == 320
    stats = find(card, ".stats").text
    assert f"1280 {X} 960 px" in stats and " s" in stats, stats

    # the slider: keyboard, then pointer
    slider = find(card, ".slider")
    slider.send_keys(*[Keys.ARROW_LEFT] * 10)
    assert slider.get_attribute("value") == "40"
    assert "60%" in before.value_of_css_property("clip-path"), before.value_of_css_property(
        "clip-path"
    )
    slider.send_keys(Keys.END)
    assert slider.get_attribute("value") == "100"
    width = slider.size["width"]
    ActionChains(page).move_to_element_with_offset(slider, -width // 4, 0).click().perform()
    assert 15 <= int(slider.get_attribute("value")) <= 35, slider.get_attribute("value")
    chromium.screenshot(page, shots / "ui-desktop.png")

    # actual pixels: one output pixel per CSS pixel, scrolled within the frame
    find(card, ".zoom").click()
    frame = find(card, ".frame")
    assert find(card, ".compare").size["width"] == 1280
    assert page.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", frame)
    find(card, ".zoom").click()

    # the download button saves what /download serves
    link = find(card, ".download")
    name = link.get_attribute("download")
    assert name == "photo-320x240_x4.png", name
    link.click()
    saved = downloads / name
    wait_for(saved.exists, 20, "the download")
    wait_for(lambda: not list(downloads.glob("*.crdownload")), 20, "the download to finish")
    with Client(api.url, ALICE) as client:
        assert saved.read_bytes() == client.download(job_id)
    assert_csp_clean(page)

    # another option makes another job, listed above the first
    choose(page, "#format", "webp")
    assert not find(page, "#go").get_attribute("disabled")
    find(page, "#go").click()
    wait_for(lambda: len(find_all(page, "#jobs .job")) == 2, 20, "the second job")
    second = find_all(page, "#jobs .job")[0]
    assert second.get_attribute("data-id") != job_id
    wait_for(lambda: second.get_attribute("data-status") == "success", 120, "the second job")
    assert find(second, ".download").get_attribute("download") == "photo-320x240_x4.webp"

    # a reload keeps both jobs, their results and their inputs (the before image)
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    page.refresh()
    wait_for(lambda: len(find_all(page, "#jobs .job")) == 2, 20, "the jobs after a reload")
    card = find_all(page, "#jobs .job")[1]
    assert card.get_attribute("data-id") == job_id
    assert card.get_attribute("data-status") == "success"
    wait_for(lambda: find(card, ".result").is_displayed(), 30, "result")
    before = find(card, ".before")
    wait_for(lambda: natural_width(page, before) == 320, 10, "the kept input")
    assert no_sideways_scroll(page)
    chromium.screenshot(page, shots / "ui-phone.png")
    assert_csp_clean(page)


def test_a_text_file_shows_the_service_message(page: Any, api: ApiServer, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    with Client(api.url, ALICE) as client, pytest.raises(ServiceError) as refused:
        client.submit(notes.read_bytes(), filename="notes.txt", model=COMPACT)
    refusal = refused.value
    assert refusal.status == 415
    drop_file(page, "#drop", "notes.txt", notes.read_bytes(), "text/plain")
    wait_for(lambda: "cannot show" in find(page, "#preview-caption").text, 10, "the preview note")
    choose(page, "#model", COMPACT)
    find(page, "#go").click()
    status = find(page, "#form-status")
    wait_for(lambda: refusal.message in status.text, 20, "the service's message")
    assert "415" in status.text and "error" in (status.get_attribute("class") or "")
    assert status.get_attribute("role") == "alert"
    assert not find_all(page, "#jobs .job")
    assert not find(page, "#go").get_attribute("disabled")  # it may be tried again


def test_a_failed_job_shows_why_after_a_reload(
    page: Any,
    api: ApiServer,
    cluster_settings: Settings,
    photo: np.ndarray,
    tmp_path: Path,
    shots: Path,
) -> None:
    """A job this browser sent before a reload is followed again, to its failure and reason."""
    source = image_file(tmp_path, photo, 960, 720)
    with Client(api.url, ALICE) as client:
        job_id = client.submit(
            source.read_bytes(), filename=source.name, model=COMPACT, tile_size=32
        )
    # a job estimated to overrun its timeout is refused at submit (422 job_too_long), so
    # this one is ended as the janitor ends a job that overran all the same
    store = JobStore.from_url(cluster_settings.redis_url, cluster_settings.result_ttl)
    try:
        assert store.fail(job_id, "timeout", "the job ran past its timeout")
    finally:
        store.close()
    kept = {
        "id": job_id,
        "name": source.name,
        "input": {"width": 960, "height": 720, "size": source.stat().st_size},
        "options": {"model": COMPACT, "tile_size": "32"},
        "submitted": 0,
        "status": "pending",
        "progress": {"done": 0, "total": 0},
    }
    page.execute_script(
        "localStorage.setItem('srcluster-jobs', JSON.stringify([arguments[0]]))", kept
    )
    page.refresh()
    card = first(page, "#jobs .job", "the kept job")
    wait_for(lambda: card.get_attribute("data-status") == "failed", 60, "the job to fail")
    error = api_result(api, job_id)["error"]
    assert error["code"] == "timeout"
    assert error["message"] in find(card, ".job-error").text
    assert find(card, ".badge").text == "failed"
    assert find(card, ".remove").is_displayed() and not find(card, ".cancel").is_displayed()
    chromium.screenshot(page, shots / "ui-desktop-failed.png")


def test_cancel_while_running(
    page: Any, api: ApiServer, photo: np.ndarray, tmp_path: Path, shots: Path
) -> None:
    source = image_file(tmp_path, photo, 960, 720)
    choose(page, "#model", COMPACT)
    find(page, "#tile").send_keys("32")
    find(page, "#file").send_keys(str(source))
    wait_for(lambda: f"960 {X} 720 px" in find(page, "#preview-caption").text, 10, "the preview")
    find(page, "#go").click()
    card = first(page, "#jobs .job", "the job card")
    cancel = find(card, ".cancel")
    wait_for(cancel.is_displayed, 10, "the cancel button")
    chromium.screenshot(page, shots / "ui-desktop-running.png")
    cancel.click()
    wait_for(lambda: card.get_attribute("data-status") == "cancelled", 20, "cancelled")
    assert api_result(api, card.get_attribute("data-id"))["status"] == "cancelled"
    assert not cancel.is_displayed()


def test_controls_are_labelled_and_usable_on_a_phone(page: Any, shots: Path) -> None:
    unlabelled = page.execute_script(
        """return [...document.querySelectorAll('input, select, button')]
             .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                             && !el.textContent.trim() && !el.closest('template'))
             .map((el) => el.outerHTML);"""
    )
    assert unlabelled == []
    # the policy really forbids inline script, and its violations are seen here
    page.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
        "document.body.append(s);"
    )
    assert page.execute_script("return window.ran") is None
    assert any("Content Security Policy" in e for e in chromium.console_errors(page))
    # a wrong token is told in the service's words
    find(page, "#token").clear()
    find(page, "#token").send_keys("not-a-token-of-this-service", Keys.TAB)
    status = find(page, "#form-status")
    wait_for(lambda: "token is not valid" in status.text, 10, "the token's refusal")
    assert "401" in status.text

    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    page.refresh()
    wait_for(lambda: find(page, "#go").is_displayed(), 10, "the page")
    assert no_sideways_scroll(page)
    go = find(page, "#go")
    assert go.size["width"] >= 300  # a full-width button, easy to hit
    assert_csp_clean(page)


def test_docs_page_renders_the_operations(browser: Any, api: ApiServer, shots: Path) -> None:
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.get(api.url + "/docs")
    wait_for(lambda: len(find_all(browser, ".opblock")) >= 5, 30, "swagger-ui's operations")
    paths = {e.text.replace("\u200b", "") for e in find_all(browser, ".opblock-summary-path")}
    assert {"/sr", "/result/{task_id}", "/result/{task_id}/download", "/healthz"} <= paths, paths
    chromium.screenshot(browser, shots / "docs-desktop.png")

    # "Try it out" reaches the API from the page (the CSP lets it talk to this origin)
    find(browser, ".btn.authorize").click()
    first(browser, ".modal-ux input", "the authorize dialog").send_keys(ALICE)
    find(browser, ".modal-ux .auth-btn-wrapper .authorize").click()
    find(browser, ".modal-ux .close-modal").click()
    find(browser, "#operations-default-info .opblock-summary").click()
    wait_for(lambda: find_all(browser, "#operations-default-info .try-out__btn"), 10, "try it out")
    find(browser, "#operations-default-info .try-out__btn").click()
    find(browser, "#operations-default-info .execute").click()
    live = "#operations-default-info .live-responses-table tbody"
    status = first(browser, live + " .response-col_status", "the live response")
    assert status.text.strip() == "200", status.text
    assert "srcluster is running" in find(browser, live + " .response-col_description").text
    assert_csp_clean(browser)
