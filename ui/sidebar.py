"""The sidebar every page shares: model and weights, device, and the images grouped into classes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import streamlit as st
import torch

from senet_viz import zoo
from senet_viz.data import (
    MAX_ZIP_BYTES,
    MAX_ZIP_MEMBERS,
    ImageSet,
    Skipped,
    folder_source,
    max_pixels_limit,
    uploads_source,
)
from senet_viz.weights import WeightsError
from ui import state

IMAGENET_SAMPLES = zoo.PROJECT_ROOT.parent / "shared" / "data" / "imagenet-samples"
SOURCES = ("Embedded samples", "Upload by class", "Folder on the server", "Fashion-MNIST test set")


@dataclass
class Selection:
    """What the sidebar chose; pages read it with :func:`current`."""

    model: zoo.LoadedModel | None = None
    model_error: str | None = None
    images: ImageSet | None = None
    source: str = ""
    group_by_prediction: bool = False
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.model is not None and self.images is not None and len(self.images.items) > 0

    @property
    def labels_in_model_space(self) -> bool:
        """True when image labels are the model's own classes (so top-1 accuracy means something)."""
        return bool(self.model and self.images and self.images.class_names == self.model.class_names)

    def scored_images(self) -> ImageSet | None:
        """The images with labels only where they are model classes (accuracy is undefined otherwise)."""
        if self.images is None or self.labels_in_model_space:
            return self.images
        return replace(self.images, items=[replace(it, label=None) for it in self.images.items])


def upload_limits_help(kind: str = "images") -> str:
    """What an upload widget accepts, for its help text: the size limit per file (``server.maxUploadSize``),
    and for images the pixel limit (``data.MAX_PIXELS`` or ``$SENET_VIZ_MAX_PIXELS``) or the zip limits."""
    size = f"Up to {st.get_option('server.maxUploadSize')} MB per file (server.maxUploadSize)"
    if kind == "weights":
        return f"{size}. .pth/.pt files load with weights_only=True: pickled code is refused."
    try:
        pixels = f"{max_pixels_limit() / 1e6:,.0f} Mpx"
    except ValueError:  # a malformed $SENET_VIZ_MAX_PIXELS: the decoder reports it per image
        pixels = "the configured pixel limit"
    text = (f"{size}; images up to {pixels} each (width x height, SENET_VIZ_MAX_PIXELS); "
            "unreadable files are listed with the reason and the rest is analysed.")
    if kind == "zip":
        text += (f" A zip may hold up to {MAX_ZIP_MEMBERS:,} entries and expand to {MAX_ZIP_BYTES / 2**30:.0f} GiB; "
                 "its first-level folders are the classes.")
    return text


def current() -> Selection:
    return st.session_state.get("selection", Selection())


def _model_label(name: str) -> str:
    spec = zoo.get_spec(name)
    status = zoo.weights_status(name)
    mark = "ready" if status in ("file", "hub cache") else "needs weights"
    return f"{name} — {spec.paper_name} [{mark}]"


def _device_options() -> list[str]:
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _model_section(selection: Selection) -> None:
    names = list(zoo.REGISTRY)
    default = zoo.DEFAULT_MODEL if zoo.DEFAULT_MODEL in names and zoo.weights_status(zoo.DEFAULT_MODEL) == "file" \
        else "tf_mobilenetv3_small_100"
    name = st.selectbox("Model", names, index=names.index(default), format_func=_model_label, key="model_name",
                        help="[ready]: weights present (file or hub cache); [needs weights]: a file or the internet")
    device = st.radio("Device", _device_options(), horizontal=True, key="device",
                      help="auto = CUDA when a GPU is visible, else the CPU")
    if torch.cuda.is_available():
        st.caption(f"GPU: {torch.cuda.get_device_name(0)}")
    weights: str | None = None
    status = zoo.weights_status(name)
    with st.expander("Weights" + ("" if status != "hub (online only)" else " — needed"),
                     expanded=status == "hub (online only)"):
        local = zoo.local_weights_file(name)
        st.caption(f"Found: `{local}`" if local else f"Weights for {name}: {status}.")
        path_text = st.text_input("Path to a weights file on the server", key="weights_path",
                                  placeholder="/path/to/model.safetensors")
        upload = st.file_uploader("…or upload one", type=["safetensors", "pth", "pt", "tflite"], key="weights_upload",
                                  help=upload_limits_help("weights"))
        if upload is not None:
            weights = str(state.save_upload(upload.name, upload.getvalue()))
        elif path_text.strip():
            weights = path_text.strip()
        if status == "hub (online only)" and not weights:
            if st.button("Download from the hub", key="download_weights",
                         help=f"saved under {zoo.download_dir()} and found there next time"):
                bar = st.progress(0.0, text=f"Downloading {name} ...")

                def report(done: int, total: int) -> None:
                    frac = done / total if total else 0.0
                    bar.progress(min(frac, 1.0), text=f"Downloading {name}: {done / 1e6:.1f} of "
                                                      f"{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB")

                try:
                    zoo.download_weights(name, progress=report)
                    st.rerun()
                except WeightsError as exc:
                    bar.empty()
                    st.error(str(exc))
    try:
        selection.model = state.get_model(name, weights, device)
    except (WeightsError, KeyError, ValueError, OSError) as exc:
        selection.model_error = str(exc)
        st.error(f"Could not load {name}: {exc}")


