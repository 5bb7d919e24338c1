"""`fastwds convert sft` end to end, through the CLI as a user runs it: validation reasons,
media members and the Energon-style sample JSON, read back with webdataset and tarfile."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import fastwds
import pytest
from conftest import jpeg_bytes, read_members, read_webdataset, run_cli
from fastwds.convert.options import ConvertOptions
from fastwds.convert.run import convert
from fastwds.reasons import REJECT_REASONS as REASONS
from fastwds.sources.sft import SftOptions, check_names_agree, plan_sft
from fastwds import storage
from fastwds.sources.sft.rows import slice_rows
from fastwds.video import VideoInfo, inspect_video
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sft_data import chat, make_image_dataset, make_video_dataset, video_bytes


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_dataset(tmp_path_factory.mktemp("sft-images"))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_video_dataset(tmp_path_factory.mktemp("sft-videos"))


@pytest.fixture(scope="module")
def converted(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "out"
    run_cli("convert", "sft", str(images.root / "data.json"), str(images.root / "nested" / "*.jsonl"), str(out),
            "--max-samples-per-shard", "4", "--no-progress")
    return out


def samples_by_id(output: Path) -> dict[str, dict]:
    manifest = json.loads((output / "manifest.json").read_text())
    samples = {}
    for sample in read_webdataset([str(output / s["name"]) for s in manifest["shards"]]):
        document = json.loads(sample["json"])
        assert document["id"] not in samples, f"{document['id']} written twice"
        samples[document["id"]] = sample
    return samples


def test_every_reason_is_named_and_every_valid_row_arrives_with_its_media(images, converted):
    rejects = [json.loads(line) for line in (converted / "rejects.jsonl").read_text().splitlines()]
    assert Counter(r["reason"] for r in rejects) == Counter(e.reason for e in images.expected if e.reason)
    assert {r["reason"] for r in rejects} <= REASONS.keys(), "every reason is registered in fastwds.reasons"
    assert {r["id"]: r["reason"] for r in rejects} == {e.id: e.reason for e in images.expected if e.reason}
    details = {r["id"]: r["detail"] for r in rejects}
    assert str(images.root / "images" / "nope.jpg") in details["missing"]
    assert str(images.root / "images" / "a-folder.jpg") in details["folder"]
    assert details["nested__more-1"].startswith("line 3:")  # the JSONL line number, blank lines counted

    samples = samples_by_id(converted)
    assert sorted(samples) == sorted(e.id for e in images.valid)
    for expected in images.valid:
        sample = samples[expected.id]
        document = json.loads(sample["json"])
        assert list(document) == ["media", "name", "texts", "id", "source"]
        assert document["name"] == expected.exts
        # The members are exactly the ones named, with the original bytes (no re-encoding).
        assert sorted(k for k in sample if not k.startswith("__") and k != "json") == sorted(expected.exts)
        assert [sample[name] for name in document["name"]] == [images.files[f] for f in expected.media]
        assert document["media"] == ("image" if expected.media else "text")
        assert all(turn.keys() == {"role", "content"} for turn in document["texts"])
        assert [t["content"] for t in document["texts"] if t["role"] == "system"] == (
            [expected.system] if expected.system is not None else [])
    assert json.loads(samples["plain"]["json"])["texts"][0] == {"role": "user", "content": "<image>\nWhat?"}
    assert json.loads(samples["data-6"]["json"])["source"] == {"file": "data.json", "row": 6}
    assert json.loads(samples["nested-relative"]["json"])["source"] == {"file": "nested/more.jsonl", "row": 0}


def test_shards_read_with_tarfile_and_each_member_belongs_to_its_sample(converted):
    manifest = json.loads((converted / "manifest.json").read_text())
    assert len(manifest["shards"]) >= 4  # --max-samples-per-shard 4
    for shard in manifest["shards"]:
        members = read_members(converted / shard["name"])
        keys = [m.name.split(".", 1)[0] for m in members]
        assert len(set(keys)) == shard["samples"]
        assert (converted / (shard["name"] + ".idx")).stat().st_size == 8 * (shard["samples"] + 1)


def test_videos_pass_through_named_by_their_container(videos, tmp_path):
    out = tmp_path / "out"
    result = run_cli("convert", "sft", str(videos.root / "videos.jsonl"), str(out), "--media", "video", "--json")
    summary = json.loads(result.stdout)
    assert summary["invalid_by_reason"] == dict(Counter(e.reason for e in videos.expected if e.reason))
    samples = samples_by_id(out)
    assert sorted(samples) == sorted(e.id for e in videos.valid)
    for expected in videos.valid:
        document = json.loads(samples[expected.id]["json"])
        assert document["name"] == expected.exts
        assert document["media"] == ("video" if expected.media else "text")
        assert [samples[expected.id][n] for n in document["name"]] == [videos.files[f] for f in expected.media]


def test_media_root(tmp_path):
    media = tmp_path / "elsewhere"
    media.mkdir()
    (media / "x.jpg").write_bytes(jpeg_bytes(seed=3))
    data = tmp_path / "json" / "data.jsonl"
    data.parent.mkdir()
    data.write_text(json.dumps({"id": "x", "image": "x.jpg", "messages": chat("<image>")}) + "\n")
    out = tmp_path / "out"
    refused = run_cli("convert", "sft", str(data), str(out), "--json", check=False)
    # Relative to the JSON file by default: the one row is rejected, and a run that writes
    # nothing is not a success (the summary is still printed).
    assert refused.returncode == 1 and "every one of the 1 input rows was rejected" in refused.stderr
    assert json.loads(refused.stdout)["invalid_by_reason"] == {"media_missing": 1}
    found = json.loads(run_cli("convert", "sft", str(data), str(out), "--overwrite", "--json",
                               "--media-root", str(media)).stdout)
    assert found["samples"] == 1 and samples_by_id(out)["x"]["jpg"] == jpeg_bytes(seed=3)


def test_keep_writes_invalid_rows_flagged_and_names_still_match_members(images, tmp_path):
    out = tmp_path / "out"
    run_cli("convert", "sft", str(images.root / "data.json"), str(out), "--on-invalid", "keep", "--no-progress")
    samples = samples_by_id(out)
    for sample_id in ("missing", "folder", "too-few", "truncated"):
        document = json.loads(samples[sample_id]["json"])
        assert document["invalid"]["reason"] in ("media_missing", "media_unreadable", "image_token_mismatch",
                                                 "image_truncated")
    for sample in samples.values():
        document = json.loads(sample["json"])
        assert set(document["name"]) == {k for k in sample if not k.startswith("__") and k != "json"}
    # Media that failed their checks are not written, so the name list cannot promise them.
    assert json.loads(samples["truncated"]["json"])["name"] == []
    assert json.loads(samples["too-few"]["json"])["name"] == ["jpg"]


def test_fail_stops_at_the_first_invalid_row_naming_it(images, tmp_path):
    result = run_cli("convert", "sft", str(images.root / "data.json"), str(tmp_path / "out"), "--on-invalid",
                     "fail", "--no-progress", check=False)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fastwds: error: ") and "data.json row" in last


def test_same_bytes_for_any_worker_count_and_resume_is_a_noop(images, tmp_path):
    outputs = []
    for workers in ("1", "3"):
        out = tmp_path / f"w{workers}"
        run_cli("convert", "sft", str(images.root / "data.json"), str(images.root / "nested" / "more.jsonl"),
                str(out), "--max-samples-per-shard", "3", "--num-workers", workers, "--split-ratio", "8,1,1",
                "--no-progress")
        outputs.append(out)

    def files(out: Path) -> dict[str, bytes]:
        found = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
                 if p.is_file() and ".fastwds" not in p.parts and p.name not in ("manifest.json", "index.wids.json")}
        assert any(name.startswith(".nv-meta/") for name in found)
        return found

    first = files(outputs[0])
    assert first == files(outputs[1])
    again = run_cli("convert", "sft", str(images.root / "data.json"), str(images.root / "nested" / "more.jsonl"),
                    str(outputs[0]), "--max-samples-per-shard", "3", "--split-ratio", "8,1,1", check=False)
    assert again.returncode == 1 and "--resume" in again.stderr
    run_cli("convert", "sft", str(images.root / "data.json"), str(images.root / "nested" / "more.jsonl"),
            str(outputs[0]), "--max-samples-per-shard", "3", "--split-ratio", "8,1,1", "--resume", "--no-progress")
    assert files(outputs[0]) == first
    changed = run_cli("convert", "sft", str(images.root / "data.json"), str(images.root / "nested" / "more.jsonl"),
                      str(outputs[0]), "--max-samples-per-shard", "3", "--split-ratio", "1,0,0", "--resume",
                      check=False)
    assert changed.returncode == 1 and "split_ratio" not in changed.stderr and "source_options" in changed.stderr


def test_clear_errors_for_bad_input(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "a"},\n {"id": }]')
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [{"id": "a", "messages": chat("hi")}]}, indent=2))
    cases = [
        ((str(wrapped), str(tmp_path / "o")), "a JSON object with keys ['data'], not a list of samples"),
        ((str(bad), str(tmp_path / "o")), "bad.json: invalid JSON at line 2"),
        ((str(tmp_path / "none.json"), str(tmp_path / "o")), "none.json: no such file"),
        ((str(tmp_path / "*.nothing"), str(tmp_path / "o")), "no file matches"),
        ((str(bad), str(bad)), "the last argument must be the output folder"),
        ((str(bad), str(tmp_path / "o"), "--media-root", str(tmp_path / "nope")), "no such folder"),
        ((str(bad), str(tmp_path / "o"), "--energon-sample-type", "nocolon"), "expected MODULE:CLASS"),
        ((str(bad), str(tmp_path / "o"), "--no-energon", "--split-ratio", "8,1,1"), "needs --energon"),
    ]
    for args, message in cases:
        result = run_cli("convert", "sft", *args, check=False)
        assert result.returncode == 1, args
        assert result.stderr.strip().splitlines()[-1].startswith("fastwds: error: ") and message in result.stderr
    usage = run_cli("convert", "sft", str(bad), str(tmp_path / "o"), "--split-ratio", "8,1", check=False)
    assert usage.returncode == 2 and "not a train,val,test ratio" in usage.stderr


@pytest.mark.parametrize("flags", [(), ("--allow-media-outside-root",)])
def test_media_urls_fastwds_cannot_read_say_so_once(tmp_path, flags):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"id": i, "image": image, "messages": chat("<image> hm")})
                                                 + "\n" for i, image in [("web", "http://127.0.0.1:9/a.jpg"),
                                                                         ("ok", "a.jpg")]))
    out = tmp_path / "out"
    run_cli("convert", "sft", str(tmp_path / "data.jsonl"), str(out), "--no-progress", *flags)
    [reject] = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert reject["id"] == "web" and reject["reason"] == "media_unreadable", reject
    assert reject["detail"].count("http://127.0.0.1:9/a.jpg") == 1 and "not http://" in reject["detail"], reject


def test_names_that_disagree_with_members_are_refused():
    check_names_agree("ok", ["0.jpg", "1.png"], {"0.jpg": b"x", "1.png": b"y", "json": b"{}"})
    for names, members in ((["jpg"], {"json": b"{}"}), ([], {"jpg": b"x", "json": b"{}"}),
                           (["jpg", "jpg"], {"jpg": b"x", "json": b"{}"}), (["jpg"], {"jpg": b"", "json": b"{}"})):
        with pytest.raises(Exception, match="does not match"):
            check_names_agree("bad", names, members)


rows_strategy = st.lists(st.fixed_dictionaries({
    "id": st.text(min_size=1, max_size=8),
    "messages": st.just(chat("hi")),
    "note": st.text(max_size=12),  # non-ASCII text moves byte offsets away from character offsets
}), max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy, indent=st.sampled_from([None, 0, 2]), bom=st.booleans(), jsonl=st.booleans(),
       per_task=st.integers(1, 5))
def test_each_task_reads_exactly_its_rows_from_its_byte_range(tmp_path, rows, indent, bom, jsonl, per_task):
    path = tmp_path / ("rows.jsonl" if jsonl else "rows.json")
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) if jsonl else \
        json.dumps(rows, ensure_ascii=False, indent=indent)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    plan = plan_sft([str(path)], SftOptions(energon=False), per_task, 10**9)
    read = [row for task in plan.tasks for piece in task.slices
            for row in slice_rows(str(tmp_path / piece.file),
                                  storage.read_range(str(tmp_path / piece.file), piece.byte_start, piece.byte_stop),
                                  piece, not jsonl)]
    assert read == rows


def test_media_reads_are_concurrent(tmp_path, monkeypatch):
    """Every media read waits at a barrier until eight reads are in progress at once: a reader
    that read one file at a time (or a few) would never get past it. (FIFOs used to stand in for a
    slow network file system here; fastwds now refuses them, see test_hostile_input.py.) Reads go
    to threads a group of rows at a time: eight groups here."""
    from fastwds.sources.sft import media

    assert media.GROUPS_AHEAD >= 8
    count = media.GROUP_ROWS * 8
    data = tmp_path / "data.jsonl"
    rows = [{"id": f"r{i}", "image": f"p{i}.jpg", "messages": chat("<image>")} for i in range(count)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for i in range(count):
        (tmp_path / f"p{i}.jpg").write_bytes(jpeg_bytes(seed=11))
    together = threading.Barrier(8, timeout=30)
    concurrent = []
    real_read = media.read_media_files

    def slow_read(paths, root, max_bytes):  # one call per group of rows
        concurrent.append(together.wait())  # BrokenBarrierError after 30 s if fewer than 8 at once
        return real_read(paths, root, max_bytes)

    monkeypatch.setattr(media, "read_media_files", slow_read)
    options = ConvertOptions(source_options=SftOptions(energon=False), fsync=False)
    manifest = convert(plan_sft([str(data)], options.source_options, 1000, 10**9), tmp_path / "out", options,
                       command="test", show_progress=False)
    assert len(concurrent) == 8 and manifest["totals"]["samples"] == count


def test_tasks_are_sized_by_media_bytes_so_large_media_do_not_spill(tmp_path):
    image = jpeg_bytes(160, 160, seed=12)
    for i in range(24):
        (tmp_path / f"{i}.jpg").write_bytes(image)
    data = tmp_path / "big.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "image": f"{i}.jpg", "messages": chat("<image>")}) + "\n"
                            for i in range(24)))
    out = tmp_path / "out"
    summary = json.loads(run_cli("convert", "sft", str(data), str(out), "--max-shard-size", str(4 * len(image) + 8192),
                                 "--json").stdout)
    # About 4 rows per task from the plan's size estimate; without it one task would spill into
    # shards named big-000000-1.tar, big-000000-2.tar, ...
    assert summary["shards"] == [f"big-{i:06d}.tar" for i in range(len(summary["shards"]))]
    assert 6 <= len(summary["shards"]) <= 8 and summary["samples"] == 24
    limited = json.loads(run_cli("convert", "sft", str(data), str(tmp_path / "limited"), "--limit", "5",
                                 "--json").stdout)
    assert limited["rows"] == 5 and limited["samples"] == 5


def test_reencode_turns_every_image_into_jpeg_and_names_follow(images, tmp_path):
    out = tmp_path / "out"
    run_cli("convert", "sft", str(images.root / "data.json"), str(out), "--reencode", "jpeg", "--no-progress")
    samples = samples_by_id(out)
    multi = samples["multi"]
    assert json.loads(multi["json"])["name"] == ["0.jpg", "1.jpg", "2.jpg"]
    assert all(multi[name].startswith(b"\xff\xd8") for name in ("0.jpg", "1.jpg", "2.jpg"))
    assert json.loads(samples["png-one"]["json"])["name"] == ["jpg"]


def test_an_image_that_cannot_be_reencoded_is_a_rejected_row(tmp_path):
    """SFT media read from files: an image with a good header and broken pixel data is rejected
    as image_decode_failed under --reencode; with --on-invalid keep the row stays, without that
    image (``name`` lists only media that passed)."""
    from parquet_data import corrupt_png

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "good.jpg").write_bytes(jpeg_bytes(seed=3))
    (tmp_path / "img" / "broken.png").write_bytes(corrupt_png())
    rows = [{"id": "ok", "image": "img/good.jpg", "conversations": chat("<image>\nwhat is it?")},
            {"id": "bad", "image": "img/broken.png", "conversations": chat("<image>\nwhat is it?")}]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    out = tmp_path / "out"
    summary = json.loads(run_cli("convert", "sft", str(data), str(out), "--reencode", "jpeg", "--json").stdout)
    assert summary["invalid_by_reason"] == {"image_decode_failed": 1} and sorted(samples_by_id(out)) == ["ok"]
    kept = tmp_path / "kept"
    run_cli("convert", "sft", str(data), str(kept), "--reencode", "jpeg", "--on-invalid", "keep", "--no-progress")
    bad = samples_by_id(kept)["bad"]
    assert json.loads(bad["json"])["name"] == [] and {name for name in bad if not name.startswith("__")} == {"json"}


@pytest.mark.parametrize("keep", [False, True])
def test_a_lone_surrogate_or_an_id_that_is_no_string_costs_only_its_row(tmp_path, keep):
    """JSON's \\ud800 escapes parse into text that is not Unicode: such a row (in its text or its
    id) is rejected as invalid_unicode, naming the escape, instead of failing the whole job; an id
    that is an array, object or boolean is bad_sample instead of becoming "[1, 2]" or "True"."""
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(seed=4))
    turns = json.dumps(chat("<image>\nfine"))
    lines = [f'{{"id": "good", "image": "a.jpg", "conversations": {turns}}}',
             f'{{"id": "emoji \\ud83d\\ude00", "image": "a.jpg", "conversations": {turns}}}',  # a pair: fine
             '{"id": "text", "image": "a.jpg", "conversations": [{"role": "user", "content": "<image> \\ud800"}, '
             '{"role": "assistant", "content": "a"}]}',
             f'{{"id": "bad \\udc00", "image": "a.jpg", "conversations": {turns}}}',
             f'{{"id": [1, 2], "image": "a.jpg", "conversations": {turns}}}',
             f'{{"id": true, "image": "a.jpg", "conversations": {turns}}}']
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = run_cli("convert", "sft", str(data), str(out), "--json", *(["--on-invalid", "keep"] if keep else []))
    summary = json.loads(result.stdout)
    assert summary["invalid_by_reason"] == {"invalid_unicode": 2, "bad_sample": 2}, summary
    assert sorted(samples_by_id(out)) == ["emoji \U0001f600", "good"]  # not even kept: it cannot be written
    rejects = {r["row"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert "'\\ud800'" in rejects[2]["detail"] and rejects[3]["id"] == "bad \\udc00", rejects
    assert rejects[4]["detail"] == "the id is a JSON array, not a string or a number"


def test_fields_fastwds_does_not_read_are_named_and_none_is_dropped_silently(tmp_path):
    """Media under another field (``img``) made a text-only sample without a word: planning now
    names such fields. A ShareGPT ``system`` field becomes the first turn (it was dropped);
    ``messages`` with ``conversations`` is refused like ``image`` with ``images`` (one was dropped)."""
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(seed=5))
    rows = [{"id": "img", "img": "a.jpg", "conversations": chat("Describe.")},
            {"id": "system", "system": "You are a radiologist.", "image": "a.jpg", "conversations": chat("<image>")},
            {"id": "two-turn-fields", "messages": chat("a"), "conversations": chat("b")},
            {"id": "system-twice", "system": "S", "conversations": chat("a", system="T")}]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    out = tmp_path / "out"
    result = run_cli("convert", "sft", str(data), str(out), "--json")
    assert "fields fastwds does not read" in result.stderr and "'img' (1)" in result.stderr, result.stderr
    assert json.loads(result.stdout)["invalid_by_reason"] == {"bad_sample": 2}
    texts = {sample_id: json.loads(sample["json"])["texts"] for sample_id, sample in samples_by_id(out).items()}
    assert texts["system"][0] == {"role": "system", "content": "You are a radiologist."}
    assert [turn["role"] for turn in texts["system"]] == ["system", "user", "assistant"]
    details = sorted(json.loads(line)["detail"] for line in (out / "rejects.jsonl").read_text().splitlines())
    assert details == ["the row has both 'messages' and 'conversations'",
                       "the row has both a 'system' field and a system turn"]


def test_content_as_a_list_of_parts_is_named_as_such(tmp_path):
    """HF chat templates' ``content: [{type: image}, {type: text, text}]`` was rejected as
    "turn 0 (user) has no text"; the reason now says what the turn holds."""
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(seed=6))
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
             {"role": "assistant", "content": "A cat."}]
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"id": "parts", "image": "a.jpg", "messages": turns}) + "\n")
    result = run_cli("convert", "sft", str(data), str(tmp_path / "out"), check=False)
    assert result.returncode == 1  # nothing written
    [reject] = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert reject["reason"] == "bad_turn" and "content is a list of parts" in reject["detail"], reject


@pytest.mark.parametrize("container, codec, expected", [("mp4", "mpeg4", "mp4"), ("mov", "mpeg4", "mov"),
                                                        ("webm", "libvpx", "webm"), ("matroska", "mpeg4", "mkv"),
                                                        ("avi", "mpeg4", "avi")])
def test_video_containers_are_recognised_and_truncation_seen(container, codec, expected):
    data = video_bytes(container, codec)
    assert inspect_video(data) == VideoInfo(expected)
    if expected in ("mp4", "mov", "avi"):  # containers that state their own length
        assert inspect_video(data[:-16]).reason == "video_truncated"
    assert inspect_video(b"").reason == "video_empty"
    assert inspect_video(b"GIF89a" + data).reason == "video_unknown_format"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.lists(st.sampled_from(["a", "b", "c/d", "c_d", None, None, "part0-0", "part0-1",
                                                "part0-0~1", "part1-0"])), min_size=1, max_size=3),
       piece_rows=st.integers(1, 4))
def test_repeated_ids_are_found_across_pieces_and_files(tmp_path, monkeypatch, files, piece_rows):
    """Planning holds each row's id only until its piece of ID_PIECE_ROWS rows becomes key hashes;
    the files whose rows may repeat a key are parsed again. Whatever the pieces, the plan is what a
    plain pass over all ids gives:
    - among rows with their own id, an id seen before is duplicate_id, a different id with the same
      key ("c/d" and "c_d" do not collide: the derived key has a hash suffix) a key_collision;
    - a row without an id gets ``file-row`` (part0.jsonl and part0.json derive the same ones) and
      never costs another row: should that id's key be another row's own id's, or an earlier
      derived one's, the row becomes ``file-row~N``, the first N whose key no row has."""
    import fastwds.sources.sft.plan as sft_plan

    monkeypatch.setattr(sft_plan, "ID_PIECE_ROWS", piece_rows)
    paths, rows = [], []  # rows: (position, own id or None, derived id)
    for number, ids in enumerate(files):
        path = tmp_path / f"part{number // 2}.{'jsonl' if number % 2 == 0 else 'json'}"
        path.write_text("".join(json.dumps({"messages": chat("hi"), **({"id": i} if i else {})}) + "\n" for i in ids))
        paths.append(str(path))
        rows += [(len(rows) + row, sample_id, f"part{number // 2}-{row}") for row, sample_id in enumerate(ids)]
    key = fastwds.portable_key
    expected, first_own = {}, {}
    for position, own, _ in rows:
        if own is not None:
            if key(own) in first_own:
                expected[position] = "duplicate_id" if first_own[key(own)] == own else "key_collision"
            else:
                first_own[key(own)] = own
    every_key = {key(own or derived) for _, own, derived in rows}
    expected_renamed, kept_derived, chosen = {}, set(), set()
    for position, own, derived in rows:
        if own is not None:
            continue
        if key(derived) not in first_own and key(derived) not in kept_derived:
            kept_derived.add(key(derived))
            continue
        suffix = 1
        while key(f"{derived}~{suffix}") in every_key or f"{derived}~{suffix}" in chosen:
            suffix += 1
        expected_renamed[position] = f"{derived}~{suffix}"
        chosen.add(expected_renamed[position])

    plan = plan_sft(paths, SftOptions(energon=False), 2, 10**9)
    found, renamed, start = {}, {}, 0
    for task in plan.tasks:
        found.update({start + row: reason for row, reason, _ in task.rejected})
        renamed.update({start + row: new_id for row, new_id in task.renamed})
        start += task.num_rows
    assert found == expected
    assert renamed == expected_renamed


