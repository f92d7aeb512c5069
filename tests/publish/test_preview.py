"""The preview: a seeded stratified sample written as static pages, checked in a real headless Chromium.

The browser test drives Debian's chromium over the DevTools protocol (a websocket, with
the websocket-client package): no console errors, every sampled image decodes, the task
filter changes what is shown. It skips only outside CI when chromium is missing.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from crispedit.cli import main
from crispedit.publish.preview import stratified_sample, write_preview
from tests.helpers.recipes import REPO

SCREENSHOT = REPO / "docs" / "img" / "preview.png"


@pytest.fixture
def build(quickstart_dataset: Path, tmp_path: Path) -> Path:
    out = tmp_path / "build"
    shutil.copytree(quickstart_dataset, out, ignore=shutil.ignore_patterns("preview", ".cache"))
    return out


def _data(folder: Path) -> dict[str, Any]:
    text = (folder / "data.js").read_text(encoding="utf-8")
    return json.loads(text.removeprefix("window.CRISPEDIT_PREVIEW = ").rstrip().rstrip(";"))


def test_stratified_sample_is_seeded_and_reaches_every_stratum() -> None:
    tasks = ["color"] * 90 + ["style"] * 8 + ["tone"] * 2
    table = pa.table({"task": tasks, "branch": ["classical"] * 100})
    first = stratified_sample(table, 12, seed=3)
    assert first == stratified_sample(table, 12, seed=3)
    assert first != stratified_sample(table, 12, seed=4)
    counts = Counter(tasks[i] for i in first)
    assert counts == {"color": 5, "style": 5, "tone": 2}  # round robin: the rare task is not drowned
    assert len(stratified_sample(table, 1000, seed=0)) == 100


def test_preview_files(build: Path) -> None:
    assert main(["preview", str(build), "--pairs", "9"]) == 0
    folder = build / "preview"
    data = _data(folder)
    assert len(data["pairs"]) == 9 and data["complete"] is True
    assert {p["task"] for p in data["pairs"]} >= {"color", "style", "tone"}
    assert data["thresholds"] == {"pixel_l1": [0.01, 0.9]}
    for entry in data["pairs"]:
        for relative in entry["images"].values():
            assert (folder / relative).read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG thumbnails, as files
        assert entry["provenance"]["recipe"] == "quickstart"
    assert data["reject_groups"] and data["reject_groups"][0]["examples"]
    assert [p["file"] for p in data["plots"]] == ["plots/hist-pixel_l1.png", "plots/survival-pixel_l1.png"]  # crispedit report's curve too
    assert {s["stage"] for s in data["summary"]["stages"]} >= {"source", "pixel_change"}
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 2_000_000
    # a second run replaces the pages instead of accumulating thumbnails
    write_preview(build, pairs=3)
    assert len(list((folder / "img").glob("*-source.jpg"))) == 3


# --- the browser ------------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class DevTools:
    """Just enough of the Chrome DevTools protocol: commands by id, events kept for later."""

    def __init__(self, url: str) -> None:
        import websocket

        self.socket = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event
            self.events.append(json.loads(self.socket.recv()))
        raise TimeoutError(method)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(json.dumps(result["exceptionDetails"]))
        return result["result"].get("value")

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(json.dumps(params.get("args", []))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(params["entry"].get("text", "")[:500])
        return found

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def browser(tmp_path: Path):
    binary = _chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI (.ci/run installs it with apt-get)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    profile = tmp_path / "chromium-profile"
    process = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--remote-allow-origins=*", "--window-size=1280,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        client = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            client.send(f"{domain}.enable")
        yield client
        client.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _open(client: DevTools, path: Path) -> None:
    client.events.clear()
    client.send("Page.navigate", url=path.resolve().as_uri())
    client.wait_for("Page.loadEventFired")


IMAGES_LOADED = """
Promise.all([...document.images].map(img => img.complete ? null : new Promise(r => { img.onload = img.onerror = r; })))
  .then(() => [...document.images].map(img => [img.getAttribute('src'), img.naturalWidth]))
"""

VISIBLE = "[...document.querySelectorAll('article.pair')].filter(n => !n.classList.contains('hidden')).map(n => n.dataset.task)"


@pytest.mark.slow
def test_preview_in_headless_chromium(build: Path, browser: DevTools, tmp_path: Path) -> None:
    result = write_preview(build, pairs=12, seed=0)
    data = _data(result.folder)

    _open(browser, result.folder / "index.html")
    images = browser.evaluate(IMAGES_LOADED)
    expected = sum(len(p["images"]) for p in data["pairs"])
    assert len(images) == expected > 0
    assert [src for src, width in images if not width > 0] == []  # every sampled image decodes
    before = browser.evaluate(VISIBLE)
    assert len(before) == len(data["pairs"])
    task = Counter(before).most_common()[-1][0]  # the rarest task in the sample
    browser.evaluate(f"""(() => {{ const s = document.getElementById('filter-task'); s.value = {json.dumps(task)};
                       s.dispatchEvent(new Event('change', {{bubbles: true}})); }})()""")
    after = browser.evaluate(VISIBLE)
    assert after and set(after) == {task} and len(after) < len(before)
    assert browser.evaluate("document.getElementById('count').textContent") == f"showing {len(after)} of {len(before)}"
    browser.evaluate("document.querySelector('button.prov').click()")
    provenance = json.loads(browser.evaluate("document.querySelector('pre.provenance').textContent"))
    assert provenance["recipe"] == "quickstart"
    assert browser.errors() == []

    # the screenshot for docs/publish.md: the unfiltered pairs page
    browser.evaluate("""(() => { const s = document.getElementById('filter-task'); s.value = '';
                     s.dispatchEvent(new Event('change', {bubbles: true})); document.querySelector('pre.provenance').remove(); })()""")
    shot = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    (tmp_path / "preview.png").write_bytes(shot)
    if os.environ.get("CRISPEDIT_UPDATE_SCREENSHOTS"):  # refresh the picture in docs/publish.md on purpose only
        SCREENSHOT.write_bytes(shot)

    for page in ("rejects.html", "summary.html"):
        _open(browser, result.folder / page)
        images = browser.evaluate(IMAGES_LOADED)
        assert [src for src, width in images if not width > 0] == [], page
        assert browser.errors() == [], page
    assert browser.evaluate("document.querySelectorAll('#summary-table tr').length") == len(data["summary"]["stages"]) + 1