def _class_uploads() -> list[tuple[str, bytes, str | None]]:
    classes = st.session_state.setdefault("upload_classes",
                                          [{"id": 0, "name": "class A"}, {"id": 1, "name": "class B"}])
    files: list[tuple[str, bytes, str | None]] = []
    for cls in list(classes):
        cid = cls["id"]
        cols = st.columns([4, 1])
        cls["name"] = cols[0].text_input("Class name", value=cls["name"], key=f"class_name_{cid}",
                                         label_visibility="collapsed")
        if cols[1].button("✕", key=f"remove_class_{cid}", help="remove this class"):
            classes.remove(cls)
            st.rerun()
        uploads = st.file_uploader(f"Images of {cls['name']}", accept_multiple_files=True, key=f"class_files_{cid}",
                                   label_visibility="collapsed", help=upload_limits_help())
        files += [(u.name, u.getvalue(), cls["name"].strip() or f"class {cid}") for u in uploads or []]
    if st.button("➕ Add class", key="add_class"):
        next_id = max((c["id"] for c in classes), default=-1) + 1
        classes.append({"id": next_id, "name": f"class {chr(65 + next_id % 26)}"})
        st.rerun()
    archive = st.file_uploader("…or a zip whose folders are classes", type=["zip"], key="zip_upload",
                               help=upload_limits_help("zip"))
    if archive is not None:
        files.append((archive.name, archive.getvalue(), None))
    return files


def _class_picker(images: ImageSet, model: zoo.LoadedModel, key: str) -> ImageSet:
    present = images.classes_present()
    if not present:
        return images
    names = {k: images.class_names[k] for k in present}
    default = present
    if len(present) > 12:  # e.g. the 900-class ImageNet sample folder: start with the paper's four classes
        from senet_viz.paper import pick_classes

        default = pick_classes(images, None, model.wnids)
    chosen = st.multiselect(f"Classes ({len(present)} present)", present, default=default, key=key,
                            format_func=lambda k: names[k])
    return images.subset(chosen) if chosen else images.subset([])


def _images_section(selection: Selection) -> None:
    model = selection.model
    spec = model.spec if model else None
    sources = list(SOURCES)
    from senet_viz import fmnist

    if not (spec and spec.labels == fmnist.LABEL_SET and fmnist.fashion_mnist_available()):
        sources.remove("Fashion-MNIST test set")
    source = st.radio("Images", sources, key="image_source")
    selection.source = source
    images: ImageSet | None = None
    try:
        if source == "Embedded samples":
            folder = spec.samples_dir if spec and spec.samples_dir else IMAGENET_SAMPLES
            if spec and spec.labels != "imagenet" and not spec.samples_dir:
                st.warning("This model has no embedded samples; upload images or pick a folder.")
            elif not folder.is_dir():
                st.warning(f"Sample folder {folder} not found; upload images or pick a folder.")
            else:
                st.caption(f"`{folder}`")
                images = _class_picker(folder_source(folder, model.class_names, model.wnids), model,
                                       f"classes_{folder}")
        elif source == "Upload by class":
            files = _class_uploads()
            if files:
                images = uploads_source(files, class_names=model.class_names if model else None)
        elif source == "Folder on the server":
            path = st.text_input("Folder", value=str(IMAGENET_SAMPLES), key="server_folder",
                                 help="ImageNet-style names (n01443537_goldfish.JPEG) or one sub-folder per class")
            if path.strip():
                images = _class_picker(folder_source(Path(path.strip()).expanduser(), model.class_names, model.wnids),
                                       model, f"classes_{path}")
        else:
            limit = st.slider("Test images", 100, 10_000, 1000, step=100, key="fmnist_limit")
            images = fmnist.fashion_mnist_test_source(limit=limit)
    except (FileNotFoundError, ValueError) as exc:
        st.error(f"{exc}")
    selection.group_by_prediction = st.checkbox("Group by predicted class", key="group_by_prediction",
                                                help="classes = the model's top-1 prediction instead of your labels")
    if images is not None:
        selection.images = images
        selection.skipped = list(images.skipped)
        n_classes = len(images.classes_present())
        st.caption(f"{len(images.items)} files in {n_classes} classes (unreadable ones are listed on each page)")
        if images.skipped:
            with st.expander(f"⚠️ {len(images.skipped)} file(s) left out", expanded=True):
                for s in images.skipped:
                    st.markdown(f"- `{s.file}`: {s.reason}")


def render() -> Selection:
    selection = Selection()
    with st.sidebar:
        st.title("senet-viz")
        _model_section(selection)
        if selection.model is not None:
            _images_section(selection)
    st.session_state["selection"] = selection
    return selection
