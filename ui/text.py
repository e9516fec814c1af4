"""Text a user wrote (file and class names, bundle provenance, model paths, error messages that quote them), made
safe to put inside Streamlit's Markdown (st.markdown, st.caption, st.error, widget labels): shown as typed, never
as markup. An uploaded name like ``![x](http://host/t.png)`` would otherwise make every viewer's browser fetch
that image; ``:red[...]``, ``$...$`` (LaTeX) and HTML likewise.
"""

from __future__ import annotations

import re

# CommonMark lets a backslash escape any ASCII punctuation; Streamlit adds $ (LaTeX) and :directives: to these.
_MARKUP = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$:&\"'=])")
# GitHub-flavoured Markdown turns bare URLs and e-mail addresses into links after the escapes are read
# (http\://host still becomes a link): a zero-width space after the scheme or before the @ keeps them text.
_AUTOLINK = re.compile(r"(?i)(https?|ftp|www|mailto|xmpp)(?=[:.])|(?=@)")


def plain(text: object, limit: int | None = 300) -> str:
    """``text`` as literal Markdown: punctuation backslash-escaped, line breaks made spaces, and (``limit``) cut
    to that many characters with an ellipsis, so a long name cannot flood the page."""
    value = " ".join(str(text).split())
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + "…"
    return _MARKUP.sub(r"\\\1", _AUTOLINK.sub(lambda m: (m.group(1) or "") + "\u200b", value))
