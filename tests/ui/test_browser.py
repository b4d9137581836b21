"""The web console in a real browser (Debian's headless Chromium through Selenium),
against a real ``hypermachine serve`` and one real tiny guest.

One server and one guest serve the whole module (the tests run in order: the VM
the form creates is the one whose consoles are opened and which is stopped at the
end). Every wait is for a DOM condition, under a bound. Screenshots of the main
pages go to ``build/screenshots/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from realserver import Server, free_port
from support import qemu_pids_for, require_tiny

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()),
        reason="needs Debian's chromium and chromium-driver (tools/setup installs them)",
    ),
]

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
BOOT_S = 180  # TCG on a shared machine
VM_NAME = "web-1"


def create_key(data_dir: Path, name: str, *flags: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "hypermachine.cli", "--data-dir", str(data_dir),
         "key", "create", "--name", name, "--tier", "enterprise", *flags],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.strip()


class Site:
    """The server, its keys and the browser, shared by the module's tests."""

    def __init__(self, server: Server, keys: dict[str, str], browser: Any) -> None:
        self.server, self.keys, self.browser = server, keys, browser
        self.vm_id: str | None = None

    def api(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def open(self, path: str) -> None:
        self.browser.get(self.server.url + path)

    def wait(self, timeout: float = 30) -> WebDriverWait[Any]:
        return WebDriverWait(self.browser, timeout)

    def find(self, css: str, timeout: float = 30) -> Any:
        return self.wait(timeout).until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def text(self, css: str) -> str:
        """The text of an element that is there (perhaps still empty, so not visible);
        read again when a live update replaced the element while it was read."""

        def read(driver: Any) -> tuple[str] | bool:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            return (str(found[0].text),) if found else False

        wait = WebDriverWait(self.browser, 30, ignored_exceptions=(StaleElementReferenceException,))
        found = wait.until(read)
        assert isinstance(found, tuple)
        return str(found[0])

    def click(self, css: str) -> None:
        """Click an element, again if a live update replaced it under the pointer."""

        def clicked(driver: Any) -> bool:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return True

        ignored = (StaleElementReferenceException, NoSuchElementException)
        WebDriverWait(self.browser, 30, ignored_exceptions=ignored).until(clicked)

    def sign_in(self, who: str) -> None:
        self.open("/ui/sign-in")
        key = self.find("#api-key")
        key.clear()
        key.send_keys(self.keys[who], Keys.ENTER)
        self.text("#vm-rows[data-loaded]")  # the list was read (perhaps empty)

    def vm_state(self, name: str, state: str, timeout: float = BOOT_S) -> None:
        css = f'tr[data-vm-name="{name}"] .state[data-state="{state}"]'
        self.wait(timeout).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))

    def terminal_text(self) -> str:
        text: str = self.browser.execute_script(
            "if (!window.hmTerminal) return '';"
            "const b = window.hmTerminal.buffer.active; const out = [];"
            "for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));"
            "return out.join('\\n');"
        )
        return text

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def chromium(profile: Path) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--window-size=1280,800", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_tiny()
    data_dir = tmp_path_factory.mktemp("ui-data")
    keys = {name: create_key(data_dir, name) for name in ("alice", "bob")}
    keys["admin"] = create_key(data_dir, "ops", "--admin")
    server = Server(data_dir, free_port())
    server.start()
    browser = chromium(tmp_path_factory.mktemp("chromium-profile"))
    uuids: set[str] = set()
    try:
        yield Site(server, keys, browser)
    finally:
        browser.quit()
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=60
        ) as admin:
            for vm in admin.get("/api/v1/vms").json()["vms"]:
                uuids.add(vm["uuid"])
                admin.delete(f"/api/v1/vms/{vm['id']}?force=true")
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    assert qemu_pids_for(uuids) == [], "a QEMU process outlived the browser tests"


def test_sign_in_with_a_key(site: Site) -> None:
    site.open("/")
    site.wait().until(EC.url_to_be(site.server.url + "/ui/sign-in"))  # / -> /ui -> sign-in
    site.shot("sign-in")
    site.find("#api-key").send_keys("hm_not-a-key", Keys.ENTER)
    site.wait().until(lambda _: "not valid" in site.text("#sign-in-error"))
    site.sign_in("alice")
    assert site.browser.current_url == site.server.url + "/ui"
    assert site.browser.execute_script("return sessionStorage.length") >= 1
    assert site.browser.execute_script("return localStorage.length") == 0


def test_a_bad_field_is_shown_beside_it(site: Site) -> None:
    site.find("#vm-name").send_keys("too-small")
    memory = site.find("#vm-memory_mb")
    memory.clear()
    memory.send_keys("100")
    site.find("#create-vm button[type=submit]").click()
    site.wait().until(lambda _: "512" in site.text("#error-memory_mb"))  # the API's message
    assert site.text("#error-name") == ""
    with site.api(site.keys["alice"]) as api:
        assert api.get("/api/v1/vms").json()["vms"] == []


def test_create_from_the_form_and_see_it_run(site: Site) -> None:
    site.browser.execute_script("window.hmSamePage = true")  # gone if the page reloads
    name = site.find("#vm-name")
    name.clear()
    name.send_keys(VM_NAME)
    memory = site.find("#vm-memory_mb")
    memory.clear()
    memory.send_keys("512")
    Select(site.find("#vm-image")).select_by_value("tiny")
    site.find("#vm-display").click()
    site.find("#create-vm button[type=submit]").click()
    site.vm_state(VM_NAME, "running")
    assert site.browser.execute_script("return window.hmSamePage") is True
    row = f'tr[data-vm-name="{VM_NAME}"]'
    site.find(row)
    # Read in one script: a live update may replace the row between two driver calls.
    site.vm_id = site.browser.execute_script(
        "return document.querySelector(arguments[0]).dataset.vmId", row
    )
    site.shot("vms")


