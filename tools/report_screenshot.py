"""Screenshot of a report.html in headless Chromium, scrolled to the memory panel and the first case.

    python tools/report_screenshot.py runs/demo/report.html docs/img/report.png

Needs Debian's ``chromium`` and ``chromium-driver`` and selenium (the ``test`` extra); makes
the picture of docs/report.md.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def screenshot(page: Path, png: Path, width: int = 1300, height: int = 1250) -> Path:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        raise SystemExit("chromedriver not found: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},{height}"):
        options.add_argument(flag)
    if shutil.which("chromium"):
        options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(page.resolve().as_uri())
        # The memory panel, then the first case's viewer (truth, prediction, memory categories).
        driver.execute_script(
            "const m=document.getElementById('memory');window.scrollTo(0,m.getBoundingClientRect().top+window.scrollY-110);"
        )
        png.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(png))
    finally:
        driver.quit()
    return png


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args()
    print(screenshot(args.page, args.png))
