"""Makes docs/serve.png, the README's picture of the `liteclip serve` page: the demo's model
(`make demo`) serving an index of the demo's test images, a search and a classification done
in headless chromium.

    python docs/screenshot_serve.py [--demo runs/demo] [--query "a red circle"]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

import liteclip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", default="runs/demo")
    parser.add_argument("--query", default="a red circle")
    parser.add_argument("--image-class", default="green triangle")
    parser.add_argument(
        "--labels", default="a green triangle,a green square,a blue triangle,a red circle"
    )
    parser.add_argument("--out", default=str(Path(__file__).with_name("serve.png")))
    args = parser.parse_args()
    demo = Path(args.demo)
    checkpoint = demo / "run" / "best"
    photos = demo / "data" / "test"
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "shapes.lcx"
        liteclip.Index.build(photos, index, checkpoint, device="cpu")
        log = Path(tmp) / "serve.log"
        command = [sys.executable, "-m", "liteclip", "serve", "--checkpoint", str(checkpoint)]
        command += ["--index", str(index), "--port", "0", "--device", "cpu"]
        server = subprocess.Popen(command, stderr=log.open("w"))
        try:
            while "listening on http://" not in log.read_text():
                time.sleep(0.1)
            url = log.read_text().split("listening on ", 1)[1].split()[0]
            shoot(url, args, sorted((photos / args.image_class).iterdir())[0])
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)


def shoot(url: str, args: argparse.Namespace, image: Path) -> None:
    options = Options()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--window-size=1280,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(url + "/")
        wait.until(lambda d: "photos" in d.find_element(By.ID, "status").text)
        driver.find_element(By.ID, "q").send_keys(args.query, Keys.ENTER)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results img.thumb"))
        picker = driver.find_element(By.ID, "file")
        driver.execute_script("arguments[0].hidden = false", picker)
        picker.send_keys(str(image.resolve()))
        driver.execute_script("arguments[0].hidden = true", picker)
        labels = args.labels.split(",")
        driver.find_element(By.ID, "labels").send_keys("\n".join(labels))
        driver.find_element(By.ID, "classify").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".bar-row")) == len(labels))
        time.sleep(1)  # thumbnails finish loading
        driver.save_screenshot(args.out)
        print(f"wrote {args.out} ({image.name} classified)")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
