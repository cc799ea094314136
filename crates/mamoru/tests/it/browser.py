"""Drives a real headless Chromium (through chromedriver) over mamoru's
pages at a phone-sized viewport, for tests/it/browser.rs.

Usage: browser.py BASE_URL REGISTER_PATH PUBLISH_PATH SHOT_DIR PROFILE_DIR
Prints one line per step, "step: detail", and exits non-zero on failure.
"""
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

base, register, publish, shots, profile = sys.argv[1:6]

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}"]:
    opts.add_argument(flag)
# An iPhone-sized viewport: the pages are phone-first.
opts.add_experimental_option("mobileEmulation", {
    "deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 2.0}})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
driver.set_page_load_timeout(30)
wait = WebDriverWait(driver, 20)


def shot(name):
    # Full page height, so the screenshot shows the whole form.
    h = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(390, max(844, h))
    driver.save_screenshot(f"{shots}/{name}.png")
    print(f"screenshot: {name}.png", flush=True)


try:
    driver.get(base + "/")
    print("top:", driver.find_element(By.TAG_NAME, "h1").text, flush=True)
    shot("top")

    driver.get(base + register)
    print("register:", driver.find_element(By.TAG_NAME, "h1").text, flush=True)
    for value in ("1", "3"):
        driver.find_element(By.CSS_SELECTOR, f"input[type=checkbox][value='{value}']").click()
    shot("register")
    driver.find_element(By.CSS_SELECTOR, "form button").click()
    wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), "登録"))
    print("registered:", driver.find_element(By.TAG_NAME, "h1").text, flush=True)
    shot("registered")

    driver.get(base + publish)
    print("publish-page:", driver.find_element(By.TAG_NAME, "h1").text, flush=True)
    shot("publish")
    driver.find_element(By.CSS_SELECTOR, "form button").click()
    wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), "配信しました"))
    print("published:", driver.find_element(By.TAG_NAME, "main").text.replace("\n", " "), flush=True)

    driver.get(base + "/alerts")
    print("archive:", driver.find_element(By.TAG_NAME, "main").text.replace("\n", " "), flush=True)
    shot("alerts")
finally:
    driver.quit()
