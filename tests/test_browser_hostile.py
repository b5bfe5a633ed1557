"""Attacks that come through the victim's own browser (Debian's chromium via Playwright): a
hostile site's form signing the victim in as the attacker (login CSRF) or out, a hostile
name rebound to 127.0.0.1 (DNS rebinding) reaching a local install, and a hostile page
framing Flywheel (clickjacking). The hostile site is a second server on another origin;
chromium maps the name evil.test to 127.0.0.1, as a rebinding DNS server would."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from assistant.server import ServeConfig, serve_in_thread
from storage import Home, init_db, open_db, users

pytestmark = pytest.mark.slow  # a real browser

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("the browser tests need Debian's chromium: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--host-resolver-rules=MAP evil.test 127.0.0.1"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def hostile():
    """A web site on another origin; `pages[path] = html` decides what it serves."""
    pages: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.get(self.path, "not here").encode()
            self.send_response(200 if self.path in pages else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://evil.test:{server.server_address[1]}", pages
    server.shutdown()


@pytest.fixture(scope="module")
def team(tmp_path_factory, tiny_model_dir):
    home = Home.resolve(tmp_path_factory.mktemp("browser-hostile"))
    init_db(home)
    with open_db(home) as db:
        users.add_user(db, "alice", "user", password=PASSWORD)
        users.add_user(db, "mallory", "user", password=PASSWORD)
    with serve_in_thread(home, ServeConfig(model=str(tiny_model_dir), port=0)) as (url, _):
        yield url


def sign_in(page, url, name):
    page.goto(f"{url}/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")


def test_a_hostile_form_cannot_sign_the_victim_in_as_the_attacker(browser, hostile, team):
    site, pages = hostile
    pages["/login-csrf"] = f"""<form id=f method=post action="{team}/login">
        <input name=username value=mallory><input name=password value="{PASSWORD}"></form>
        <script>document.getElementById('f').submit()</script>"""
    context = browser.new_context()
    page = context.new_page()
    with page.expect_response(f"{team}/login") as posted:
        page.goto(f"{site}/login-csrf")
    assert posted.value.status == 403
    assert not [c for c in context.cookies(team) if c["name"] == "flywheel_session"]
    context.close()


def test_a_hostile_page_cannot_sign_the_victim_out(browser, hostile, team):
    site, pages = hostile
    pages["/logout-csrf"] = f"""<img src="{team}/logout">
        <form id=f method=post action="{team}/logout"></form>
        <script>document.getElementById('f').submit()</script>"""
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, team, "alice")
    with page.expect_response(lambda r: r.url == f"{team}/logout"
                              and r.request.method == "POST") as posted:
        page.goto(f"{site}/logout-csrf")
    assert posted.value.status == 403
    page.goto(team)
    assert page.url == f"{team}/"  # still signed in: not sent back to /login
    page.click("#sign-out")        # the page's own button does sign out
    page.wait_for_url(f"{team}/login")
    context.close()


def test_no_other_site_can_frame_the_page(browser, hostile, team):
    site, pages = hostile
    pages["/frame"] = f'<iframe id=target src="{team}/login" width=600 height=400></iframe>'
    context = browser.new_context()
    page = context.new_page()
    with page.expect_response(f"{team}/login") as framed:
        page.goto(f"{site}/frame")
    assert framed.value.headers["x-frame-options"] == "DENY"
    frame = page.frame_locator("#target")
    assert frame.locator("input[name=username]").count() == 0  # blocked, nothing to click
    context.close()


@pytest.fixture
def local(home, tiny_model_dir):
    with serve_in_thread(home, ServeConfig(model=str(tiny_model_dir), port=0)) as (url, _):
        yield url, home


def test_a_rebound_name_gets_nothing_from_a_local_install(browser, local):
    url, home = local
    port = url.rsplit(":", 1)[1]
    context = browser.new_context()
    page = context.new_page()
    assert page.goto(f"http://localhost:{port}/").status == 200  # the owner's own page
    rebound = page.goto(f"http://evil.test:{port}/")  # evil.test now resolves to 127.0.0.1
    assert rebound.status == 403 and "host_not_allowed" in page.content()
    # The hostile page's script tries to make itself an admin through the page's API.
    status = page.evaluate("""async () => (await fetch('/gradio_api/call/add_user', {
        method: 'POST', headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({data: ['mallory', 'admin', 'mallory-pass-1']})})).status""")
    assert status == 403
    with open_db(home) as db:
        assert db["users"].count == 0
    context.close()
