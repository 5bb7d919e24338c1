"""Reading SFT JSON arrays as rows: each row's byte range (what a task reads back later), and the
errors for arrays that are not well formed, naming the file and line."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastwds.errors import InvalidInputError
from fastwds.sources.sft.rows import ByteSlice, iter_rows, slice_rows

WHITESPACE = st.text(alphabet=" \t\r\n", max_size=3)
VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                      max_leaves=6)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(VALUES, WHITESPACE, WHITESPACE), max_size=6), bom=st.booleans(),
       opening=WHITESPACE, closing=WHITESPACE, ascii_only=st.booleans())
def test_each_array_row_is_found_with_its_bytes_and_read_back_by_slices(tmp_path_factory, rows, bom, opening, closing,
                                                                        ascii_only):
    elements = [before + json.dumps(value, ensure_ascii=ascii_only) + after for value, before, after in rows]
    text = opening + "[" + ",".join(elements) + "]" + closing
    raw = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    path = tmp_path_factory.mktemp("rows") / "rows.json"
    path.write_bytes(raw)
    found = list(iter_rows(str(path)))
    assert [value for _, _, value in found] == [value for value, _, _ in rows]
    for start, stop, value in found:  # the bytes of the row, and nothing else
        assert json.loads(raw[start:stop]) == value and raw[start:stop] == raw[start:stop].strip()
    # Any run of consecutive rows reads back from its byte range as the plan saw it.
    for first in range(len(found)):
        for last in range(first, len(found)):
            piece = ByteSlice("rows.json", first, last + 1, found[first][0], found[last][1])
            data = raw[piece.byte_start:piece.byte_stop]
            assert list(slice_rows(str(path), data, piece, True)) == [v for _, _, v in found[first:last + 1]]


@pytest.mark.parametrize("text, message", [
    ('[{"id": "a"},\n {"id": }]', "invalid JSON at line 2 column 9: Expecting value"),
    ('[{"id": "a"}\n {"id": "b"}]', "invalid JSON at line 2: expected ',' or ']' between rows"),
    ('[{"id": "a"},\n{"id": "b"}', "invalid JSON at line 2: expected ',' or ']' between rows"),  # never closed
    ('[{"id": "a"}]\n[{"id": "b"}]', "unexpected text after the closing ']'"),
    ('[{"id": "a"},]', "invalid JSON at line 1 column 14: Expecting value"),  # a trailing comma
])
def test_an_array_that_is_not_well_formed_names_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "rows.json"
    path.write_text(text)
    with pytest.raises(InvalidInputError) as error:
        list(iter_rows(str(path)))
    assert str(error.value) == f"{path}: {message}"


def test_an_array_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "rows.json"
    path.write_bytes('[{"id": "café"}]'.encode("cp1252"))
    with pytest.raises(InvalidInputError, match="rows.json: not UTF-8 text"):
        list(iter_rows(str(path)))


@pytest.mark.parametrize("text", ["[]", " [ \n ] \n"])
def test_an_empty_array_has_no_rows(tmp_path, text):
    path = tmp_path / "rows.json"
    path.write_text(text)
    assert list(iter_rows(str(path))) == []


@pytest.mark.parametrize("data", [b'{"id": "a"} {"id": "b"}', b'{"id": "a"}, {"id": ', b'{"id": "a"}, {"id": "b"}, 3'])
def test_a_slice_that_no_longer_holds_the_planned_rows_is_refused(tmp_path, data):
    piece = ByteSlice("rows.json", 4, 6, 100, 100 + len(data))
    with pytest.raises(InvalidInputError, match=r"rows.json: changed since the plan \(rows 4-6 moved\)"):
        list(slice_rows(str(tmp_path / "rows.json"), data, piece, True))
