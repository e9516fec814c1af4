"""Text templates of ``se_resnet50_tiny100`` (``string.Template`` markdown shipped as package data): the model card
(``card.md``) and the sample folder's README (``samples_readme.md``)."""

from __future__ import annotations

from importlib import resources


def read(name: str) -> str:
    """The text of the template file ``name`` (e.g. ``"card.md"``)."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
