"""One session's uploaded images, kept in its ``st.session_state`` and bounded by a byte budget.

The sidebar moves every upload into a store ``{slot: {content digest: (name, payload)}}`` (slot: a class id, or
"zip"), so files survive the uploader widgets being redrawn. A payload is the file's bytes, or for a zip archive
its :class:`~senet_viz.data.uploads.ExpandedZip`: the archive is expanded here, once, and its own bytes are not kept.

The store counts against the session's budget, ``SENET_VIZ_SESSION_MB`` (:func:`ui.serving.budget_bytes`): the
files kept plus what their zips expanded to. An upload that would go past it is refused with a message that says
the budget, what is used and how to free space; nothing already kept is dropped. A zip is checked against what is
left from its central directory, before anything is expanded (:func:`senet_viz.data.uploads.expand_zip`).

All sessions' stores together have a server budget too, ``SENET_VIZ_UPLOADS_MB``: without it, N tabs could hold
N session budgets. It is counted through a ``weakref.WeakSet`` of the live stores (sizes, never bytes).

The store lives only in the session's state: no module-level dict or cache here holds an upload, so its bytes go
when Streamlit drops the session. Streamlit keeps a closed tab's session for a reconnect for 2 minutes and drops
it at the next disconnect after that; until then its uploads still count against the server budget.

Uploaded weights and model files, which the loaders read from disk, are kept apart (:func:`save_upload`): in a
private folder per server process (0700, files 0600, removed at exit), bounded by ``SENET_VIZ_UPLOAD_DISK_MB``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from senet_viz.data import uploads as imagedata
from senet_viz.data.sources import Skipped
from senet_viz.data.uploads import ExpandedZip, ZipRefused
from ui.serving import budget_bytes

SESSION_BUDGET_ENV = "SENET_VIZ_SESSION_MB"
SERVER_BUDGET_ENV = "SENET_VIZ_UPLOADS_MB"

Payload = bytes | ExpandedZip
Store = MutableMapping[str, dict[str, tuple[str, Payload]]]


class UploadStore(dict):
    """One session's store: a dict of slots, weakly referenced by :func:`new_store`'s registry and so hashed and
    compared by identity (two sessions' stores with the same files are two stores)."""

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other


_live_stores: weakref.WeakSet[UploadStore] = weakref.WeakSet()  # weak: a store lives only in its session's state
_live_lock = threading.Lock()


def new_store() -> UploadStore:
    """An empty store for a new session, counted in :func:`server_used` while the session keeps it."""
    store = UploadStore()
    with _live_lock:
        _live_stores.add(store)
    return store


def server_used() -> int:
    """Bytes the uploads of every live session's store hold together."""
    with _live_lock:
        stores = list(_live_stores)
    return sum(used_bytes(store) for store in stores)


def session_budget() -> int:
    """This server's per-session upload budget in bytes (read from the environment at each call)."""
    return budget_bytes(SESSION_BUDGET_ENV)


def server_budget() -> int:
    """This server's budget for all sessions' uploads together, in bytes."""
    return budget_bytes(SERVER_BUDGET_ENV)


def payload_bytes(payload: Payload) -> int:
    """Bytes a kept upload holds: the file, or what its zip expanded to."""
    return payload.nbytes if isinstance(payload, ExpandedZip) else len(payload)


def used_bytes(store: Store) -> int:
    """Bytes the session's kept uploads hold."""
    return sum(payload_bytes(p) for files in store.values() for _, p in files.values())


def bundle_bytes(session_state: Mapping[str, Any]) -> int:
    """Bytes of the analysis bundles a session uploaded (kept under "opened_bundles" by the sidebar, beside paths
    of bundles on the server): they share the session's budget with its images."""
    return sum(len(v) for v in session_state.get("opened_bundles", {}).values() if isinstance(v, bytes))


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def budget_message(name: str, need: int, budget: int, used: int) -> str:
    """Why ``name`` was not kept, and how to make room."""
    return (f"{name} was not added: it needs {_mib(need)}, and this session's uploads may take {_mib(budget)} in "
            f"all ({_mib(used)} used, {_mib(max(budget - used, 0))} free). Free space with \"Manage files\" under a "
            f"class or by removing a class, or ask whoever runs the server to raise {SESSION_BUDGET_ENV}.")


def server_message(name: str, need: int, budget: int, used: int) -> str:
    """Why ``name`` was not kept when the server's uploads, all sessions together, are full."""
    return (f"{name} was not added: it needs {_mib(need)}, and the uploads of everyone using this server are at "
            f"{_mib(used)} of the {_mib(budget)} they may take together ({SERVER_BUDGET_ENV}). Remove files you no "
            "longer need, try again in a few minutes (closed tabs free their uploads), or ask whoever runs the "
            "server to raise it.")


def usage_caption(store: Store, budget: int | None = None, used_elsewhere: int = 0) -> str:
    """One line for the sidebar: how much of the budget the uploads use."""
    budget = session_budget() if budget is None else budget
    return f"Uploads use {_mib(used_bytes(store) + used_elsewhere)} of {_mib(budget)} ({SESSION_BUDGET_ENV})."


def add(store: Store, slot: str, name: str, data: bytes, budget: int | None = None, used_elsewhere: int = 0,
        server: int | None = None) -> str | None:
    """Keep one upload in ``store[slot]``: a zip is expanded once (within what is left of the budgets), any other
    file is kept as is. Returns None when kept (or already there), else the message saying why it was refused;
    a zip refused for what it is (not a zip, a bomb, too many entries) is kept empty, so that the reason is
    listed with the files left out, as for a bad image. ``budget`` (default :func:`session_budget`) bounds this
    session, counting ``used_elsewhere`` (bytes it keeps outside the store: uploaded analysis bundles); ``server``
    (default :func:`server_budget`) bounds every live store together."""
    budget = session_budget() if budget is None else budget
    server = server_budget() if server is None else server
    files = store.setdefault(slot, {})
    digest = hashlib.sha256(data).hexdigest()[:16]
    if digest in files:
        return None
    used = used_bytes(store) + used_elsewhere
    everyone = server_used() + (0 if isinstance(store, UploadStore) and store in _live_stores
                                else used_bytes(store))
    left = max(min(budget - used, server - everyone), 0)

    def refusal(need: int) -> str:
        if server - everyone < budget - used:
            return server_message(name, need, server, everyone)
        return budget_message(name, need, budget, used)

    if imagedata.is_zip_upload(name, data):
        try:
            payload: Payload = imagedata.expand_zip(name, data, budget=left)
        except ZipRefused as exc:
            if exc.over_budget:
                return refusal(exc.declared)
            payload = ExpandedZip(name, (), (Skipped(name, str(exc)),))
    else:
        if len(data) > left:
            return refusal(len(data))
        payload = data
    files[digest] = (name, payload)
    return None


def files_of(store: Store, slot: str, label: str | None) -> list[tuple[str, Payload, str | None]]:
    """A slot's kept uploads as :func:`senet_viz.data.uploads.uploads_source` takes them."""
    return [(name, payload, label) for name, payload in store.get(slot, {}).values()]


def release_widget_file(upload: Any) -> None:
    """Drop an uploaded file from Streamlit's own upload manager once the store holds it: Streamlit keeps every
    file a widget received until the session ends, which would hold each upload (and each zip) twice."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    file_id = getattr(upload, "file_id", None)
    if ctx is not None and file_id:
        ctx.uploaded_file_mgr.remove_file(ctx.session_id, file_id)


# Uploaded files the loaders read from disk (weights, model files) go to one private folder per server process,
# made on first need by tempfile.mkdtemp (mode 0700, an unpredictable name), files 0600, removed when the process
# exits. Worker processes (SENET_VIZ_COMPUTE=processes) run as the same user and read the paths they are given.
_upload_dir: Path | None = None
_upload_dir_lock = threading.Lock()


def _remove_upload_dir(path: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # not from a forked child that inherited the atexit handler
        shutil.rmtree(path, ignore_errors=True)


def upload_dir() -> Path:
    """This process's private upload folder (0700), created on first use and removed at exit."""
    global _upload_dir
    with _upload_dir_lock:
        if _upload_dir is None or not _upload_dir.is_dir():
            _upload_dir = Path(tempfile.mkdtemp(prefix="senet_viz_uploads_"))
            atexit.register(_remove_upload_dir, _upload_dir, os.getpid())
        return _upload_dir


def save_upload(name: str, data: bytes, keep_name: bool = False) -> Path:
    """Keep an uploaded file (weights, a model file) on disk under its content hash (the loaders read files), in
    :func:`upload_dir` with mode 0600; ``keep_name``: in a folder (0700) named by the hash, under the upload's own
    (sanitised) name, which a model file's display name comes from."""
    root = upload_dir()
    digest = hashlib.sha256(data).hexdigest()[:16]
    if keep_name:
        stem = re.sub(r"[^\w.-]", "_", Path(name).name).lstrip(".") or "model"
        path = root / digest / stem
    else:
        suffix = re.sub(r"[^\w.]", "_", Path(name).suffix.lower())
        path = root / f"{digest}{suffix}"
    with _upload_dir_lock:
        if path.exists():
            os.utime(path)  # recently used: the last to be dropped for room
            return path
        _make_room(root, len(data), budget_bytes("SENET_VIZ_UPLOAD_DISK_MB"))
        path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    return path


def _make_room(root: Path, size: int, budget: int) -> None:
    """Drop the least recently used uploaded files until ``size`` more bytes fit in ``budget`` (a file in use is
    written again from its session's upload on the next run); ``ValueError`` when it cannot fit at all."""
    if size > budget:
        raise ValueError(f"the file takes {size / 2**20:,.1f} MiB, over the {budget / 2**20:,.0f} MiB this server "
                         "keeps for uploaded weights and model files (SENET_VIZ_UPLOAD_DISK_MB); give a smaller file "
                         "or ask the operator to raise the limit")
    files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime_ns)
    used = sum(p.stat().st_size for p in files)
    for old in files:
        if used + size <= budget:
            break
        used -= old.stat().st_size
        old.unlink(missing_ok=True)
        if old.parent != root:
            with contextlib.suppress(OSError):
                old.parent.rmdir()  # the folder of a named model file, now empty