def test_a_row_without_an_id_never_costs_a_row_that_has_one(tmp_path):
    """Row 1 has no id, so it is ``data-1``: exactly the id row 2 has. Both rows are written, the
    row with its own id keeps it, the other becomes ``data-1~1``; a second run gives the same bytes."""
    (tmp_path / "cat.jpg").write_bytes(jpeg_bytes(40, 30))
    rows = [{"id": "x0"}, {}, {"id": "data-1"}]
    (tmp_path / "data.jsonl").write_text("".join(
        json.dumps({**row, "image": "cat.jpg", "messages": chat("<image> what is it?")}) + "\n" for row in rows))
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run / "out"
        run_cli("convert", "sft", str(tmp_path / "data.jsonl"), str(out), "--no-progress")
        outputs.append(out)
    assert (outputs[0] / "rejects.jsonl").read_text() == ""
    samples = samples_by_id(outputs[0])
    assert sorted(samples) == ["data-1", "data-1~1", "x0"]
    assert json.loads(samples["data-1"]["json"])["source"]["row"] == 2
    assert json.loads(samples["data-1~1"]["json"])["source"]["row"] == 1
    manifest = json.loads((outputs[0] / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 3
    assert [s["sha256"] for s in manifest["shards"]] == [
        s["sha256"] for s in json.loads((outputs[1] / "manifest.json").read_text())["shards"]]
    assert run_cli("verify", str(outputs[0])).returncode == 0


@pytest.mark.parametrize("jsonl", [True, False], ids=["jsonl", "json-array"])
@pytest.mark.parametrize("change", ["row-added", "text-shifted", "rows-removed"])
def test_a_file_changed_after_planning_fails_the_run_naming_it(tmp_path, jsonl, change):
    """Rows are parsed from their planned byte ranges as the task goes. A file rewritten since the
    plan fails the run with a message naming it: its task stops where a planned row no longer
    parses or the rows do not add up, and when the planned ranges still parse (a row of the same
    length added), the inputs checked again at the end of the run show the change. No manifest
    is written: the run did not finish, and its shards may mix old and new rows."""
    from fastwds.errors import InputChangedError, InvalidInputError

    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(seed=13))
    rows = [{"id": f"r{i}", "image": "a.jpg", "messages": chat("<image>")} for i in range(40)]
    data = tmp_path / ("rows.jsonl" if jsonl else "rows.json")

    def write(rows):
        data.write_text("".join(json.dumps(r) + "\n" for r in rows) if jsonl else json.dumps(rows, indent=1))

    write(rows)
    options = ConvertOptions(source_options=SftOptions(energon=False), fsync=False)
    plan = plan_sft([str(data)], options.source_options, 1000, 10**9)
    if change == "row-added":
        write(rows[:20] + [{"id": "new", "image": "a.jpg", "messages": chat("<image>")}] + rows[20:])
    elif change == "text-shifted":
        data.write_text(" " * 7 + data.read_text())
    else:
        write(rows[:5])
    with pytest.raises((InvalidInputError, InputChangedError), match=r"rows\.jsonl?: changed "):
        convert(plan, tmp_path / "out", options, command="test", show_progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
