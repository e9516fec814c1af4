"""Uploads as a labelled source: :func:`uploads_source` over in-memory files, and zip archives expanded safely
(:func:`expand_zip`: refused whole before anything is expanded when it declares too many entries or bytes, each
member streamed with a hard cap at its declared size; nothing touches disk).
"""

from __future__ import annotations

import hashlib
import io
import re
import stat
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import NamedTuple

from senet_viz.data.decode import FORMATS_HINT
from senet_viz.data.labels import match_names
from senet_viz.data.sources import (
    IMAGE_EXTENSIONS,
    NOT_IMAGE_EXTENSIONS,
    ImageItem,
    ImageSet,
    Skipped,
    classify_file,
    is_hidden_or_junk,
)

__all__ = [
    "MAX_ZIP_BYTES",
    "MAX_ZIP_MEMBERS",
    "ExpandedZip",
    "ZipMember",
    "ZipRefused",
    "expand_zip",
    "is_zip_upload",
    "uploads_source",
]

#: Limits for one uploaded zip archive (zip-bomb guard): members, and total declared uncompressed bytes.
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_BYTES = 1 << 30
# Central directory bytes allowed per permitted entry (46 fixed + name + extras; real entries take ~100-200): a
# directory past max_members x this is refused before zipfile builds one object per entry.
_MAX_DIRECTORY_ENTRY = 512


def _base_name(filename: str) -> str:
    """The last component of a path given by a browser or a zip (``/`` or ``\\``), never empty."""
    base = re.split(r"[/\\]", filename.strip())[-1].strip()
    return base or "upload"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _unsafe_member(name: str) -> bool:
    parts = re.split(r"[/\\]", name)
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or ".." in parts


class ZipRefused(ValueError):
    """A whole zip archive was refused before anything was expanded to memory or disk: not a zip, too many
    entries, or more uncompressed bytes than allowed (``declared`` bytes of images against ``limit``).
    ``over_budget``: the limit in force was the caller's byte budget (e.g. a session's), not the per-zip limit."""

    def __init__(self, message: str, declared: int = 0, limit: int = 0, over_budget: bool = False) -> None:
        super().__init__(message)
        self.declared = declared
        self.limit = limit
        self.over_budget = over_budget


class ZipMember(NamedTuple):
    """One image expanded from a zip: its path parts (label folders first), member name, bytes and digest."""

    parts: tuple[str, ...]
    name: str
    data: bytes
    digest: str  # _digest(data), computed once at expansion


