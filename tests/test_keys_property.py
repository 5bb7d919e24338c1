"""Property tests: any ids and payloads round-trip through tarfile, keys stay portable and unique."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import fastwds
import polars as pl
from conftest import read_members
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The key/extension split of webdataset, Energon and HF datasets (COMPAT.md).
READER_SPLIT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@given(st.text(max_size=400))
def test_keys_are_portable(sample_id):
    key = fastwds.portable_key(sample_id)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}", key)
    assert key == fastwds.portable_key(sample_id)
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}", sample_id) and not re.search(r"--[0-9a-f]{16}$", sample_id):
        assert key == sample_id


@given(st.lists(st.text(max_size=120), max_size=40))
def test_portable_keys_is_portable_key_of_each_id(ids):
    from fastwds import _core

    assert _core.portable_keys(ids) == [fastwds.portable_key(sample_id) for sample_id in ids]


def test_derived_keys_keep_their_form():
    """Keys of ids that are not their own key: readable slug, '--', 16 hex digits of sha256(id)."""
    import hashlib

    for sample_id in ("coco/train2017/000000000001.jpg", "ünïcode id", "", "a.b", "x" * 300):
        assert fastwds.portable_key(sample_id).rsplit("--", 1)[1] == \
            hashlib.sha256(sample_id.encode()).hexdigest()[:16]


@given(st.lists(st.one_of(st.text(max_size=90), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,85}(--[0-9a-f]{16})?",
                                                             fullmatch=True)), max_size=30))
def test_repeated_keys_are_found_as_one_python_pass_finds_them(ids):
    """find_repeated_keys (polars, with its own test for which ids are already portable keys)
    against the obvious dict over portable_key, ids repeated to make duplicates and collisions."""
    from fastwds.convert.plan import find_repeated_keys

    ids = ids + ids[::2]
    expected, first = {}, {}
    for position, sample_id in enumerate(ids):
        if not sample_id:
            continue
        key = fastwds.portable_key(sample_id)
        if key in first:
            earlier = first[key]
            reason = "duplicate_id" if ids[earlier] == sample_id else "key_collision"
            expected[position] = (reason, earlier)
        else:
            first[key] = position
    found = find_repeated_keys(pl.Series(ids, dtype=pl.String))
    assert {position: (reason, earlier) for position, (reason, _, earlier) in found.items()} == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.text(max_size=120), st.binary(max_size=2000), st.binary(max_size=600)),
             max_size=12, unique_by=lambda t: t[0]),
)
def test_any_ids_and_payloads_round_trip(samples):
    with tempfile.TemporaryDirectory() as tmp:
        with fastwds.ShardWriter(str(Path(tmp) / "s-%03d.tar"), maxsize=8192, fsync=False) as writer:
            keys = [writer.write({"__key__": i, "bin": a, "0.dat": b}) for i, a, b in samples]
        assert len(set(keys)) == len(samples)
        read = []
        for record in writer.records:
            for m in read_members(record.path):
                key, ext = READER_SPLIT.match(m.name).groups()
                assert len(m.name) <= 100 and m.name.isascii()
                read.append((key, ext, m.data))
        expected = [(k, ext, data) for k, (_, a, b) in zip(keys, samples) for ext, data in (("0.dat", b), ("bin", a))]
        assert read == expected


class EveryKeyCollides:
    """KeyHashes whose hash gives every key the same value: the worst hash there could be."""

    @staticmethod
    def hash_keys(keys):
        import numpy as np
        return np.full(len(keys), 7, dtype=np.uint64)


@given(st.lists(st.lists(st.one_of(st.none(), st.text(max_size=40), st.sampled_from(["a", "a.b", "a_b", "b"]))),
                max_size=6),
       st.booleans())
def test_key_hashes_over_pieces_find_what_one_pass_over_all_ids_finds(pieces, worst_hash):
    """KeyHashes keeps 8 bytes per id and checks exactly only the rows whose hash repeats: the
    same rows, reasons, details and first rows as find_repeated_keys over all ids at once, with
    polars' hash and with one that makes every key collide (a collision never rejects a row).
    Only the pieces holding a candidate are read again."""
    from fastwds.convert.plan import KeyHashes, find_repeated_keys

    hashes = type("Worst", (EveryKeyCollides, KeyHashes), {})() if worst_hash else KeyHashes()
    for piece in pieces:
        hashes.add(pl.Series(piece, dtype=pl.String), "piece")
    read_again = []

    def read_ids(index):
        read_again.append(index)
        return pl.Series(pieces[index], dtype=pl.String)

    found = hashes.find_repeated(read_ids)
    every = [sample_id for piece in pieces for sample_id in piece]
    assert found == find_repeated_keys(pl.Series(every, dtype=pl.String))
    assert read_again == sorted(set(read_again))  # each piece at most once, in order
    if not found and not worst_hash:
        assert read_again == []  # no repeated key: polars' hash of distinct keys did not collide here


def test_a_file_whose_ids_change_between_the_two_reads_is_named():
    """The ids of a file with a possible repeat are read again; a file rewritten in between (other
    row count) is an error naming it, not repeats found at the wrong rows."""
    import pytest
    from fastwds.convert.plan import KeyHashes
    from fastwds.errors import InvalidInputError

    hashes = KeyHashes()
    hashes.add(pl.Series(["a", "b"]), "first.parquet")
    hashes.add(pl.Series(["c", "a"]), "second.parquet")
    with pytest.raises(InvalidInputError, match=r"first\.parquet: changed while planning \(2 ids, then 3\)"):
        hashes.find_repeated(lambda index: pl.Series(["a", "b", "x"] if index == 0 else ["c", "a"]))


def test_derived_keys_made_in_pieces_line_up_with_their_rows(monkeypatch):
    """Ids that are not their own key get theirs from Rust KEYS_AT_ONCE at a time: with pieces of
    4, every row still gets its own id's key, so repeats are found at the same rows."""
    import fastwds.convert.plan as plan

    ids = [f"img/{i % 17}.jpg" if i % 3 else f"row-{i}" for i in range(60)]
    expected = plan.find_repeated_keys(pl.Series(ids))
    monkeypatch.setattr(plan, "KEYS_AT_ONCE", 4)
    assert plan._keyed(pl.Series(ids))["key"].to_list() == [fastwds.portable_key(i) for i in ids]
    assert plan.find_repeated_keys(pl.Series(ids)) == expected and len(expected) == 40 - 17
