"""Drives a real headless Chromium over the 受信テスト and help pages at a
phone-sized viewport, for tests/it/reception.rs.

Usage: reception_browser.py BASE_URL ARRIVED_PATH SHOT_DIR PROFILE_DIR
Prints one line per step, "step: detail", and exits non-zero on failure.
"""
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

base, arrived, shots, profile = sys.argv[1:5]

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}"]:
    opts.add_argument(flag)
opts.add_experimental_option("mobileEmulation", {
    "deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 2.0}})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
driver.set_page_load_timeout(30)
wait = WebDriverWait(driver, 20)


def shot(name):
    h = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(390, max(844, h))
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(f"{shots}/{name}.png")
    print(f"screenshot: {name}.png", flush=True)


try:
    driver.get(base + "/#test")
    driver.find_element(By.ID, "test-address").send_keys("taro@docomo.ne.jp")
    driver.find_element(By.CSS_SELECTOR, "form[action='/test'] button").click()
    wait.until(EC.title_contains("テストメールを送りました"))
    print("waiting:", driver.find_element(By.TAG_NAME, "h1").text, flush=True)
    shot("test-waiting")
    # The page reloads itself (meta refresh); after the wait it shows the help.
    wait.until(EC.title_contains("まだ届いていません"))
    print("help:", driver.find_element(By.TAG_NAME, "main").text.replace("\n", " "), flush=True)
    shot("test-help")

    driver.get(base + arrived)
    print("arrived-page:", driver.find_element(By.TAG_NAME, "h1").text, flush=True)
    shot("test-arrived-confirm")
    driver.find_element(By.CSS_SELECTOR, "form button").click()
    wait.until(EC.title_contains("受信できています"))
    print("arrived:", driver.find_element(By.TAG_NAME, "h1").text, flush=True)
    shot("test-arrived")

    for slug in ["docomo", "au", "softbank", "ymobile", "iphone", "android", "gmail"]:
        driver.get(base + "/help/" + slug)
        print(f"help-{slug}:", driver.find_element(By.TAG_NAME, "h1").text, flush=True)
        shot(f"help-{slug}")
    driver.get(base + "/help/")
    shot("help-index")
finally:
    driver.quit()
