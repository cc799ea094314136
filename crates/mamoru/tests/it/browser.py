"""Drives a real headless Chromium (through chromedriver) over mamoru's
pages at a phone-sized viewport, for tests/it/browser.rs.

Usage: browser.py BASE_URL REGISTER_PATH PUBLISH_PATH SHOT_DIR PROFILE_DIR ADMIN_ID ADMIN_PASSWORD MANAGE_PATH
Prints one line per step, "step: detail", and exits non-zero on failure.
"""
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

base, register, publish, shots, profile, admin_id, admin_password, manage = sys.argv[1:9]

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
# Titles, not elements: an element looked up while the next page loads can
# belong to the old document.
wait = WebDriverWait(driver, 20)


def shot(name):
    # Full page height, so the screenshot shows the whole form.
    h = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(390, max(844, h))
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(f"{shots}/{name}.png")
    print(f"screenshot: {name}.png", flush=True)


def shot_from(name, css):
    # The viewport from the element `css` down: for the lower part of a long
    # form.
    driver.execute_script("document.querySelector(arguments[0]).scrollIntoView()", css)
    driver.save_screenshot(f"{shots}/{name}.png")
    print(f"screenshot: {name}.png", flush=True)


def prefs_state():
    kinds = [b.get_attribute("value") for b in driver.find_elements(By.CSS_SELECTOR, "input[name=kind]") if b.is_selected()]
    start = Select(driver.find_element(By.ID, "quiet_start")).first_selected_option.get_attribute("value")
    end = Select(driver.find_element(By.ID, "quiet_end")).first_selected_option.get_attribute("value")
    return f"kinds={','.join(kinds)} quiet={start}-{end}"


try:
    # A parent's manage page: turn a kind off, set quiet hours, save, reload.
    driver.get(base + manage)
    print("manage:", driver.find_element(By.TAG_NAME, "h1").text, prefs_state(), flush=True)
    driver.find_element(By.CSS_SELECTOR, "input[name=kind][value='不審電話情報']").click()
    Select(driver.find_element(By.ID, "quiet_start")).select_by_visible_text("22:00")
    Select(driver.find_element(By.ID, "quiet_end")).select_by_visible_text("7:00")
    shot("manage")
    shot_from("manage-preferences", "input[name=prefs] + fieldset")
    driver.find_element(By.CSS_SELECTOR, "form input[name=action][value=update] ~ button").click()
    wait.until(EC.title_contains("変更しました"))
    print("manage-saved:", driver.find_element(By.TAG_NAME, "main").text.replace("\n", " "), flush=True)
    shot("manage-saved")
    driver.get(base + manage)
    print("manage-reloaded:", prefs_state(), flush=True)

    driver.get(base + "/")
    print("top:", driver.find_element(By.TAG_NAME, "h1").text, flush=True)
    shot("top")

    driver.get(base + register)
    print("register:", driver.find_element(By.TAG_NAME, "h1").text, flush=True)
    # A new registration receives every kind, at any time, unless changed.
    print("register-defaults:", prefs_state(), flush=True)
    for value in ("1", "3"):
        driver.find_element(By.CSS_SELECTOR, f"input[type=checkbox][value='{value}']").click()
    shot("register")
    shot_from("register-preferences", "input[name=prefs] + fieldset")
    driver.find_element(By.CSS_SELECTOR, "form button").click()
    wait.until(EC.title_contains("登録が完了しました"))
    print("registered:", driver.find_element(By.TAG_NAME, "h1").text, flush=True)
    shot("registered")

    driver.get(base + publish)
    print("publish-page:", driver.find_element(By.TAG_NAME, "h1").text, flush=True)
    shot("publish")
    driver.find_element(By.CSS_SELECTOR, "form button").click()
    wait.until(EC.title_contains("配信しました"))
    print("published:", driver.find_element(By.TAG_NAME, "main").text.replace("\n", " "), flush=True)

    driver.get(base + "/alerts")
    print("archive:", driver.find_element(By.TAG_NAME, "main").text.replace("\n", " "), flush=True)
    shot("alerts")

    # The admin panel: login, dashboard, compose, preview, publish.
    driver.get(base + "/admin")
    shot("admin-login")
    driver.find_element(By.ID, "login").send_keys(admin_id)
    driver.find_element(By.ID, "password").send_keys(admin_password)
    driver.find_element(By.CSS_SELECTOR, "main form button").click()
    wait.until(EC.title_contains("ダッシュボード"))
    print("dashboard:", driver.find_element(By.TAG_NAME, "table").text.replace("\n", " | "), flush=True)
    shot("admin-dashboard")
    driver.get(base + "/admin/compose")
    driver.find_element(By.ID, "title").send_keys("不審な電話")
    driver.find_element(By.CSS_SELECTOR, "input[type=checkbox][name=district][value='3']").click()
    driver.find_element(By.ID, "text").send_keys("市役所を名乗る不審な電話がありました。")
    shot("admin-compose")
    driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]:not(.link)").click()
    wait.until(EC.title_contains("配信の確認"))
    print("admin-preview:", driver.title, "|", driver.find_element(By.TAG_NAME, "main").text.replace("\n", " "), flush=True)
    shot("admin-preview")
    driver.find_element(By.CSS_SELECTOR, "main form[action$='/publish'] button").click()
    wait.until(EC.title_contains("配信の詳細"))
    print("admin-published:", driver.title, "|", driver.find_element(By.TAG_NAME, "main").text.replace("\n", " "), flush=True)
    shot("admin-published")
    # Admin accounts: add a district-limited admin from the panel.
    driver.get(base + "/admin/admins")
    driver.find_element(By.ID, "new-login").send_keys("pta-kita")
    driver.find_element(By.ID, "new-email").send_keys("pta@school.example")
    driver.find_element(By.ID, "new-password").send_keys("a long enough password")
    driver.find_element(By.CSS_SELECTOR, "input[type=checkbox][name=district][value='2']").click()
    driver.find_element(By.CSS_SELECTOR, "main form[action$='/add'] button").click()
    # The page keeps its title, so the wait reads the text in one script: a
    # script runs in whichever document is current, where an element found
    # first can be gone (detached) by the time its text is asked for.
    wait.until(lambda d: "を追加しました" in d.execute_script(
        "const m = document.querySelector('main'); return m ? m.innerText : ''"))
    print("admin-admins:", driver.find_element(By.TAG_NAME, "table").text.replace("\n", " | "), flush=True)
    shot("admin-admins")
finally:
    driver.quit()
