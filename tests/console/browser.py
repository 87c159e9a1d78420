#!/usr/bin/env python3
"""The console in a real headless browser (Chromium through chromedriver).

Run by tests/console.rs against a drawbridge it started. Every wait is
bounded; any failure exits non-zero with what the page showed.

Usage: browser.py [console|servers] (default console)
  console   login, sites, weights, drain progress, screenshots, logout
  servers   a server added to backend app with the page and deleted again

Environment:
  ADMIN_URL     the admin listener (http://127.0.0.1:PORT)
  WEB_URL       the proxy's web listener
  ADMIN_TOKEN   the admin token
  STICKY        the Cookie header that pins a request to app-01 (console)
  SCREENSHOTS   folder for console-desktop.png and console-phone.png (console)
  NEW_SERVER    name and ip:port of a running upstream, "app-03=127.0.0.1:PORT"
                (servers)
  CHROMIUM, CHROMEDRIVER   the browser and its driver
"""

import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ADMIN = os.environ["ADMIN_URL"]
WEB = os.environ["WEB_URL"]
TOKEN = os.environ["ADMIN_TOKEN"]
STICKY = os.environ.get("STICKY", "")
SHOTS = os.environ.get("SCREENSHOTS", "")
WAIT = 15  # seconds, for each wait on the page


def log(msg):
    print(f"browser: {msg}", flush=True)


def proxy_get(path, cookie=None, timeout=10):
    req = urllib.request.Request(WEB + path)
    if cookie:
        req.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def api_servers(backend):
    """The servers of `backend` as GET /api/v1/status lists them, by name."""
    req = urllib.request.Request(ADMIN + "/api/v1/status")
    req.add_header("Authorization", "Bearer " + TOKEN)
    with urllib.request.urlopen(req, timeout=10) as r:
        status = json.load(r)
    for b in status["backends"]:
        if b["name"] == backend:
            return {s["name"]: s for s in b["servers"]}
    raise AssertionError(f"no backend {backend} in the status")


def driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--disable-gpu", "--window-size=1280,900", "--no-first-run",
              "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(a)
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    d = webdriver.Chrome(service=service, options=opts)
    d.set_page_load_timeout(WAIT)
    d.set_script_timeout(WAIT)
    return d


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "console"
    run = {"console": scenario, "servers": servers_scenario}[which]
    d = driver()
    try:
        run(d)
    except Exception:
        try:
            log("page text at the failure:\n" + d.find_element(By.TAG_NAME, "body").text)
            shot = os.path.join(tempfile.gettempdir(), f"drawbridge-console-failure-{os.getpid()}.png")
            d.save_screenshot(shot)
            log(f"screenshot of the failure: {shot}")
        except Exception as e:  # the browser itself may be gone
            log(f"no page to show: {e}")
        raise
    finally:
        d.quit()


def wait(d, cond, what):
    try:
        return WebDriverWait(d, WAIT, poll_frequency=0.1).until(cond)
    except TimeoutException:
        raise AssertionError(f"not within {WAIT}s: {what}")


def text_of(d, css):
    return d.find_element(By.CSS_SELECTOR, css).text


def click(d, css):
    e = wait(d, EC.element_to_be_clickable((By.CSS_SELECTOR, css)), f"{css} clickable")
    e.click()


def screenshot(d, name, width, height, mobile):
    """The top of the page in a viewport of width x height CSS pixels."""
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
    d.execute_script("window.scrollTo(0, 0); document.activeElement && document.activeElement.blur()")
    time.sleep(0.3)  # one layout after the resize
    d.save_screenshot(os.path.join(SHOTS, name))