def test_serial_console_shows_the_guest_and_answers(site: Site) -> None:
    site.click(f'tr[data-vm-name="{VM_NAME}"] a')
    site.wait().until(EC.url_to_be(f"{site.server.url}/ui/vms/{site.vm_id}"))
    spec = site.text("#overview dl")
    assert "display\nvnc" in spec and "image\ntiny" in spec, spec
    site.find("#open-console").click()
    site.wait(BOOT_S).until(lambda _: "HM-READY" in site.terminal_text())
    site.wait(BOOT_S).until(lambda _: "hm-tiny# " in site.terminal_text())
    site.wait().until(lambda _: site.find("#console-status").text == "connected")
    typed = site.browser.find_element(By.CSS_SELECTOR, "#terminal .xterm-helper-textarea")
    typed.send_keys("echo $((6*7))", Keys.ENTER)
    site.wait(BOOT_S).until(lambda _: "\n42" in site.terminal_text())


def test_exec_shows_the_output(site: Site) -> None:
    command = site.find("#exec-command")
    command.send_keys("echo exec-$((40+2))", Keys.ENTER)
    output = site.find("#exec-output")
    site.wait(BOOT_S).until(lambda _: "exec-42" in output.text and "[exit 0]" in output.text)
    site.wait().until(lambda _: site.find("#agent-status").text.startswith("connected"))


def test_graphical_console_shows_a_screen(site: Site) -> None:
    site.find("#open-display").click()
    site.wait().until(lambda _: site.find("#display-status").text == "connected")
    lit = (
        "const c = document.querySelector('#display-screen canvas');"
        "if (!c || !c.width) return 0;"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        "for (let i = 0; i < d.length; i += 4) if (d[i] + d[i+1] + d[i+2] > 60) n++;"
        "return n;"
    )
    site.wait(60).until(lambda _: site.browser.execute_script(lit) > 100)
    overflow = site.browser.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth"
    )
    assert overflow <= 1, overflow  # readable at 1280 x 800: nothing wider than the window
    site.browser.execute_script("document.getElementById('display').scrollIntoView()")
    site.shot("vm-display")
    site.browser.execute_script("window.scrollTo(0, 0)")
    site.shot("vm")
    # No request left the machine: every resource came from the server itself.
    urls = site.browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert urls and all(url.startswith(site.server.url) for url in urls), urls


def test_another_tenant_never_sees_the_vm_nor_opens_it(site: Site) -> None:
    assert site.vm_id is not None
    with site.api(site.keys["bob"]) as bob, site.api(site.keys["alice"]) as alice:
        site.sign_in("bob")
        assert alice.post("/api/v1/vms", json={"name": "a-2", "image": "tiny"}).status_code == 201
        created = bob.post("/api/v1/vms", json={"name": "b-1", "image": "tiny"})
        assert created.status_code == 201
        site.find('tr[data-vm-name="b-1"]')  # arrived live, after alice's a-2 was created
        rows = site.browser.find_elements(By.CSS_SELECTOR, "#vm-rows tr")
        assert [r.get_attribute("data-vm-name") for r in rows] == ["b-1"]
        # From bob's page: no token for alice's VM, and his own token does not open it.
        refused = site.browser.execute_async_script(
            """const [alice, bobs, done] = arguments;
            const headers = {Authorization: "Bearer " + sessionStorage.getItem("hm-api-key"),
                             "Content-Type": "application/json"};
            const token = (id) => fetch(`/api/v1/vms/${id}/console/token`,
                {method: "POST", headers, body: '{"kind": "serial"}'});
            (async () => {
              const denied = (await token(alice)).status;
              const mine = await (await token(bobs)).json();
              const ws = new WebSocket(`ws://${location.host}/api/v1/vms/${alice}/console?token=${mine.token}`);
              ws.onopen = () => done([denied, "opened"]);
              ws.onclose = () => done([denied, "refused"]);
            })();""",
            site.vm_id,
            created.json()["id"],
        )
        assert refused == [404, "refused"]
        site.open(f"/ui/vms/{site.vm_id}")
        error = site.find("main [role=alert]")
        assert "VM" in error.text and VM_NAME not in site.browser.page_source


def test_admin_pages_and_phone_width(site: Site) -> None:
    site.sign_in("admin")
    site.find(f'tr[data-vm-name="{VM_NAME}"]')
    site.open("/ui/host")
    site.find("#capabilities table")
    site.shot("host")
    site.open("/ui/keys")
    site.wait().until(lambda _: "alice" in site.find("main table").text)
    site.open("/ui/audit")
    site.wait().until(lambda _: "create_vm" in site.find("main table").text)
    site.shot("audit")
    site.browser.set_window_size(390, 844)
    try:
        site.open("/ui")
        site.find(f'tr[data-vm-name="{VM_NAME}"]')
        overflow = site.browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 1, overflow
        site.shot("vms-phone")
    finally:
        site.browser.set_window_size(1280, 800)


def test_stop_with_confirmation(site: Site) -> None:
    site.sign_in("alice")
    site.click(f'tr[data-vm-name="{VM_NAME}"] [data-action="stop"]')
    site.find("#confirm-ok").click()
    site.vm_state(VM_NAME, "stopped", timeout=120)
