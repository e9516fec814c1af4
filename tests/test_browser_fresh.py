"""A real browser against a fresh server: Streamlit 1.67 runs a fresh server's first request to a page URL
(``/remove``) in its legacy pages-folder mode when a ``pages/`` folder sits beside app.py (hence app_pages/). A page
URL asked first must show the sidebar, the whole titled navigation and the page's header, and no "Page not found".

The bug is structural (the folder, not a page): it shows on whatever page URL is asked first, and it cannot show once
the server has answered. So one server is asked first for ``/remove`` (the first test of the module); every other page
URL is then opened first in a new browser context, i.e. a new session, on that server, with the same checks (a page
URL must work in a session whose first request it is, on any server). A test without a browser checks that no
``pages/`` folder sits beside app.py.

The server is the default one of the browser modules (no data roots, no SENET_VIZ_ALLOW_CODE), shared with
tests/test_browser_hostile.py; the server and browser helpers are tests/test_browser.py's.
"""

from __future__ import annotations

import pytest
import test_browser as tb
from conftest import requires

browser = tb.browser  # the shared Chromium fixture
needs_chromium = requires(tb.CHROMIUM, "chromium on PATH: `apt-get install chromium` (`make test` does it) to run the "
                                       "browser tests")
FIRST = "remove"  # the page URL the fresh server is asked first


@pytest.fixture(scope="session")
def fresh_server():
    """The default server, fresh: nothing was asked of it before this module's first test (one handed out earlier
    in the session, e.g. when tests/test_browser_hostile.py ran first, is replaced)."""
    yield from tb.shared_server_fixture("default", fresh=True)


def check_first_request(browser, url: str, name: str) -> None:
    """Open page ``name`` of tb.PAGE_URLS as the first request of a new session (a new browser context) and compare
    what it shows with the app's navigation and the page's header."""
    path, title, header = tb.PAGE_URLS[name]
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
            # app.py's titled navigation, not the legacy one named after the files (last line: the icon's name
            # comes first)
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


def test_no_pages_folder_beside_app_py():
    """What the browser tests below guard, checked without a browser: Streamlit switches to its legacy mode when this
    folder exists, so the page scripts live in app_pages/ and app.py lists them with st.navigation."""
    assert not (tb.ROOT / "pages").exists()
    assert "st.navigation(" in (tb.ROOT / "app.py").read_text()


@needs_chromium
@pytest.mark.browser
def test_a_fresh_servers_first_request_to_a_page_url_gets_the_whole_app(browser, fresh_server):
    check_first_request(browser, fresh_server, FIRST)


@needs_chromium
@pytest.mark.browser
@pytest.mark.parametrize("name", [name for name in tb.PAGE_URLS if name != FIRST])
def test_every_page_url_asked_first_in_a_new_session_gets_the_whole_app(browser, fresh_server, name):
    check_first_request(browser, fresh_server, name)
