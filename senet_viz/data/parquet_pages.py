"""What the pages of a Parquet file declare, read from their headers without decoding a page.

A Parquet reader sizes its buffers from each page's header (uncompressed bytes, number of values), while a check
made before reading (:func:`senet_viz.analysis.stats_io.read_state`) sees only the footer. :func:`check_pages` walks
every column chunk's page headers (Thrift compact protocol, parsed here in a few lines: no pickle, no code) and
refuses a file whose pages declare other sizes or value counts than its footer, so that bounds computed from the
footer hold for what the reader will allocate.
"""

from __future__ import annotations

from typing import BinaryIO

HEADER_WINDOW = 1 << 20  # a page header (with its statistics) larger than this is refused
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_MAX_DEPTH = 16


class PageMismatch(ValueError):
    """Page headers that are unreadable or disagree with the footer."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise PageMismatch("a page header holds a malformed number")


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _value(buf: bytes, pos: int, kind: int, depth: int, in_list: bool = False) -> tuple[object, int]:
    if kind in (1, 2):  # booleans: in a field header the type is the value; in a list, one byte
        return (kind == 1, pos) if not in_list else (buf[pos] == 1, pos + 1)
    if kind == 3:
        return buf[pos], pos + 1
    if kind in (4, 5, 6):
        n, pos = _varint(buf, pos)
        return _zigzag(n), pos
    if kind == 7:
        if pos + 8 > len(buf):
            raise IndexError(pos)
        return None, pos + 8
    if kind == 8:
        n, pos = _varint(buf, pos)
        if pos + n > len(buf):
            raise IndexError(pos)
        return None, pos + n
    if depth > _MAX_DEPTH:
        raise PageMismatch("a page header nests too deep")
    if kind in (9, 10):  # list, set
        head = buf[pos]
        pos += 1
        size, element = head >> 4, head & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        for _ in range(size):
            _, pos = _value(buf, pos, element, depth + 1, in_list=True)
        return None, pos
    if kind == 11:  # map
        size, pos = _varint(buf, pos)
        if size:
            types = buf[pos]
            pos += 1
            for _ in range(size):
                _, pos = _value(buf, pos, types >> 4, depth + 1, in_list=True)
                _, pos = _value(buf, pos, types & 0x0F, depth + 1, in_list=True)
        return None, pos
    if kind == 12:
        return _struct(buf, pos, depth + 1)
    raise PageMismatch(f"a page header holds an unknown Thrift type {kind}")


def _struct(buf: bytes, pos: int, depth: int = 0) -> tuple[dict[int, object], int]:
    fields: dict[int, object] = {}
    last = 0
    while True:
        head = buf[pos]
        pos += 1
        if head == 0:
            return fields, pos
        kind, delta = head & 0x0F, head >> 4
        if delta:
            field_id = last + delta
        else:
            n, pos = _varint(buf, pos)
            field_id = _zigzag(n)
        last = field_id
        fields[field_id], pos = _value(buf, pos, kind, depth)


def page_header(f: BinaryIO, pos: int, end: int) -> tuple[dict[int, object], int]:
    """The header of the page at ``pos`` (fields by Thrift id) and its length in bytes."""
    for window in (4096, HEADER_WINDOW):  # headers are small: a large window only when one needs it
        f.seek(pos)
        buf = f.read(min(window, end - pos))
        try:
            return _struct(buf, 0)
        except IndexError:
            if len(buf) < window:
                break
    raise PageMismatch(f"the page header at byte {pos:,} is cut short or over {HEADER_WINDOW // 1024:,} KiB")


def _count(fields: dict[int, object], field_id: int) -> int:
    value = fields.get(field_id)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PageMismatch(f"a page header lacks its field {field_id} or holds a negative size")
    return value


def chunk_pages(f: BinaryIO, start: int, length: int) -> tuple[int, int]:
    """(values in the data pages, uncompressed bytes with headers) of the column chunk at ``[start, start +
    length)``, from its page headers."""
    pos, end, values, uncompressed = start, start + length, 0, 0
    while pos < end:
        header, size = page_header(f, pos, end)
        kind = header.get(1)
        page_bytes, stored = _count(header, 2), _count(header, 3)
        if kind in (_DATA_PAGE, _DATA_PAGE_V2):
            sub = header.get(5 if kind == _DATA_PAGE else 8)
            if not isinstance(sub, dict):
                raise PageMismatch("a data page header lacks its value count")
            values += _count(sub, 1)
        elif kind == _DICTIONARY_PAGE:
            if not isinstance(header.get(7), dict):
                raise PageMismatch("a dictionary page header lacks its value count")
        elif kind != 1:  # 1: an index page
            raise PageMismatch(f"a page of unknown type {kind!r}")
        uncompressed += size + page_bytes
        pos += size + stored
    if pos != end:
        raise PageMismatch("the pages of a column run past their chunk")
    return values, uncompressed


def check_pages(f: BinaryIO, footer) -> None:
    """Refuse a file (:class:`PageMismatch`) whose pages declare other value counts or uncompressed sizes than
    its footer (``footer``: pyarrow's ``FileMetaData``), column chunk by column chunk."""
    for i in range(footer.num_row_groups):
        group = footer.row_group(i)
        for j in range(group.num_columns):
            column = group.column(j)
            offsets = [o for o in (column.dictionary_page_offset, column.data_page_offset) if o]
            start = min(offsets) if offsets else 0
            values, uncompressed = chunk_pages(f, start, column.total_compressed_size)
            if values != column.num_values or uncompressed != column.total_uncompressed_size:
                raise PageMismatch(f"the pages of column {column.path_in_schema} (row group {i}) declare "
                                   f"{values:,} values in {uncompressed:,} bytes, the footer {column.num_values:,} "
                                   f"in {column.total_uncompressed_size:,}: the file is damaged or forged")
