"""A real browser against a fresh server per page URL: Streamlit 1.67 runs a fresh server's first request to a page
URL (``/remove``) in its legacy pages-folder mode when a ``pages/`` folder sits beside app.py (hence app_pages/);
each page URL, asked first of its own new server, must show the sidebar, the whole titled navigation and the
page's header, and no "Page not found".

The servers all start when the module starts, so each one's start-up overlaps the tests before it; each test then
asks its own server first and stops it. The server and browser helpers are tests/test_browser.py's.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_browser as tb
from conftest import requires

browser = tb.browser  # the shared Chromium fixture

pytestmark = [
    pytest.mark.browser,
    requires(tb.CHROMIUM, "chromium on PATH: `apt-get install chromium` (`make test` does it) to run the browser "
                          "tests"),
]


def log_path(name: str) -> Path:
    return tb.OUT / f"server-fresh-{name}.log"


@pytest.fixture(scope="module")
def fresh_servers() -> Iterator[dict[str, tuple[subprocess.Popen, str]]]:
    """Page name -> a server started for it alone (process, URL), not yet asked anything; all stopped at the end."""
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        for name in tb.PAGE_URLS:
            servers[name] = tb.start_server(log_path(name))
        yield servers
    finally:
        for proc, _ in servers.values():
            tb.stop_server(proc)


@pytest.mark.parametrize("name", list(tb.PAGE_URLS))
def test_a_fresh_servers_first_request_to_a_page_url_gets_the_whole_app(browser, fresh_servers, name):
    """The bug this guards against only shows on a fresh server's first request, so each URL gets its own server."""
    path, title, header = tb.PAGE_URLS[name]
    proc, url = fresh_servers[name]
    try:
        tb.wait_healthy(proc, url, log_path(name))
        context = browser.new_context(viewport=tb.VIEWPORT)
        try:
            tab = tb.new_tab(context)
            tb.open_app(tab, f"{url}/{path}")
            tab.get_by_test_id("stHeading").filter(has_text=header).first.wait_for()  # the page's own header
            tab.screenshot(path=str(tb.OUT / f"fresh-{name}.png"))
            sidebar = tab.get_by_test_id("stSidebar")
            nav = tab.get_by_test_id("stSidebarNav")
            # One comparison of everything the page shows, so a failure lists every difference at once.
            shown = {
                "url": tab.url.rstrip("/"),
                "shared sidebar (app.py: title, model picker)": sidebar.get_by_text("senet-viz").count() > 0
                and sidebar.locator(".st-key-model_name").count() == 1,
                # app.py's titled navigation, not the legacy one named after the files (last line: the icon's
                # name comes first)
                "navigation": [text.strip().splitlines()[-1] for text in nav.locator("a").all_inner_texts()],
                "current page": [text.strip().splitlines()[-1]
                                 for text in nav.locator("a[aria-current='page']").all_inner_texts()],
                "page not found (server)": tb.WATCHES[tab].not_found,
                "page not found (dialog)": tab.get_by_role("dialog").filter(has_text="Page not found").count(),
                "dialogs": tab.get_by_role("dialog").count(),
                "deploy button": tab.get_by_test_id("stAppDeployButton").count(),  # .streamlit/config.toml
                "main menu": tab.get_by_test_id("stMainMenu").count(),
            }
            assert shown == {
                "url": f"{url}/{path}".rstrip("/"),
                "shared sidebar (app.py: title, model picker)": True,
                "navigation": tb.PAGES,
                "current page": [title],
                "page not found (server)": [],
                "page not found (dialog)": 0,
                "dialogs": 0,
                "deploy button": 0,
                "main menu": 1,
            }
            tb.assert_no_exception(tab, f"/{path}")
            tb.assert_clean(tab, f"/{path}")
        finally:
            context.close()
    finally:
        tb.stop_server(proc)  # done with it: its memory goes back before the next page's first run