def scenario(d):
    d.get(ADMIN + "/")
    token = wait(d, EC.visibility_of_element_located((By.ID, "token")), "the login form")
    # The label names the field (accessibility: a real <label for>).
    assert d.find_element(By.CSS_SELECTOR, "label[for=token]").text == "Admin token"

    # A wrong token: an error on the page, no console.
    token.send_keys("not-the-token")
    click(d, "#login-form button[type=submit]")
    wait(d, lambda d: "Wrong token" in text_of(d, "#login-error"), "the wrong-token error")
    assert not d.find_element(By.ID, "console").is_displayed(), "the console shows without a session"
    log("wrong token refused on the page")

    # The right token, typed and sent with the keyboard.
    token = d.find_element(By.ID, "token")
    token.send_keys(TOKEN + "\n")
    wait(d, EC.visibility_of_element_located((By.CSS_SELECTOR, '[data-site="app"] [data-status]')),
         "the console after login")
    badge = '[data-site="app"] [data-status]'
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, badge).get_attribute("data-status") == "serving",
         "site app serving")
    # The session cookie is HttpOnly: scripts on the page cannot read it.
    assert "drawbridge_console" not in d.execute_script("return document.cookie"), \
        "the session cookie is readable by scripts"
    log("logged in")

    # Every field has a label, and a weight is set with the keyboard alone:
    # type it, Tab to the button, Enter.
    unlabelled = d.execute_script(
        "return [...document.querySelectorAll('input')].filter(i => i.labels.length === 0).map(i => i.id)")
    assert unlabelled == [], f"inputs without a label: {unlabelled}"
    weight = d.find_element(By.CSS_SELECTOR, '[data-server="app/app-02"] [data-input=weight]')
    weight.clear()
    weight.send_keys("3", Keys.TAB)
    focused = d.switch_to.active_element
    assert focused.get_attribute("data-action") == "weight", "Tab did not reach the Set weight button"
    focused.send_keys(Keys.ENTER)
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, '[data-server="app/app-02"]').get_attribute("data-weight") == "3",
         "weight 3 on app-02, set with the keyboard")
    log("weight set with the keyboard")

    # Maintenance on, with a message: the page says so and the proxy answers 503.
    status, _ = proxy_get("/")
    assert status == 200, f"before maintenance the proxy answered {status}"
    msg = d.find_element(By.CSS_SELECTOR, '[data-site="app"] [data-input=message]')
    msg.send_keys("Back at 14:00")
    click(d, '[data-site="app"] [data-action=maint-on]')
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, badge).get_attribute("data-status") == "maintenance",
         "site app in maintenance on the page")
    status, body = proxy_get("/")
    assert status == 503, f"in maintenance the proxy answered {status}"
    assert "Back at 14:00" in body, "the message is not on the maintenance page"
    log("maintenance on: the proxy answers 503 with the message")

    # An allow-list entry added and removed.
    cidr = d.find_element(By.CSS_SELECTOR, '[data-site="app"] [data-input=cidr]')
    cidr.send_keys("203.0.113.7/32")
    click(d, '[data-site="app"] [data-action=allow-add]')
    wait(d, lambda d: "203.0.113.7/32" in text_of(d, '[data-site="app"] ul.allow'), "the allow entry")

    # A bypass token, shown once with how to set it.
    click(d, '[data-site="app"] [data-action=bypass]')
    cookie = wait(d, EC.visibility_of_element_located(
        (By.CSS_SELECTOR, '[data-site="app"] [data-output=cookie]')), "the bypass cookie").text
    assert "=" in cookie and "document.cookie" in text_of(d, '[data-site="app"] [data-output=bypass]')
    status, _ = proxy_get("/", cookie=cookie)
    assert status == 200, f"the bypass cookie from the page did not pass maintenance: {status}"
    log("bypass token issued on the page lets its holder through")
    click(d, '[data-site="app"] [data-action=bypass-hide]')
    wait(d, EC.invisibility_of_element_located((By.CSS_SELECTOR, '[data-site="app"] [data-output=bypass]')),
         "the bypass token hidden")

    click(d, '[data-site="app"] [aria-label^="Remove 203.0.113.7/32"]')
    wait(d, lambda d: "203.0.113.7/32" not in text_of(d, '[data-site="app"] ul.allow'), "the entry removed")
    click(d, '[data-site="app"] [data-action=maint-off]')
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, badge).get_attribute("data-status") == "serving",
         "site app serving again")
    status, _ = proxy_get("/")
    assert status == 200, f"after maintenance off the proxy answered {status}"
    log("maintenance off: the proxy answers 200")

    # Drain app-01 while a request pinned to it is in flight: the progress
    # view says it is not safe, then "Safe to stop" once it has finished.
    idle = d.find_element(By.ID, "idle")
    idle.clear()
    idle.send_keys("1")
    result = {}

    def slow():
        result["status"], result["body"] = proxy_get("/slow?ms=12000", cookie=STICKY, timeout=30)

    t = threading.Thread(target=slow)
    t.start()
    server = '[data-server="app/app-01"]'
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, server).get_attribute("data-inflight") == "1",
         "the request in flight on app-01")
    click(d, server + " [data-action=state-drain]")
    drain = server + " [data-output=drain]"
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, drain).get_attribute("data-safe") == "false",
         "the drain view: not yet safe")
    assert "not yet safe" in text_of(d, drain) and "In flight: 1" in text_of(d, drain), text_of(d, drain)
    log("draining with a request in flight: " + text_of(d, drain).replace("\n", " "))
    t.join(30)
    assert result.get("status") == 200 and result.get("body", "").strip() == "app-01", result
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, drain).get_attribute("data-safe") == "true",
         "the drain view: safe to stop")
    assert "Safe to stop" in text_of(d, drain), text_of(d, drain)
    log("drain progress reached: " + text_of(d, drain).replace("\n", " "))

    # The screenshots: the site in maintenance again and app-01 drained.
    click(d, '[data-site="app"] [data-action=maint-on]')
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, badge).get_attribute("data-status") == "maintenance",
         "site app in maintenance again")
    screenshot(d, "console-desktop.png", 1280, 900, False)
    screenshot(d, "console-phone.png", 390, 844, True)
    width = d.execute_script("return document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width}px wide in a 390px window"
    d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    click(d, '[data-site="app"] [data-action=maint-off]')
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, badge).get_attribute("data-status") == "serving",
         "site app serving at the end")
    click(d, server + " [data-action=state-ready]")
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, server + " [data-state]").get_attribute("data-state") == "ready",
         "app-01 ready again")

    # Log out: back to the login form, and a reload stays there.
    click(d, "#logout")
    wait(d, EC.visibility_of_element_located((By.ID, "token")), "the login form after logout")
    d.get(ADMIN + "/")
    wait(d, EC.visibility_of_element_located((By.ID, "token")), "the login form after a reload")
    assert not d.find_element(By.ID, "console").is_displayed(), "the console shows without a session"
    log("logged out")
    print("browser: scenario passed", flush=True)