@dataclass(frozen=True)
class ExpandedZip:
    """A zip archive expanded once (see :func:`expand_zip`): its image members in memory and what was left out.
    :func:`uploads_source` takes one in place of the archive's bytes, so an app expands each archive once and not
    on every rerun."""

    name: str
    members: tuple[ZipMember, ...]
    skipped: tuple[Skipped, ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes held: the expanded members (the archive's own bytes are not kept)."""
        return sum(len(m.data) for m in self.members)


def is_zip_upload(name: str, data: bytes) -> bool:
    """Whether an upload is read as a zip archive: a ``.zip`` name, or zip bytes under a name without extension."""
    return name.lower().endswith(".zip") or (data[:4] == b"PK\x03\x04" and "." not in _base_name(name))


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory: signature, disk numbers, entries, size, offset, ...
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def _directory_extent(data: bytes) -> tuple[int, int] | None:
    """(entries, central directory bytes) as the end records of a zip declare them, read without parsing the
    directory (None when no end record is found: ``zipfile`` then words the error). Lets a directory of millions
    of entries be refused before ``zipfile`` builds an object per entry."""
    start = data.rfind(b"PK\x05\x06", max(0, len(data) - (1 << 16) - _EOCD.size))
    if start < 0 or start + _EOCD.size > len(data):
        return None
    _sig, _disk, _cd_disk, _n_here, entries, cd_size, _offset, _comment = _EOCD.unpack_from(data, start)
    loc = start - _ZIP64_LOCATOR.size
    if loc >= 0 and data[loc:loc + 4] == b"PK\x06\x07":
        _sig, _disk, eocd64, _disks = _ZIP64_LOCATOR.unpack_from(data, loc)
        if 0 <= eocd64 and eocd64 + _ZIP64_EOCD.size <= len(data) and data[eocd64:eocd64 + 4] == b"PK\x06\x06":
            fields = _ZIP64_EOCD.unpack_from(data, eocd64)
            entries, cd_size = fields[7], fields[8]
    return entries, cd_size


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _read_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """A member's bytes, streamed in chunks and never more than ``cap`` (its declared size, itself within the
    budget): a member whose data runs past what the directory declares is refused, whatever ``zipfile`` does."""
    out = io.BytesIO()  # grows in place and hands its buffer over: no second copy of a large member
    got = 0
    with zf.open(info) as fh:
        while chunk := fh.read(min(1 << 20, cap + 1 - got)):
            got += len(chunk)
            if got > cap:
                raise ZipRefused(f"its data runs past the {cap:,} bytes the zip declares for it")
            out.write(chunk)
    return out.getvalue()


def expand_zip(
    zip_name: str,
    data: bytes,
    *,
    max_members: int = MAX_ZIP_MEMBERS,
    max_bytes: int = MAX_ZIP_BYTES,
    budget: int | None = None,
) -> ExpandedZip:
    """Expand the safe image members of a zip into memory, once; nothing touches disk.

    Refused as a whole (:class:`ZipRefused`, before any member is expanded) when it is no zip, when its end record
    or directory has more than ``max_members`` entries, or when the images its directory declares come to more than
    ``max_bytes`` (the per-zip bomb guard) or than ``budget`` (what the caller has left, e.g. of a session's
    budget; ``over_budget`` is then set). Members are streamed with a hard cap at their declared size, so a
    directory that lies about sizes costs no more than it declares: such a member fails its CRC or runs past the
    cap and is listed in ``skipped``, as are unsafe paths (absolute, ``..``), symbolic links, nested zips and
    non-images. A single folder wrapping every class folder is dropped from the members' parts."""
    extent = _directory_extent(data)
    if extent is not None and (extent[0] > max_members or extent[1] > max_members * _MAX_DIRECTORY_ENTRY):
        raise ZipRefused(f"zip has {extent[0]:,} entries, over the limit of {max_members:,}; "
                         "upload fewer images per archive")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ZipRefused(f"not a valid zip archive ({exc}); re-create it") from None
    skipped: list[Skipped] = []
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise ZipRefused(f"zip has {len(infos):,} entries, over the limit of {max_members:,}; "
                             "upload fewer images per archive")
        wanted: list[tuple[list[str], zipfile.ZipInfo]] = []
        for info in infos:
            name = info.filename
            parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
            if info.is_dir() or not parts:
                continue
            where = f"{zip_name}/{name}"
            if _unsafe_member(name):
                skipped.append(Skipped(where, "unsafe path inside the zip (absolute or '..'); ignored"))
                continue
            if any(is_hidden_or_junk(p) for p in parts):
                continue  # __MACOSX resource forks, .DS_Store, hidden files and folders
            if _is_symlink(info):
                skipped.append(Skipped(where, "symbolic link inside the zip; ignored (zip the files themselves)"))
                continue
            if PurePosixPath(parts[-1]).suffix.lower() == ".zip":
                skipped.append(Skipped(where, "nested zip archives are not expanded; upload it separately"))
                continue
            kind = classify_file(parts[-1], IMAGE_EXTENSIONS)
            if kind == "ignore":
                continue
            if kind != "image":
                skipped.append(Skipped(where, kind))
                continue
            wanted.append((parts, info))
        # The directory's word on sizes, checked before anything is expanded; _read_capped holds it to that word.
        total = sum(info.file_size for _, info in wanted)
        if total > max_bytes:
            raise ZipRefused(f"zip would expand to {total / 2**20:,.1f} MiB, over the limit of "
                             f"{max_bytes / 2**20:,.1f} MiB (possible zip bomb); upload it in parts",
                             declared=total, limit=max_bytes)
        if budget is not None and total > budget:
            raise ZipRefused(f"zip would expand to {total / 2**20:,.1f} MiB of images, over the "
                             f"{max(budget, 0) / 2**20:,.1f} MiB left of the budget",
                             declared=total, limit=budget, over_budget=True)
        members: list[ZipMember] = []
        for parts, info in wanted:
            try:
                blob = _read_capped(zf, info, info.file_size)
            except ZipRefused as exc:
                skipped.append(Skipped(f"{zip_name}/{info.filename}", f"refused: {exc}; re-create the zip"))
                continue
            except Exception as exc:  # encrypted member, bad CRC (e.g. a size that lies), unsupported compression
                skipped.append(Skipped(f"{zip_name}/{info.filename}", f"cannot extract from the zip: {exc}"))
                continue
            members.append(ZipMember(tuple(parts), info.filename, blob, _digest(blob)))
    # A zip of a folder wraps everything in that folder: drop leading folders that all members share,
    # as long as the members still sit in class folders below them.
    while members and all(len(m.parts) > 2 for m in members) and len({m.parts[0] for m in members}) == 1:
        members = [m._replace(parts=m.parts[1:]) for m in members]
    return ExpandedZip(zip_name, tuple(members), tuple(skipped))


def uploads_source(
    files: Sequence[tuple[str, bytes | ExpandedZip, str | None]],
    class_names: list[str] | None = None,
    *,
    max_zip_members: int = MAX_ZIP_MEMBERS,
    max_zip_bytes: int = MAX_ZIP_BYTES,
) -> ImageSet:
    """Build an :class:`ImageSet` from in-memory uploads ``(filename, bytes, class label or None)``.

    A ``.zip`` upload is expanded (:func:`expand_zip`; pass its :class:`ExpandedZip` instead of the bytes to expand
    it only once): its first-level folders (below a single wrapping folder, if any) are
    class labels, files at its top take the zip's own label. Labels index ``class_names`` if it is given and
    *every* label matches one of them (case-insensitive, ``_`` = space); otherwise they index the user's
    label names in order of first appearance, which become the set's ``class_names``.

    ``key`` is ``<sha256 prefix>/<name>``: an identical second upload (same name and bytes) is skipped as a
    duplicate. Empty files and broken or oversized zips are listed in ``skipped``; other files are decoded
    lazily (see :func:`validate`).
    """
    raw: list[tuple[str, str, bytes, str | None, str | None]] = []  # (key name, display, bytes, label, digest)
    skipped: list[Skipped] = []
    for filename, payload, label in files:
        name = _base_name(filename)
        label = label.strip() if isinstance(label, str) and label.strip() else None
        expanded = payload if isinstance(payload, ExpandedZip) else None
        data = b"" if expanded is not None else bytes(payload)
        if expanded is None and not data:
            skipped.append(Skipped(name, "file is empty (0 bytes)"))
            continue
        if expanded is None and is_zip_upload(name, data):
            try:
                expanded = expand_zip(name, data, max_members=max_zip_members, max_bytes=max_zip_bytes)
            except ZipRefused as exc:
                skipped.append(Skipped(name, str(exc)))
                continue
        if expanded is not None:
            skipped.extend(expanded.skipped)
            for member in expanded.members:
                member_label = member.parts[0] if len(member.parts) > 1 else label
                if not member.data:
                    skipped.append(Skipped(f"{name}/{member.name}", "file is empty (0 bytes)"))
                    continue
                raw.append((f"{name}/{member.name}", member.parts[-1], member.data, member_label, member.digest))
            continue
        suffix = PurePosixPath(name).suffix
        if suffix.lower() in NOT_IMAGE_EXTENSIONS:
            skipped.append(Skipped(name, f"not an image file ({suffix}); {FORMATS_HINT}"))
            continue
        raw.append((name, name, data, label, None))

    label_order = list(dict.fromkeys(lbl for _, _, _, lbl, _ in raw if lbl is not None))
    mapping = match_names(label_order, class_names) if class_names is not None else None
    if mapping is not None and class_names is not None:
        out_names = list(class_names)
    else:
        out_names = label_order
        mapping = {lbl: i for i, lbl in enumerate(label_order)}

    items: list[ImageItem] = []
    seen: set[str] = set()
    for key_name, display, blob, lbl, digest in raw:
        key = f"{digest or _digest(blob)}/{key_name}"
        if key in seen:
            skipped.append(Skipped(key_name, "duplicate: same name and content as an earlier upload"))
            continue
        seen.add(key)
        label_idx = mapping[lbl] if lbl is not None else None
        label_name = out_names[label_idx] if label_idx is not None else None
        items.append(ImageItem(key, display, label_idx, label_name, data=blob))
    return ImageSet(items, skipped, out_names)

