"""Helpers the AppTest test files share: driving the app and reading what it shows."""

from __future__ import annotations

import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def assert_ok(at: AppTest) -> None:
    """No exception and no error on screen."""
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def open_page(at: AppTest, page: str, header: str | None = None) -> AppTest:
    """Switch to ``app_pages/<page>.py`` and run; with ``header``, check the page's own header is shown."""
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert_ok(at)
    if header is not None:
        assert header in [h.value for h in at.header]
    return at


def uploader(at: AppTest, slot: int | str):
    """The file uploader of an upload class (``slot`` = class id, or "zip"). Its key carries a generation number:
    the sidebar moves uploaded files into session state and empties the uploader under a new key."""
    found = [u for u in at.get("file_uploader") if str(u.key).startswith(f"class_files_{slot}_")]
    assert len(found) == 1, [u.key for u in at.get("file_uploader")]
    return found[0]


def shown(markdown: str) -> str:
    """A Markdown element's text as the reader sees it: the backslash escapes that ``ui.text.plain`` puts before
    punctuation of user-written names, and the zero-width spaces that keep URLs from becoming links, removed."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u200b", "")


def app_session(model: str | None = None, *, work_from: str | None = None, model_from: str | None = None,
                timeout: float = 240) -> AppTest:
    """A fresh session of the app, run once; then, each with a rerun, "Work from" / "Model from" and the zoo model
    chosen in the sidebar where given."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    for key, value in (("work_from", work_from), ("model_from", model_from)):
        if value is not None:
            at.radio(key=key).set_value(value)
            at.run()
    if model is not None:
        at.selectbox(key="model_name").set_value(model)
        at.run()
    return at


def own_model_app(timeout: float = 240) -> AppTest:
    """A fresh session of the app with "Model from: Your own model" chosen in the sidebar."""
    return app_session(model_from="Your own model", timeout=timeout)