def servers_scenario(d):
    name, addr = os.environ["NEW_SERVER"].split("=", 1)
    card = f'[data-server="app/{name}"]'
    block = '[data-backend="app"]'
    d.get(ADMIN + "/")
    wait(d, EC.visibility_of_element_located((By.ID, "token")), "the login form").send_keys(TOKEN + "\n")
    wait(d, EC.visibility_of_element_located((By.CSS_SELECTOR, '[data-server="app/app-01"] [data-state]')),
         "the console after login")
    assert not d.find_elements(By.CSS_SELECTOR, card), f"a card for {name} before it was added"
    assert name not in api_servers("app"), f"the API lists {name} before it was added"
    # Every server of the config is ready: Delete is disabled and says why.
    for s in ("app-01", "app-02"):
        b = d.find_element(By.CSS_SELECTOR, f'[data-server="app/{s}"] [data-action=server-delete]')
        assert not b.is_enabled(), f"Delete is enabled on ready server {s}"
        hint = text_of(d, f'[data-server="app/{s}"] [data-output=delete-hint]')
        assert "Maint" in hint, f"no hint why {s} cannot be deleted: {hint!r}"

    # The form: labelled fields, maint by default.
    form = block + " form.add-server"
    unlabelled = d.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' input, ' + arguments[0] + ' select')]"
        ".filter(i => i.labels.length === 0).map(i => i.outerHTML)", form)
    assert unlabelled == [], f"fields of the add form without a label: {unlabelled}"
    initial = d.find_element(By.CSS_SELECTOR, form + " [data-input=server-state]")
    assert initial.get_attribute("value") == "maint", "the initial state is not maint by default"

    # A name already taken: the API's 409 is shown, nothing is added.
    d.find_element(By.CSS_SELECTOR, form + " [data-input=server-name]").send_keys("app-01")
    d.find_element(By.CSS_SELECTOR, form + " [data-input=server-addr]").send_keys(addr)
    click(d, form + " [data-action=server-add]")
    wait(d, lambda d: "bad" in d.find_element(By.ID, "msg").get_attribute("class")
         and "already" in text_of(d, "#msg"), "the error for a name taken")
    assert len(d.find_elements(By.CSS_SELECTOR, block + " [data-server]")) == 2
    log("a name taken is refused on the page: " + text_of(d, "#msg"))

    # A max_conns on a backend without a queue: the API's 400 is shown,
    # nothing is added.
    name_in = d.find_element(By.CSS_SELECTOR, form + " [data-input=server-name]")
    name_in.clear()
    name_in.send_keys(name)
    max_in = d.find_element(By.CSS_SELECTOR, form + " [data-input=server-max-conns]")
    max_in.send_keys("3")
    click(d, form + " [data-action=server-add]")
    wait(d, lambda d: "bad" in d.find_element(By.ID, "msg").get_attribute("class")
         and "has no queue" in text_of(d, "#msg"), "the error for a max_conns without a queue")
    assert name not in api_servers("app"), f"{name} was added despite the error"
    log("a max_conns without a queue is refused on the page: " + text_of(d, "#msg"))
    max_in.clear()

    # The new server, with its address, weight 2 and a slow start,
    # initial state maint.
    d.find_element(By.CSS_SELECTOR, form + " [data-input=server-weight]").send_keys("2")
    d.find_element(By.CSS_SELECTOR, form + " [data-input=server-slowstart]").send_keys("30s")
    click(d, form + " [data-action=server-add]")
    wait(d, EC.visibility_of_element_located((By.CSS_SELECTOR, card + " [data-state]")), f"the card of {name}")
    assert "bad" not in d.find_element(By.ID, "msg").get_attribute("class"), text_of(d, "#msg")
    assert d.find_element(By.CSS_SELECTOR, card + " [data-state]").get_attribute("data-state") == "maint"
    assert addr in text_of(d, card), f"the card does not show {addr}"
    assert d.find_element(By.CSS_SELECTOR, form + " [data-input=server-name]").get_attribute("value") == "", \
        "the form was not cleared"
    s = api_servers("app").get(name)
    assert s is not None, f"the API does not list {name} after the page added it"
    assert (s["addr"], s["state"], s["weight"], s["added"], s["slowstart"]) == (addr, "maint", 2, True, "30s"), s
    log(f"{name} added on the page: the API lists it at {addr}, maint, weight 2, slow start 30s")

    # Ready: Delete is disabled, with the reason.
    delete = card + " [data-action=server-delete]"
    click(d, card + " [data-action=state-ready]")
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, card + " [data-state]").get_attribute("data-state") == "ready",
         f"{name} ready")
    wait(d, lambda d: not d.find_element(By.CSS_SELECTOR, delete).is_enabled(), f"Delete disabled on ready {name}")
    assert "Maint" in text_of(d, card + " [data-output=delete-hint]")
    assert api_servers("app")[name]["state"] == "ready"
    log(f"{name} ready: Delete is disabled")

    # Maint with nothing in flight: Delete is enabled; cancelling the
    # confirmation deletes nothing, accepting it deletes the server.
    click(d, card + " [data-action=state-maint]")
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, delete).is_enabled(), f"Delete enabled on maint {name}")
    assert text_of(d, card + " [data-output=delete-hint]") == ""
    d.find_element(By.CSS_SELECTOR, delete).click()
    alert = wait(d, EC.alert_is_present(), "the confirmation")
    assert name in alert.text, alert.text
    alert.dismiss()
    time.sleep(2)  # more than a poll: the card and the server stay
    assert d.find_elements(By.CSS_SELECTOR, card), "the card went although the deletion was cancelled"
    assert name in api_servers("app"), "cancelling the confirmation deleted the server"
    click(d, delete)
    wait(d, EC.alert_is_present(), "the confirmation again").accept()
    wait(d, lambda d: not d.find_elements(By.CSS_SELECTOR, card), f"the card of {name} gone")
    assert "deleted" in text_of(d, "#msg"), text_of(d, "#msg")
    assert name not in api_servers("app"), f"the API still lists {name} after the page deleted it"
    assert len(d.find_elements(By.CSS_SELECTOR, block + " [data-server]")) == 2
    log(f"{name} deleted on the page: its card is gone and the API no longer lists it")
    print("browser: servers scenario passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"browser: FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
