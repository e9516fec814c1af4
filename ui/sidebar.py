"""The sidebar every page shares: model and weights, device, and the images grouped into classes."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st
import torch

from senet_viz.data.decode import max_pixels_limit
from senet_viz.data.folders import folder_source
from senet_viz.data.sources import ImageSet
from senet_viz.data.uploads import MAX_ZIP_BYTES, MAX_ZIP_MEMBERS, ExpandedZip, uploads_source
from senet_viz.models import download, zoo
from senet_viz.models.loaded import LoadedModel, NoGatesError
from senet_viz.models.registry import REGISTRY, get_spec
from senet_viz.models.weights import WeightsError
from senet_viz.paths import SHARED_DIR, OutsideRootsError, file_stamp
from ui import analysis_files, own_model, uploads
from ui.model_cache import get_model
from ui.selection import Selection, publish
from ui.serving import allow_code, budget_bytes, data_roots, server_path
from ui.text import plain
from ui.widgets import kept

IMAGENET_SAMPLES = SHARED_DIR / "data" / "imagenet-samples"
READING_GUIDE = """\
**Gate s.** Each SE block squeezes a feature map to one number per channel (global average pooling), passes it
through a small bottleneck and a sigmoid (or hard-sigmoid), and multiplies every channel by the result, the gate
`s` in [0, 1]. s = 1 lets the channel through unchanged, s = 0 switches it off.

**SE_<stage>_<block>.** The stage is the output-stride level of the block, log2(input size / feature-map size):
for ResNets exactly the paper's conv2_x..conv5_x (stages 2..5). Blocks are numbered from 1 in execution order,
so SE_5_2 is the second SE block of the last stage. The module path is listed beside each name.

