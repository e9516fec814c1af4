"""What the sidebar chose (:class:`Selection`), as every page reads it (:func:`current`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st

from senet_viz.analysis.bundle import Bundle
from senet_viz.data.sources import ImageSet, Skipped, model_space_labels
from senet_viz.models.loaded import LoadedModel

_KEY = "selection"  # where this run's selection is kept in the session


@dataclass
class Selection:
    """What the sidebar chose; pages read it with :func:`current`."""

    model: LoadedModel | None = None
    model_error: str | None = None
    images: ImageSet | None = None
    source: str = ""  # the sidebar's "Images" choice, e.g. "Folder on the server"
    origin: str = ""  # where exactly: the folder read (empty for uploads)
    group_by_prediction: bool = False
    skipped: list[Skipped] = field(default_factory=list)
    bundle: Bundle | None = None  # an opened analysis file: statistics without model or images

    @property
    def ready(self) -> bool:
        return self.model is not None and self.images is not None and len(self.images.items) > 0

    def scored_images(self) -> ImageSet | None:
        """The images labelled in the model's class space for top-1/top-5: a class named after a model class
        (or a wnid) or an ImageNet-style file name (``n02088632_bluetick.JPEG``) gives the label; other images
        are unlabelled and count only for agreement and KL."""
        if self.images is None or self.model is None:
            return self.images
        return model_space_labels(self.images, self.model.class_names, self.model.wnids)


def current() -> Selection:
    """The selection the sidebar made in this run (an empty one before it ran)."""
    return st.session_state.get(_KEY, Selection())


def publish(selection: Selection) -> None:
    """Make ``selection`` this run's :func:`current` (the sidebar calls it once it has drawn)."""
    st.session_state[_KEY] = selection
