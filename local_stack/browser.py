"""Headless Chromium for the UI's browser tests (``tests/e2e/test_ui_browser.py``).

Debian's ``chromium`` and its matching ``chromium-driver`` (same version, built together) are
used instead of a browser that Selenium Manager or Playwright would download: the machines this
project runs on reach the package registries only. :func:`ensure_chromium` installs the two
packages with ``apt-get`` when they are missing and we are root (a fresh CI machine); otherwise it
raises with the command to run, so that a missing browser fails the tests instead of skipping
them.

``python -m local_stack.browser`` installs them (what a developer runs once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

PACKAGES = ("chromium", "chromium-driver")
INSTALL = "apt-get update && apt-get install -y " + " ".join(PACKAGES)


@dataclass(frozen=True)
class Chromium:
    """Where the browser and its WebDriver are."""

    browser: Path
    driver: Path


def _find() -> Chromium | None:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return Chromium(Path(browser), Path(driver)) if browser and driver else None


def ensure_chromium() -> Chromium:
    """The installed Chromium and chromedriver; installs Debian's packages first when they are
    missing and this process may (root with ``apt-get``). Raises ``RuntimeError`` otherwise."""
    if found := _find():
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            "Chromium and chromedriver are needed for the UI's browser tests and are not "
            f"installed; on Debian or Ubuntu run as root: {INSTALL}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", *PACKAGES]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    if found := _find():
        return found
    raise RuntimeError(f"installed {' '.join(PACKAGES)} but found no chromium and chromedriver")


def start(width: int = 1440, height: int = 1000) -> webdriver.Chrome:
    """A headless Chromium session with a window of ``width`` x ``height`` (screenshot size)."""
    chromium = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium.browser)
    for argument in (
        "--headless=new",
        f"--window-size={width},{height}",
        # As root (CI) Chromium refuses to start with its sandbox; /dev/shm may be small.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    # The explicit driver path keeps Selenium Manager from trying to download one.
    return webdriver.Chrome(options=options, service=Service(str(chromium.driver)))


if __name__ == "__main__":
    print(ensure_chromium(), file=sys.stderr)
