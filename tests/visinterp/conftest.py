"""Fixtures the job tests share: a report opened in headless Chromium, a notebook executed."""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def open_in_chromium():
    """open(path, script=None) -> {"images": [[complete, naturalWidth, alt]], "errors": SEVERE
    console entries, "title", "script": what `script` (JavaScript, with a return) gave}."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("needs Debian's chromium and chromium-driver (make test installs them where apt-get can)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    def open_page(path: Path, script: str | None = None) -> dict:
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-dev-shm-usage"):
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        browser = webdriver.Chrome(service=Service(driver_path), options=opts)
        try:
            browser.get(path.as_uri())
            # a 2 MB page of inline images can still be parsing when get() returns on a loaded machine:
            # wait for the whole document and every image, up to a minute
            WebDriverWait(browser, 60).until(lambda b: b.execute_script(
                "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete);"))
            return {"images": browser.execute_script(
                        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);"),
                    "errors": [e for e in browser.get_log("browser") if e["level"] == "SEVERE"],
                    "title": browser.title, "script": browser.execute_script(script) if script else None}
        finally:
            browser.quit()

    return open_page


@pytest.fixture
def run_notebook():
    """run(name, env_var, folder) -> the executed notebook (notebooks/NAME, with env_var=folder)."""
    import nbformat
    from nbclient import NotebookClient

    def run(name: str, env_var: str, folder: Path):
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        os.environ[env_var] = str(folder)
        try:
            NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
        finally:
            os.environ.pop(env_var)
        return nb

    return run


@pytest.fixture
def carry_start():
    """carry_start(sae_folder) -> (the first held-out evaluation's step at which the SAE carried,
    state L0 above L0 by 0.05 codes a position, or None; the run's last step), from the SAE's
    metrics.jsonl."""
    import json

    def start(sae_folder: Path) -> tuple[int | None, int]:
        evals = [json.loads(line) for line in (sae_folder / "metrics.jsonl").read_text().splitlines()]
        evals = [e for e in evals if e["split"] == "eval"]
        return next((e["step"] for e in evals if e["state_l0"] > e["l0"] + 0.05), None), evals[-1]["step"]

    return start