**eta² vs spread.** eta² is the share of the gates' variance explained by class, pooled over channels
(sum B / sum (B + W)): scale-free, so a block whose gates hardly move can still score high. Spread is the
absolute distance between the class-mean curves (std across classes / the largest possible): the paper's
"class-agnostic" means the class curves coincide, so read spread for that. eta² needs several images per class.
"""
SOURCES = ("Embedded samples", "Upload by class", "Folder on the server")  # + the model's test set, if installed


def upload_limits_help(kind: str = "images") -> str:
    """What an upload widget accepts, for its help text: the size limit per file (``server.maxUploadSize``),
    and for images the pixel limit (``data.MAX_PIXELS`` or ``$SENET_VIZ_MAX_PIXELS``) or the zip limits."""
    size = f"Up to {st.get_option('server.maxUploadSize')} MB per file (server.maxUploadSize)"
    if kind == "weights":
        return f"{size}. .pth/.pt files load with weights_only=True: pickled code is refused."
    if kind == "bundle":
        return f"{size}; only the bundle's known members are read, nothing in it is executed."
    try:
        pixels = f"{max_pixels_limit() / 1e6:,.0f} Mpx"
    except ValueError:  # a malformed $SENET_VIZ_MAX_PIXELS: the decoder reports it per image
        pixels = "the configured pixel limit"
    session = budget_bytes("SENET_VIZ_SESSION_MB") / 2**20
    text = (f"{size}; images up to {pixels} each (width x height, SENET_VIZ_MAX_PIXELS); "
            "unreadable files are listed with the reason and the rest is analysed. This session's uploads may take "
            f"{session:,.0f} MiB in all (SENET_VIZ_SESSION_MB).")
    if kind == "zip":
        text += (f" A zip may hold up to {MAX_ZIP_MEMBERS:,} entries and expand to {MAX_ZIP_BYTES / 2**30:.0f} GiB "
                 "within that budget; its first-level folders are the classes.")
    return text


def _weights_mark(name: str) -> str:
    return "weights ready" if download.weights_status(name).ready else "needs weights"


def _device_options() -> list[str]:
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


MODEL_FROM = ("Zoo", "Your own model")


@st.cache_data(ttl=300, show_spinner=False)
def _gated_architectures(census_path: str, stamp: tuple[str, int, int]) -> list[str]:
    """timm / torchvision architectures with channel gates, from the census cache of `python -m senet_viz models
    --all` (never computed here: building ~1,450 networks takes minutes); curated ones left out."""
    try:
        entries = json.loads(Path(census_path).read_text()).get("entries", {})
    except (OSError, ValueError):
        return []
    curated = {f"{s.source}:{s.arch}" for s in REGISTRY.values()}
    return sorted(n for n, e in entries.items() if e.get("gates") and n not in curated)


def _picker_names() -> list[str]:
    """The curated models first, then the gated architectures the census cache knows (if it was computed)."""
    names = list(REGISTRY)
    try:
        from senet_viz.gates import census
        path = census.census_file()
        if path.is_file():
            names += _gated_architectures(str(path), file_stamp(path))
    except Exception:  # noqa: BLE001 - the list is a convenience: typing any name still works
        pass
    return names


def _model_section(selection: Selection) -> None:
    origin = st.radio("Model from", MODEL_FROM, horizontal=True, key="model_from",
                      help="the zoo: the curated list, or type any timm / torchvision name; your own: a TorchScript, "
                           "torch.export or ONNX file" + (" or Python code" if allow_code() else ""))
    if origin == MODEL_FROM[1]:
        own_model.render(selection, _device_radio())
        return
    names = _picker_names()
    default = zoo.default_model()  # the spec marked default when its weights are here, else the fallback
    # Options are bare names: the sidebar is narrow and a longer option is cut off; the paper name and whether the
    # weights are here are said under the picker. Any other timm / torchvision name can be typed in.
    name = st.selectbox("Model", names, index=names.index(default), key=kept("model_name"), accept_new_options=True,
                        help="The curated SE networks first, then (once `python -m senet_viz models --all` has run) "
                             "every timm / torchvision architecture with channel gates. Type any other timm or "
                             "torchvision name, e.g. seresnext101_32x8d.ah_in1k or torchvision:regnet_y_16gf "
                             "(timm:/torchvision: when both libraries have the name). Models whose weights are not "
                             "here need a file (Weights below) or the internet")
    try:
        spec = get_spec(name)
    except KeyError as exc:  # the message quotes the typed name: shown as text, never as Markdown
        selection.model_error = plain(str(exc).strip("'\""), None)
        st.error(selection.model_error)
        return
    if not spec.curated:  # a typed name: built on the meta device (no memory, no weights) and refused at once
        try:               # when it has no gates or exceeds the models budget, before any weights are offered
            zoo.check_architecture(name, max_bytes=budget_bytes("SENET_VIZ_MODELS_MB"))
        except (NoGatesError, zoo.ModelTooLargeError) as exc:
            selection.model_error = plain(str(exc), None)
            st.error(selection.model_error)
            return
    st.caption(f"{plain(spec.paper_name)} · {_weights_mark(name)}")
    device = _device_radio()
    weights: str | None = None
    status = download.weights_status(name)
    online_only = status is download.WeightsStatus.HUB_ONLINE
    with st.expander("Weights" + (" — needed" if online_only else ""), expanded=online_only):
        local = download.local_weights_file(name)
        st.caption(f"Found: `{local}`" if local else f"Weights for {plain(name)}: {status.label}.")
        path_text = st.text_input("Path to a weights file on the server", key=kept("weights_path"),
                                  placeholder="/path/to/model.safetensors")
        upload = st.file_uploader("…or upload one", type=["safetensors", "pth", "pt", "tflite"], key="weights_upload",
                                  help=upload_limits_help("weights"))
        if upload is not None:
            try:
                weights = str(uploads.save_upload(upload.name, upload.getvalue()))
            except ValueError as exc:  # over the server's disk budget for uploaded files
                selection.model_error = plain(f"{upload.name} was not kept: {exc}", None)
                st.sidebar.error(selection.model_error)
                return
        elif path_text.strip():
            try:  # inside the operator's roots, symlinks followed; one answer outside, present or missing
                weights = str(server_path(path_text, "weights file"))
            except OutsideRootsError as exc:
                selection.model_error = str(exc)
                st.sidebar.error(str(exc))  # beside the model, not inside the (maybe folded) Weights expander
                return
        if online_only and not weights:
            _offer_download(name)
    if online_only and not weights:  # nothing is fetched without the button: no load until there are weights
        selection.model_error = (f"{plain(name)}: download needed. Its weights are on the hub only; press "
                                 "'Download from the hub' under Weights, or give a weights file.")
        st.info(selection.model_error)
        return
    try:
        selection.model = get_model(name, weights, device)
    except (WeightsError, KeyError, ValueError, OSError) as exc:
        selection.model_error = plain(str(exc), None)
        st.error(f"Could not load {plain(name)}: {selection.model_error}")


def _offer_download(name: str) -> None:
    """The hub download of ``name``'s weights, only on a button press: its size first (a HEAD request), and refused
    when the download folder would exceed ``SENET_VIZ_DOWNLOAD_MB``."""
    budget = budget_bytes("SENET_VIZ_DOWNLOAD_MB")
    used = download.download_dir_bytes()
    try:
        size = download.download_size(name)
    except WeightsError:  # no hub file for this model
        size = None
    size_text = f"{size / 1e6:,.1f} MB" if size else "size unknown"
    over = size is not None and used + size > budget
    st.caption(f"On the hub: {size_text}. Download folder: {used / 1e6:,.0f} of {budget / 1e6:,.0f} MB "
               "(SENET_VIZ_DOWNLOAD_MB).")
    if over:
        st.warning(f"Not enough room: {size_text} would take the download folder over its {budget / 1e6:,.0f} MB. "
                   "Give a weights file instead, or ask the operator to raise SENET_VIZ_DOWNLOAD_MB.")
    if st.button(f"Download from the hub ({size_text})", key="download_weights", disabled=over,
                 help=f"saved under {download.download_dir()} and found there next time"):
        bar = st.progress(0.0, text=f"Downloading {name} ...")

        def report(done: int, total: int) -> None:
            frac = done / total if total else 0.0
            bar.progress(min(frac, 1.0), text=f"Downloading {name}: {done / 1e6:.1f} of "
                                              f"{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB")

        try:
            download.download_weights(name, progress=report, max_bytes=budget)
            st.rerun()
        except WeightsError as exc:
            bar.empty()
            st.error(str(exc))


def _device_radio() -> str:
    device = st.radio("Device", _device_options(), horizontal=True, key=kept("device"),
                      help="auto = CUDA when a GPU is visible, else the CPU")
    if torch.cuda.is_available():
        st.caption(f"GPU: {torch.cuda.get_device_name(0)}")
    return device


def _upload_store() -> uploads.Store:
    """Uploaded files by class id ("zip" for zip archives), each ``{content digest: (name, bytes or expanded zip)}``
    (see :mod:`ui.uploads`: zips are expanded once, on arrival, and the whole store has a byte budget).

    Files live here, not in the uploader widgets: Streamlit drops a widget's files as soon as the widget is not
    drawn (another image source, page or model), so every upload is moved into this store and the uploader is
    emptied. Files leave only when the user removes them (or their class), or when the session ends.
    """
    if "uploaded_files" not in st.session_state:
        st.session_state["uploaded_files"] = uploads.new_store()  # counted in the server's upload budget
    return st.session_state["uploaded_files"]


def _uploader_key(slot: str) -> str:
    return f"class_files_{slot}_{st.session_state.get('upload_generation', 0)}"


def _take_uploads(slot: str, files, notes: list[str]) -> bool:
    """Move newly uploaded files of one uploader into the store, within the session's byte budget; the reasons
    for refused ones go to ``notes``. True when something arrived (kept or refused: the uploader is emptied)."""
    if not files:
        return False
    bundles = uploads.bundle_bytes(st.session_state)  # uploaded analysis bundles share the budget
    for up in files if isinstance(files, list) else [files]:
        note = uploads.add(_upload_store(), slot, up.name, up.getvalue(), used_elsewhere=bundles)
        uploads.release_widget_file(up)  # the store holds it now (a zip: what it expanded to)
        if note:
            notes.append(note)
    return True


def _stored_files_widget(slot: str, label: str) -> None:
    """The files kept for one class, with a way to remove some or all of them."""
    stored = _upload_store().get(slot, {})
    if not stored:
        return
    names = [name for name, _ in stored.values()]
    shown = ", ".join(names[:3]) + (f" … +{len(names) - 3} more" if len(names) > 3 else "")
    size = sum(uploads.payload_bytes(p) for _, p in stored.values())
    st.caption(f"{len(names)} file(s) in {plain(label)}, {size / 2**20:,.1f} MiB: {plain(shown)}")
    with st.popover("Manage files", icon=":material/folder_open:"):
        digests = list(stored)
        drop = st.multiselect("Files to remove", digests, format_func=lambda d: stored[d][0],
                              key=f"drop_files_{slot}")
        c1, c2 = st.columns(2)
        if c1.button("Remove selected", key=f"drop_selected_{slot}", disabled=not drop):
            for d in drop:
                stored.pop(d, None)
            st.session_state.pop(f"drop_files_{slot}", None)
            st.session_state.pop("upload_notes", None)
            st.rerun()
        if c2.button("Remove all", key=f"drop_all_{slot}"):
            stored.clear()
            st.session_state.pop("upload_notes", None)
            st.rerun()


def _class_uploads() -> list[tuple[str, bytes | ExpandedZip, str | None]]:
    classes = st.session_state.setdefault("upload_classes",
                                          [{"id": 0, "name": "class A"}, {"id": 1, "name": "class B"}])
    files: list[tuple[str, bytes | ExpandedZip, str | None]] = []
    notes: list[str] = []
    arrived = False
    for cls in list(classes):
        cid = cls["id"]
        cols = st.columns([5, 1])
        cls["name"] = cols[0].text_input("Class name", value=cls["name"], key=kept(f"class_name_{cid}"),
                                         label_visibility="collapsed")
        if cols[1].button("", icon=":material/close:", key=f"remove_class_{cid}",
                          help="remove this class and its files"):
            classes.remove(cls)
            _upload_store().pop(str(cid), None)
            st.session_state.pop("upload_notes", None)
            st.rerun()
        label = cls["name"].strip() or f"class {cid}"
        widget = st.file_uploader(f"Images of {plain(label)}", accept_multiple_files=True,
                                  key=_uploader_key(str(cid)), label_visibility="collapsed",
                                  help=upload_limits_help())
        arrived |= _take_uploads(str(cid), widget, notes)
        _stored_files_widget(str(cid), label)
        files += uploads.files_of(_upload_store(), str(cid), label)
    if st.button("Add class", icon=":material/add:", key="add_class"):
        next_id = max((c["id"] for c in classes), default=-1) + 1
        classes.append({"id": next_id, "name": f"class {chr(65 + next_id % 26)}"})
        st.rerun()
    archive = st.file_uploader("…or a zip whose folders are classes", type=["zip"], key=_uploader_key("zip"),
                               help=upload_limits_help("zip"))
    arrived |= _take_uploads("zip", archive, notes)
    _stored_files_widget("zip", "zip archives")
    files += uploads.files_of(_upload_store(), "zip", None)
    if arrived:  # empty the uploaders: the files now live in the store, listed under each class
        st.session_state["upload_notes"] = notes  # shown after the rerun, until the next upload or removal
        st.session_state["upload_generation"] = st.session_state.get("upload_generation", 0) + 1
        st.rerun()
    for note in st.session_state.get("upload_notes", []):
        st.error(plain(note, limit=None), icon=":material/block:")
    st.caption(uploads.usage_caption(_upload_store(), used_elsewhere=uploads.bundle_bytes(st.session_state)))
    return files


def _class_picker(images: ImageSet, model: LoadedModel, key: str) -> ImageSet:
    present = images.classes_present()
    if not present:
        return images
    names = {k: images.class_names[k] for k in present}
    everything = st.checkbox(f"All classes ({len(present)})", value=len(present) <= 12, key=kept(f"all_{key}"),
                             help="analyse every class of the folder; untick to choose classes")
    if everything:
        return images
    from senet_viz.analysis.paper import pick_classes

    # Many classes (e.g. the 900-class ImageNet samples): start from the paper's preset, not the first classes.
    default = pick_classes(images, None, model.wnids) if len(present) > 12 else present
    chosen = st.multiselect(f"Classes ({len(present)} present)", present, default=default, key=kept(key),
                            format_func=lambda k: names[k])
    return images.subset(chosen) if chosen else images.subset([])


def _one_image_classes(images: ImageSet) -> tuple[int, int]:
    """(classes with exactly one image, classes) among the labelled images."""
    counts: dict[int, int] = {}
    for it in images.items:
        if it.label is not None:
            counts[it.label] = counts.get(it.label, 0) + 1
    return sum(1 for n in counts.values() if n == 1), len(counts)


def _images_section(selection: Selection) -> None:
    model = selection.model
    spec = model.spec if model else None
    test_set = spec.test_set if spec and spec.test_set and spec.test_set.available() else None
    sources = [*SOURCES, test_set.name] if test_set else list(SOURCES)
    source = st.radio("Images", sources, key=kept("image_source"))
    selection.source = source
    images: ImageSet | None = None
    try:
        if source == "Embedded samples":
            folder = spec.samples_dir if spec and spec.samples_dir else IMAGENET_SAMPLES
            if (spec and spec.labels != "imagenet" and not spec.samples_dir) or (spec is None and not model.wnids):
                st.warning("This model has no embedded samples; upload images or pick a folder.")
            elif not folder.is_dir():
                st.warning(f"Sample folder {folder} not found; upload images or pick a folder.")
            else:
                st.caption(f"`{folder}`")
                selection.origin = str(folder)
                # the app's own folder (not typed): the bounded walk, remembered across reruns and sessions
                images = _class_picker(folder_source(folder, model.class_names, model.wnids), model,
                                       f"classes_{folder}")
        elif source == "Upload by class":
            files = _class_uploads()
            if files:
                images = uploads_source(files, class_names=model.class_names if model else None)
        elif source == "Folder on the server":
            imagenet = spec is not None and spec.labels == "imagenet"
            default_folder = IMAGENET_SAMPLES if imagenet or not (spec and spec.samples_dir) else spec.samples_dir
            path = st.text_input("Folder", value=str(default_folder), key=kept("server_folder"),
                                 help="ImageNet-style names (n01443537_goldfish.JPEG) or one sub-folder per class")
            if path.strip():
                # wnids label files only for ImageNet models; for others wnid-named files stay unlabelled
                wnids = model.wnids if model.wnids is not None else []
                # a typed path: inside the operator's roots (symlinks followed, one answer outside), then a
                # bounded walk (files, depth, seconds) remembered per folder stamp across reruns and sessions
                folder = server_path(path, "image folder")
                selection.origin = str(folder)
                images = _class_picker(folder_source(folder, model.class_names, wnids, within=data_roots()),
                                       model, f"classes_{path}")
        elif test_set is not None:
            limit = st.slider("Test images", 100, test_set.size, min(1000, test_set.size), step=100,
                              key=kept("fmnist_limit"))
            images = test_set.load(limit=limit)
    except (FileNotFoundError, ValueError) as exc:  # messages quote the typed folder: shown as typed, not markup
        st.error(plain(str(exc), None))
    selection.group_by_prediction = st.checkbox("Group by predicted class", key=kept("group_by_prediction"),
                                                help="classes = the model's top-1 prediction instead of your labels")
    if images is not None:
        selection.images = images
        selection.skipped = list(images.skipped)
        n_classes = len(images.classes_present())
        st.caption(f"{len(images.items)} files in {n_classes} classes (unreadable ones are listed on each page)")
        singles, n_labelled = _one_image_classes(images)
        if singles and singles == n_labelled:
            st.warning("Every class has one image: within-class spread (eta², Fig. 7's ±1 std bands, percentiles "
                       "within a class) cannot be computed; class-mean comparisons still work. Add images per "
                       "class for those.")
        elif singles:
            st.warning(f"{singles} of {n_labelled} classes have a single image: their within-class spread cannot "
                       f"be computed.")
        if images.skipped:
            with st.expander(f"{len(images.skipped)} file(s) left out", expanded=True, icon=":material/warning:"):
                for s in images.skipped:
                    st.markdown(f"- {plain(s.file)}: {plain(s.reason, None)}")


WORK_FROM = ("A model and images", "An analysis file")


def render() -> Selection:
    selection = Selection()
    with st.sidebar:
        st.title("senet-viz")
        with st.expander("What am I looking at?", icon=":material/help:"):
            st.markdown(READING_GUIDE)
        work_from = st.radio("Work from", WORK_FROM, key=kept("work_from"), horizontal=True,
                             help="an analysis file holds the statistics of a run made elsewhere (e.g. 50,000 "
                                  "ImageNet images on a GPU): Compare classes, Depth and Export work from it alone")
        if work_from == WORK_FROM[1]:
            selection.bundle = analysis_files.pick()
        else:
            _model_section(selection)
            if selection.model is not None:
                _images_section(selection)
    publish(selection)
    return selection
