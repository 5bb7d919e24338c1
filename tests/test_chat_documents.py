"""The sample JSON written by Rust (``_core.chat_documents`` for parquet, ``_core.sft_documents``
for SFT) against the Python rules: any batch gives the same samples, bytes and rejects whether or
not the Rust path is used, and the Rust path is the one taken for plain valid rows."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest
from conftest import jpeg_bytes, png_bytes
from fastwds.convert.plan import RowSlice, Task
from fastwds.sources import get_source
from fastwds.reasons import Problem
from fastwds.sources.base import RowBatch
from fastwds.sources.chat import ChatConverter
from fastwds.sources.parquet.plan import ParquetColumns
from fastwds.sources.parquet.read import to_batch
from fastwds.sources.sft.convert import SftConverter
from fastwds.sources.sft.rows import SftOptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parquet_data import IMAGE

JPEG, PNG = jpeg_bytes(seed=1), png_bytes(seed=2)
IMAGES = [JPEG, PNG, JPEG[: len(JPEG) // 2], b"", b"not an image"]
# Roles as written: the exact spellings Rust writes, and spellings only the Python rules judge.
ROLES = ["human", "gpt", "user", "assistant", "system", "Human", " gpt", "GPT\n", "bot", "", None]
# Pieces of text: tokens, every kind of whitespace Python's strip() knows, escapes JSON needs.
PIECES = ["<image>", "<image", "image>", "<video>", " ", "\t", "\n", "\x0b", "\x1c", "\x1f", "\x85", "\u3000",
          "\x00", "\x01", "\x7f", '"', "\\", "/", "a", "é", "中", "😀", "\u2028"]

TURN = pa.struct([("from", pa.string()), ("value", pa.string()), ("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema([("id", pa.string()), ("image", IMAGE), ("images", pa.list_(IMAGE)),
                    ("conversations", pa.list_(TURN)), ("data_source", pa.string())])

text = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)
VALID_ROLES = ROLES[:5]


@st.composite
def row(draw):
    """A row that is mostly valid (so most rows take the Rust path), with anything Hypothesis
    picks to disturb it: odd role spellings, whitespace-only or non-UTF-8-looking text, token
    counts off by one, broken or empty images, null turns and fields, both image columns."""
    images = draw(st.lists(st.sampled_from(IMAGES[:2] * 8 + IMAGES), max_size=3))
    tokens = len(images) + draw(st.sampled_from([0] * 8 + [1, -1]))
    turns = []
    for number in range(draw(st.integers(0, 3))):
        role = draw(st.sampled_from(VALID_ROLES * 8 + ROLES))
        content = draw(text) + "<image>" * (max(tokens, 0) if number == 0 else 0) + draw(text)
        content = draw(st.sampled_from([content] * 18 + [None, " \x1c\u3000"]))
        spelled_llava = draw(st.booleans())
        turn = {"from": None, "value": None, "role": None, "content": None}
        turn.update({"from": role, "value": content} if spelled_llava else {"role": role, "content": content})
        if draw(st.integers(0, 9)) == 0:  # both spellings: role/content win where not null
            turn.update({"from": draw(st.sampled_from(ROLES)), "value": draw(text)})
        turns.append(draw(st.sampled_from([turn] * 40 + [None])))
    as_list = draw(st.booleans())
    single = {"bytes": images[0], "path": None} if images and not as_list and len(images) == 1 else None
    several = None if single else [{"bytes": data, "path": None} for data in images]
    if draw(st.integers(0, 19)) == 0:
        single = {"bytes": JPEG, "path": None}  # images in both columns
    return {"id": draw(st.sampled_from(["a", "b/c.jpg", "中文", 'q"\n'] * 3 + ["", None])),
            "image": single, "images": several,
            "conversations": draw(st.sampled_from([turns] * 19 + [None])),
            "data_source": draw(st.one_of(st.none(), st.sampled_from(["src", "x\ny", "é"])))}


def converter(options) -> ChatConverter:
    task = Task("s", 0, (RowSlice("f.parquet", 0, 100),))
    return ChatConverter(task, options, ThreadPoolExecutor(1))


def prepared_both_ways(batch, options):
    """What ChatConverter.prepare makes of the batch with and without the Rust path."""
    results = []
    for arrow in (batch.arrow, None):
        conv = converter(options)
        prepared = conv.prepare(dataclasses.replace(batch, arrow=arrow))
        results.append((prepared.ids, prepared.columns, prepared.payload_bytes, conv.result.rejects))
    return results


def options_for(on_invalid: str, verify: str):
    return get_source("parquet").convert_options(source_options=ParquetColumns(), on_invalid=on_invalid,
                                                 verify_images=verify)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(row(), min_size=1, max_size=8), first_row=st.integers(0, 10**6),
       on_invalid=st.sampled_from(["skip", "keep"]), verify=st.sampled_from(["fast", "full"]))
def test_rust_and_python_rules_give_the_same_samples(rows, first_row, on_invalid, verify):
    batch = to_batch("sub/part-0.parquet", first_row, pa.RecordBatch.from_pylist(rows, schema=SCHEMA), ParquetColumns())
    with_rust, python_only = prepared_both_ways(batch, options_for(on_invalid, verify))
    assert with_rust == python_only


def test_plain_rows_take_the_rust_path_and_match_json_dumps():
    rows = [{"id": f"{i:04d}", "image": {"bytes": JPEG, "path": None} if i % 2 else None,
             "images": None if i % 2 else [{"bytes": JPEG, "path": None}, {"bytes": PNG, "path": "p.png"}],
             "conversations": [{"from": "human", "value": "<image>\n" * (1 if i % 2 else 2) + 'What "is" it?\x01',
                                "role": None, "content": None},
                               {"from": None, "value": None, "role": "assistant", "content": "中文 😀"}],
             "data_source": None if i == 3 else "coco"} for i in range(6)]
    batch = to_batch("sub/part-0.parquet", 10, pa.RecordBatch.from_pylist(rows, schema=SCHEMA), ParquetColumns())
    conv = converter(options_for("skip", "fast"))
    documents = conv.simple_documents(batch, conv.load(batch))
    assert all(isinstance(document, bytes) for document in documents)
    expected = {"id": "0003", "conversations": [{"role": "user", "content": '<image>\nWhat "is" it?\x01'},
                                                {"role": "assistant", "content": "中文 😀"}],
                "data_source": None, "images": [{"member": "jpg", "format": "jpeg", "width": 64, "height": 48}],
                "source": {"file": "sub/part-0.parquet", "row": 13}}
    assert documents[3] == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
    with_rust, python_only = prepared_both_ways(batch, options_for("skip", "fast"))
    assert with_rust == python_only and len(with_rust[0]) == 6


@pytest.mark.parametrize("schema_change", ["int ids", "conversations as a JSON string", "int role"])
def test_other_column_types_go_to_the_python_rules(schema_change):
    conversations = [{"role": "user", "content": "<image>"}]
    columns = {"id": pa.array(["a"]), "image": pa.array([{"bytes": JPEG, "path": None}], IMAGE),
               "conversations": pa.array([conversations])}
    if schema_change == "int ids":
        columns["id"] = pa.array([7])
    elif schema_change == "conversations as a JSON string":
        columns["conversations"] = pa.array([json.dumps(conversations)])
    else:
        columns["conversations"] = pa.array([[{"role": 1, "content": "<image>"}]])
    batch = to_batch("f.parquet", 0, pa.RecordBatch.from_pydict(columns), ParquetColumns())
    assert batch.arrow is None


# ---- SFT: the same from the rows' Python values (_core.sft_documents) ---------------------------

SFT_PIECES = PIECES + ["\ud800"]  # JSON's "\ud800" parses into a lone surrogate: not writable text


@st.composite
def sft_row(draw):
    """A row as the SFT reader hands it: its id, its turns as json.loads made them (or odd
    values), its media read (bytes, or the reader's Problem)."""
    media = draw(st.lists(st.sampled_from(IMAGES[:2] * 8 + IMAGES + [Problem("media_missing", "x: no such file")]),
                          max_size=3))
    tokens = len(media) + draw(st.sampled_from([0] * 8 + [1, -1]))
    turns = []
    for number in range(draw(st.sampled_from([1, 2, 2, 3, 3, 0]))):
        # A system turn is only valid first: later ones are mostly the other roles.
        role = draw(st.sampled_from((VALID_ROLES if number == 0 else VALID_ROLES[:4]) * 8 + ROLES + [5]))
        content = draw(st.sampled_from(["ok "] * 4 + [""])) + draw(st.lists(st.sampled_from(SFT_PIECES), max_size=4).map("".join))
        content += "<image>" * (max(tokens, 0) if number == 0 else 0)
        content = draw(st.sampled_from([content] * 18 + [None, "", " \x1c\u3000", 7, ["<image>"]]))
        turn = {"from": role, "value": content} if draw(st.booleans()) else {"role": role, "content": content}
        if draw(st.integers(0, 9)) == 0:
            turn.update({"role": None, "from": draw(st.sampled_from(ROLES))})
        turns.append(draw(st.sampled_from([turn] * 30 + [None, "turn"])))
    conversations = draw(st.sampled_from([turns] * 18 + [None, json.dumps(turns), {"role": "user"}]))
    sample_id = draw(st.sampled_from(["a", "b/c.jpg", "中文", 'q"\n'] * 3 + ["", None, "\udcff"]))
    return sample_id, conversations, media


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(sft_row(), min_size=1, max_size=8), first_row=st.integers(0, 10**6),
       on_invalid=st.sampled_from(["skip", "keep"]))
