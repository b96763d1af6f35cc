"""Page helpers of the UI's browser tests (``test_ui_browser.py``): one Selenium session on one
Airflow, explicit waits only (the React UI renders after its API calls answer)."""

from __future__ import annotations

from pathlib import Path

from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

# Chakra keeps closed dialogs and popovers in the page (hidden): only open ones count.
OPEN_DIALOG = "[role=dialog][data-scope=dialog][data-state=open]"
OPEN_POPOVER = "[data-scope=popover][data-part=content][data-state=open]"


class UI:
    """The browser on the Airflow UI at ``base_url``; screenshots go to ``shots``."""

    def __init__(self, driver: WebDriver, base_url: str, shots: Path, timeout: float = 30) -> None:
        self.driver, self.base_url, self.shots, self.timeout = driver, base_url, shots, timeout

    def viewport(self, width: int, height: int) -> None:
        """Make the page ``width`` x ``height`` CSS pixels (the size of the next screenshots)."""
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def wait(self, timeout: float | None = None) -> WebDriverWait:
        """An explicit wait of the default (or ``timeout``) seconds."""
        return WebDriverWait(self.driver, timeout or self.timeout)

    def open(self, path: str) -> None:
        """Load ``base_url + path`` (``path`` starts with ``/``)."""
        self.driver.get(self.base_url + path)

    def visible(self, css: str, within: WebElement | None = None) -> WebElement:
        """The first element matching ``css`` (inside ``within``) once it is visible."""
        scope = within or self.driver
        return self.wait().until(
            lambda _: next(
                (e for e in scope.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()), None
            ),
            f"no visible {css}",
        )

    def click(self, css: str, within: WebElement | None = None) -> WebElement:
        """Click the first visible, enabled element matching ``css``; returns it."""
        element = self.visible(css, within)
        self.wait().until(lambda _: element.is_enabled(), f"{css} stays disabled")
        element.click()
        return element

    def text_appears(self, text: str, timeout: float | None = None) -> None:
        """Wait until the page's visible text contains ``text``."""
        self.wait(timeout).until(
            lambda d: text in d.find_element(By.TAG_NAME, "body").text, f"no text {text!r}"
        )

    def dialog(self) -> WebElement:
        """The open modal dialog."""
        return self.visible(OPEN_DIALOG)

    def dialog_closed(self) -> None:
        """Wait until no modal dialog is open."""
        self.wait().until(EC.invisibility_of_element_located((By.CSS_SELECTOR, OPEN_DIALOG)))

    @staticmethod
    def retype(element: WebElement, value: str) -> None:
        """Replace an input's text with ``value`` (as a person selecting it all and typing)."""
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(value)

    def set_datetime(self, picker: WebElement, day: str, hhmm: str = "00:00") -> None:
        """Fill one of the forms' date-time pickers (``day`` as ``YYYY/MM/DD``) and close it."""
        picker.click()
        popover = self.visible(OPEN_POPOVER)
        self.retype(self.visible("input[placeholder='YYYY/MM/DD']", popover), day)
        self.retype(self.visible("input[placeholder='HH:mm']", popover), hhmm)
        # A click on the dialog's title closes the popover (Escape would close the dialog).
        self.visible("h2", self.dialog()).click()
        self.wait().until(EC.invisibility_of_element(popover))

    def code_text(self, code: WebElement) -> str:
        """The text of a syntax-highlighted code block, without its line numbers."""
        return self.driver.execute_script(
            "const c = arguments[0].cloneNode(true);"
            "c.querySelectorAll('.linenumber').forEach(n => n.remove());"
            "return c.textContent;",
            code,
        )

    def screenshot(self, name: str) -> Path:
        """Save the viewport as ``<shots>/<name>.png``."""
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), f"could not write {path}"
        return path
