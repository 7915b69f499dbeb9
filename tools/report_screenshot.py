"""Screenshot of a report.html in headless Chromium, scrolled to the memory panel and the first case.

    python tools/report_screenshot.py runs/demo/report.html docs/img/report.png

Needs Debian's ``chromium`` and ``chromium-driver`` and selenium (the ``test`` extra); makes
the picture of docs/report.md. Also prints how long the page took to open (the browser's
navigation timing, median of ``--loads`` cold loads) and the CPU it was measured on.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
from pathlib import Path

# Milliseconds from the start of navigation to the end of the load event: the page's HTML is
# parsed, its inline images decoded and its script has drawn the first slice of every case.
_LOAD_MS = "const n=performance.getEntriesByType('navigation')[0];return n.loadEventEnd-n.startTime;"


def screenshot(page: Path, png: Path, width: int = 1300, height: int = 1550, loads: int = 5) -> list[float]:
    """Save the screenshot to ``png``; return the load times in ms of ``loads`` cold loads."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

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
        times = []
        for _ in range(max(loads, 1)):
            driver.execute_cdp_cmd("Network.clearBrowserCache", {})
            driver.get("about:blank")
            driver.get(page.resolve().as_uri())
            # readyState "complete" can come before loadEventEnd is set.
            times.append(WebDriverWait(driver, 60).until(lambda d: d.execute_script(_LOAD_MS) or None))
        # The memory panel, then the first case's viewer (truth, prediction, memory categories).
        driver.execute_script(
            "const m=document.getElementById('memory');window.scrollTo(0,m.getBoundingClientRect().top+window.scrollY-110);"
        )
        png.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(png))
    finally:
        driver.quit()
    return times


def _cpu() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    shown = [f for f in ("avx", "avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, flags {' '.join(shown)}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--loads", type=int, default=5, help="cold loads to time (default 5)")
    args = parser.parse_args()
    times = screenshot(args.page, args.png, loads=args.loads)
    size_mb = args.page.stat().st_size / 1e6
    print(f"{args.png}: {args.page} ({size_mb:.2f} MB) opened in {statistics.median(times):.0f} ms "
          f"(median of {len(times)} cold loads: {', '.join(f'{t:.0f}' for t in times)}), {_cpu()}")