def test_sft_rust_and_python_rules_give_the_same_samples(rows, first_row, on_invalid):
    batch = RowBatch("data/train.jsonl", first_row, [r[0] for r in rows], [r[1] for r in rows],
                     [r[2] for r in rows], [{} for _ in rows])
    options = get_source("sft").convert_options(source_options=SftOptions(), on_invalid=on_invalid)
    results = []
    for rust in (True, False):
        conv = SftConverter(Task("s", 0, (RowSlice("data/train.jsonl", 0, 100),)), options, ThreadPoolExecutor(1))
        if not rust:
            conv.simple_documents = lambda batch, loaded: [None] * len(batch)
        try:
            prepared = conv.prepare(batch)
            results.append((prepared.ids, prepared.columns, conv.result.rejects))
        except Exception as error:  # both paths must fail alike, too
            results.append(repr(error))
    assert results[0] == results[1]


def test_plain_sft_rows_take_the_rust_path():
    turns = [{"role": "system", "content": "be brief"}, {"from": "human", "value": "<image>\nWhat?"},
             {"from": "gpt", "value": "中文"}]
    batch = RowBatch("train.jsonl", 4, ["x1", "x2"], [turns, turns[1:2] + [{"role": "user", "content": "no image"}]],
                     [[JPEG], []], [{}, {}])
    conv = SftConverter(Task("s", 0, (RowSlice("train.jsonl", 0, 10),)),
                        get_source("sft").convert_options(source_options=SftOptions()), ThreadPoolExecutor(1))
    documents = conv.simple_documents(batch, conv.load(batch))
    expected = {"media": "image", "name": ["jpg"],
                "texts": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "<image>\nWhat?"},
                          {"role": "assistant", "content": "中文"}],
                "id": "x1", "source": {"file": "train.jsonl", "row": 4}}
    assert documents[0] == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
    assert documents[1] is None  # one <image> token, no image: the Python rules reject it
