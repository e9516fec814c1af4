"""ui.text.plain: what a user wrote, shown as typed inside Streamlit's Markdown."""

from __future__ import annotations

import re

from apptest_helpers import shown

from ui.text import plain


def test_markup_characters_are_escaped_and_read_back_as_typed():
    evil = "![x](http://host/t.png) <img src=x> :red[red] $x^2$ **bold** `code` # head | a_b"
    out = plain(evil, None)
    # no unescaped opener of an image, a link, a tag, a directive, LaTeX, emphasis or code is left
    assert not re.search(r"(?<!\\)[!\[\]()<>:$*`#|_]", out.replace("\u200b", "")), out
    assert shown(out) == evil


def test_bare_urls_and_addresses_do_not_become_links():
    out = plain("see https://evil.example/a, www.evil.example and me@evil.example", None)
    for scheme in ("https", "www"):
        assert f"{scheme}\u200b" in out
    assert "me\u200b@" in out
    assert shown(out) == "see https://evil.example/a, www.evil.example and me@evil.example"


def test_line_breaks_are_spaces_and_long_text_is_cut():
    assert plain("a\n\n- b") == "a \\- b"
    assert shown(plain("x" * 1000, 10)) == "x" * 9 + "…"
