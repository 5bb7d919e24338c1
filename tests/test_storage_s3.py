"""Inputs and outputs in object storage, against a real S3-compatible server started here on
127.0.0.1 (moto's, see s3_server.py). The CLI runs as a user runs it, configured the standard way
(AWS_ENDPOINT_URL and credentials in the environment). Every result is compared with the same
conversion on local folders, byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

import fastwds
from conftest import jpeg_bytes, read_webdataset, run_cli
from fastwds.synthetic import generate
from npz_data import make_dataset
from parquet_data import turns, write_rows
from s3_server import S3Server
from sft_data import make_image_dataset

BUCKET = "fastwds-test"
TIMEOUT = 180


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = S3Server()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in server.environment().items():
            patch.setenv(name, value)
        patch.setenv("FASTWDS_SCRATCH", str(tmp_path_factory.mktemp("scratch")))
        patch.setenv("FASTWDS_S3_PART_SIZE", str(5 << 20))  # multipart from 5 MiB: the tests' shards use it
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield server
    server.stop()


@pytest.fixture
def s3(server):
    return boto3.client("s3")


def objects(s3, prefix: str) -> dict[str, bytes]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix.rstrip("/") + "/")
    keys = [entry["Key"] for page in pages for entry in page.get("Contents", [])]
    return {key[len(prefix.rstrip("/")) + 1:]: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys}


def upload_folder(s3, folder: Path, prefix: str) -> str:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def dataset_files(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()
            if not name.startswith(".fastwds/") and name != "manifest.json"}


def local_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def comparable(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("elapsed_seconds", "source")}


def parquet_case(tmp_path):
    root = tmp_path / "pq"
    generate(root, rows=150, subsets=2, files_per_subset=1, row_group_rows=25, seed=6)
    return "parquet", [str(root)], ["--max-samples-per-shard", "30", "--dali-index"]


def sft_case(tmp_path):
    dataset = make_image_dataset(tmp_path / "sft")
    return "sft", [str(dataset.root / "data.json"), str(dataset.root / "nested" / "more.jsonl")], \
        ["--max-samples-per-shard", "4"]


def npz_case(tmp_path):
    data = make_dataset(tmp_path / "npz")
    return "npz", [str(data.root)], ["--reports", str(data.reports), "--labels", str(data.labels),
                                     "--samples-per-shard", "3"]


@pytest.mark.parametrize("case", [parquet_case, sft_case, npz_case], ids=["parquet", "sft", "npz"])
def test_a_bucket_receives_exactly_what_a_folder_does(server, s3, tmp_path, case):
    kind, data, extra = case(tmp_path)
    run_cli("convert", kind, *data, str(tmp_path / "local" / "out"), *extra, "--no-progress")
    run_cli("convert", kind, *data, f"s3://{BUCKET}/{kind}/out", *extra, "--no-progress")
    remote, local = objects(s3, f"{kind}/out"), local_files(tmp_path / "local" / "out")
    assert dataset_files(remote) == dataset_files(local)
    assert comparable(json.loads(remote["manifest.json"])) == comparable(json.loads(local["manifest.json"]))
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    # verify checks in the bucket all it checks in the folder: indexes, .nv-meta, the manifest
    in_bucket = json.loads(run_cli("verify", f"s3://{BUCKET}/{kind}/out", "--json").stdout)
    in_folder = json.loads(run_cli("verify", str(tmp_path / "local" / "out"), "--json").stdout)
    assert in_bucket["errors"] == 0 and in_bucket["checked"] == in_folder["checked"], in_bucket


def test_parquet_is_planned_from_footers_and_read_by_row_group(server, s3, tmp_path):
    root = tmp_path / "pq"
    generate(root, rows=400, subsets=1, files_per_subset=2, row_group_rows=50, seed=9)
    # A subset whose one row repeats the id of a generated row: planning finds it across files by
    # key hash, then reads those files' id columns again from the bucket to confirm it.
    repeated_id = pq.read_table(sorted(root.rglob("*.parquet"))[-1], columns=["id"])["id"][7].as_py()
    write_rows(root / "zz_again" / "again.parquet", [(repeated_id, jpeg_bytes(), None, turns("<image>"))])
    url = upload_folder(s3, root, "inputs/pq")
    total = sum(p.stat().st_size for p in root.rglob("*.parquet"))
    from fastwds.sources import get_source
    from fastwds.sources.parquet import ParquetColumns

    source = get_source("parquet")
    server.clear()
    plan = source.plan(url, source.convert_options(source_options=ParquetColumns(), max_samples_per_shard=100))
    planning = server.bytes_sent(".parquet")
    assert planning < 0.05 * total, f"planning read {planning:,} of {total:,} bytes: more than footers and ids"
    assert plan.total_rows == 401 and all(f.etag for f in plan.files)  # identity from the store: ETags
    assert [(task.subset, reason) for task in plan.tasks for _, reason, _ in task.rejected] == \
        [("zz_again", "duplicate_id")]
    run_cli("convert", "parquet", str(root), str(tmp_path / "local"), "--max-samples-per-shard", "100", "--no-progress")
    server.clear()
    run_cli("convert", "parquet", url, str(tmp_path / "from-bucket"), "--max-samples-per-shard", "100",
            "--no-progress")
    ranged = [r for r in server.requests if r.method == "GET" and r.path.endswith(".parquet")]
    assert all(r.range for r in ranged), "every parquet read is a ranged GET"
    assert server.bytes_sent(".parquet") < 1.5 * total
    assert {n: d for n, d in dataset_files(local_files(tmp_path / "from-bucket")).items() if n.endswith(".tar")} == \
           {n: d for n, d in dataset_files(local_files(tmp_path / "local")).items() if n.endswith(".tar")}


def test_sft_json_media_and_npz_inputs_in_a_bucket(server, s3, tmp_path):
    dataset = make_image_dataset(tmp_path / "sft")
    (dataset.root / "images" / "a-folder.jpg").rmdir()  # object stores have no folders to refuse
    (dataset.root / "data.json").write_text(
        (dataset.root / "data.json").read_text().replace(str((dataset.root / "images" / "d.jpg").resolve()),
                                                          "images/d.jpg"))
    url = upload_folder(s3, dataset.root, "inputs/sft")
    for name, data in ((tmp_path / "local", [str(dataset.root / "data.json")]),
                       (tmp_path / "remote", [f"{url}/data.json"])):
        run_cli("convert", "sft", *data, str(name), "--no-progress")
    shards = {n: d for n, d in dataset_files(local_files(tmp_path / "remote")).items() if n.endswith(".tar")}
    assert shards and shards == {n: d for n, d in dataset_files(local_files(tmp_path / "local")).items()
                                 if n.endswith(".tar")}

    volumes = make_dataset(tmp_path / "npz")
    data_url = upload_folder(s3, volumes.root, "inputs/npz/data")
    s3.put_object(Bucket=BUCKET, Key="inputs/npz/labels.csv", Body=volumes.labels.read_bytes())
    run_cli("convert", "npz", str(volumes.root), str(tmp_path / "npz-local"), "--labels", str(volumes.labels),
            "--no-progress")
    run_cli("convert", "npz", data_url, str(tmp_path / "npz-remote"), "--labels", f"s3://{BUCKET}/inputs/npz/labels.csv",
            "--no-progress")
    assert {n: d for n, d in dataset_files(local_files(tmp_path / "npz-remote")).items() if n.endswith(".tar")} == \
           {n: d for n, d in dataset_files(local_files(tmp_path / "npz-local")).items() if n.endswith(".tar")}
    # The downloaded inputs (the JSON, the CSV) go with the process that read them.
    scratch = Path(os.environ["FASTWDS_SCRATCH"])
    assert not [p for p in (scratch / "inputs").rglob("*") if p.is_file()]


def test_a_run_into_a_bucket_leaves_no_scratch_folder(server, s3, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    monkeypatch.setenv("FASTWDS_SCRATCH", str(scratch))
    root = tmp_path / "pq"
    generate(root, rows=40, subsets=1, files_per_subset=1, row_group_rows=20, seed=15)
    for number in range(3):  # runs into many prefixes left an empty staging folder each
        run_cli("convert", "parquet", str(root), f"s3://{BUCKET}/scratch/{number}", "--no-progress")
    assert not [p for p in scratch.rglob("*") if p.is_file() or p.name == "attempts"], list(scratch.rglob("*"))


def test_a_url_with_doubled_slashes_is_shown_as_it_is_used(server, s3, tmp_path):
    """``s3://b//x//`` writes under ``x/``; the summary names that prefix, not the spelling typed."""
    root = tmp_path / "pq"
    generate(root, rows=20, subsets=1, files_per_subset=1, row_group_rows=20, seed=16)
    url = f"s3://{BUCKET}//doubled//out//"
    printed = run_cli("convert", "parquet", str(root), url, "--no-progress").stdout
    assert re.search(rf"^ +output +s3://{BUCKET}/doubled/out$", printed, re.M), printed
    summary = json.loads(run_cli("convert", "parquet", str(root), url, "--overwrite", "--json").stdout)
    assert summary["output_dir"] == f"s3://{BUCKET}/doubled/out", summary
    assert "manifest.json" in objects(s3, "doubled/out")


def test_a_resume_reads_each_finished_task_record_once(server, s3, tmp_path):
    """A resume checks the finished tasks' shards and builds the manifest from one GET of each
    task record, not one for each purpose."""
    root = tmp_path / "pq"
    generate(root, rows=60, subsets=1, files_per_subset=3, row_group_rows=20, seed=17)
    url = f"s3://{BUCKET}/records-once"
    run_cli("convert", "parquet", str(root), url, "--max-samples-per-shard", "20", "--no-progress")
    tasks = [key for key in objects(s3, "records-once") if key.startswith(".fastwds/tasks/")]
    assert len(tasks) == 3, tasks
    server.clear()
    resumed = run_cli("convert", "parquet", str(root), url, "--max-samples-per-shard", "20", "--resume",
                      "--no-progress")
    assert "3 of 3 tasks already finished" in resumed.stderr, resumed.stderr
    reads = [r.path for r in server.requests if r.method == "GET" and "/.fastwds/tasks/" in r.path]
    assert sorted(reads) == sorted(f"/{BUCKET}/records-once/{key}" for key in tasks), reads


def test_killed_mid_upload_leaves_no_finished_looking_object_and_resume_completes(server, s3, tmp_path):
    root = tmp_path / "pq"
    generate(root, rows=360, subsets=2, files_per_subset=1, row_group_rows=60, seed=10)  # two ~15 MB shards
    args = ["convert", "parquet", str(root), f"s3://{BUCKET}/killed/out", "--no-progress"]
    run_cli("convert", "parquet", str(root), str(tmp_path / "clean"), "--no-progress")
    clean = {n: hashlib.sha256(d).hexdigest() for n, d in local_files(tmp_path / "clean").items() if n.endswith(".tar")}
    server.clear()
    child = subprocess.Popen([sys.executable, "-m", "fastwds", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not any("partNumber" in r.query for r in list(server.requests)) and time.monotonic() < deadline:
            time.sleep(0.002)
        os.killpg(child.pid, signal.SIGKILL)  # mid-way through a multipart upload
    finally:
        child.wait()
    left = objects(s3, "killed/out")
    assert "manifest.json" not in left
    for name, data in left.items():  # what is there is complete: a killed upload publishes nothing
        if name.endswith(".tar"):
            assert hashlib.sha256(data).hexdigest() == clean[name]
    assert s3.list_multipart_uploads(Bucket=BUCKET, Prefix="killed/").get("Uploads"), "no upload was under way"
    unfinished = run_cli("verify", f"s3://{BUCKET}/killed/out", "--json", check=False)
    assert unfinished.returncode == 1
    if unfinished.stdout:  # a shard was published before the kill
        assert "run_incomplete" in json.loads(unfinished.stdout)["counts"]
    else:
        assert "a fastwds run that did not finish" in unfinished.stderr and "--resume" in unfinished.stderr
    # A lease of a run on another machine (or in another container) must expire before the output
    # can be taken over: its pid says nothing here.
    dead_here = s3.get_object(Bucket=BUCKET, Key="killed/out/.fastwds/lock")["Body"].read()
    elsewhere = {**json.loads(dead_here), "pid_space": "another-machine/1"}
    s3.put_object(Bucket=BUCKET, Key="killed/out/.fastwds/lock", Body=json.dumps(elsewhere).encode())
    refused = run_cli(*args, "--resume", check=False)
    assert refused.returncode == 1 and "another fastwds run" in refused.stderr and "lease" in refused.stderr
    # The killed run's own lease (this machine, its pid gone) is taken over at once.
    s3.put_object(Bucket=BUCKET, Key="killed/out/.fastwds/lock", Body=dead_here)
    assert json.loads(dead_here)["expires"] > time.time() + 5, "the test must resume within the lease"
    run_cli(*args, "--resume")
    after = objects(s3, "killed/out")
    assert {n: hashlib.sha256(d).hexdigest() for n, d in after.items() if n.endswith(".tar")} == clean
    assert not s3.list_multipart_uploads(Bucket=BUCKET, Prefix="killed/").get("Uploads"), "dead uploads not aborted"


def test_readers_read_shards_in_the_bucket(server, s3, tmp_path):
    root = tmp_path / "pq"
    generate(root, rows=90, subsets=1, files_per_subset=1, row_group_rows=30, seed=12)
    url = f"s3://{BUCKET}/readers/out"
    run_cli("convert", "parquet", str(root), url, "--max-samples-per-shard", "40", "--no-progress")
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key="readers/out/manifest.json")["Body"].read())
    expected = manifest["totals"]["samples"]
    samples = list(fastwds.WebDataset(url))
    assert len(samples) == expected and all(isinstance(s["json"], dict) for s in samples)
    assert len(list(fastwds.WebDataset(f"{url}/manifest.json", decode=False))) == expected
    report = json.loads(run_cli("verify", url, "--full", "--json").stdout)
    assert report["errors"] == 0 and report["samples"] == expected and report["shards"] == len(manifest["shards"])
    assert any("manifest.json" in checked for checked in report["checked"])
    shown = run_cli("inspect", url, "-n", "1").stdout
    assert "sample 0" in shown and ".json" in shown
    # webdataset itself, through presigned HTTP URLs (it fetches them with curl).
    presigned = [s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": f"readers/out/{s['name']}"})
                 for s in manifest["shards"]]
    assert len(read_webdataset(presigned)) == expected


def test_verify_reports_an_empty_shard_in_a_bucket_as_in_a_folder(server, s3, tmp_path):
    """An empty .tar (a zero-byte object) used to stop verify and inspect with the store's
    InvalidRange; in a folder it is a finding and the other shards are still checked."""
    folder = tmp_path / "mixed"
    with fastwds.ShardWriter(str(folder / "a-%06d.tar")) as writer:
        writer.write({"__key__": "k0", "jpg": jpeg_bytes(), "json": {"id": "k0"}})
    (folder / "b-000000.tar").write_bytes(b"")
    url = upload_folder(s3, folder, "mixed")
    in_bucket = run_cli("verify", url, "--json", check=False)
    in_folder = run_cli("verify", str(folder), "--json", check=False)
    assert in_bucket.returncode == in_folder.returncode == 1, in_bucket.stderr
    bucket_report, folder_report = json.loads(in_bucket.stdout), json.loads(in_folder.stdout)
    assert bucket_report["counts"] == folder_report["counts"] and bucket_report["shards"] == 2
    assert "sample 0" in run_cli("inspect", url, "-n", "1").stdout


def test_store_errors_are_one_clear_line_naming_the_url(server, s3, tmp_path):
    root = tmp_path / "pq"
    generate(root, rows=30, subsets=1, files_per_subset=1, row_group_rows=30, seed=13)
    missing = run_cli("convert", "parquet", str(root), "s3://no-such-bucket/out", check=False)
    assert missing.returncode == 1 and "s3://no-such-bucket" in missing.stderr and "does not exist" in missing.stderr
    server.denied_prefix = f"/{BUCKET}/denied"
    try:
        denied = run_cli("convert", "parquet", str(root), f"s3://{BUCKET}/denied/out", check=False)
    finally:
        server.denied_prefix = None
    assert denied.returncode == 1 and f"s3://{BUCKET}/denied/out" in denied.stderr and "access denied" in denied.stderr
    server.denied_prefix, server.denied_code = f"/{BUCKET}/", "InvalidAccessKeyId"
    try:
        unknown_keys = run_cli("convert", "parquet", str(root), f"s3://{BUCKET}/keys/out", check=False)
    finally:
        server.denied_prefix, server.denied_code = None, "AccessDenied"
    assert unknown_keys.returncode == 1 and "does not accept these credentials" in unknown_keys.stderr
    server.clear()
    server.throttle_next = 3  # the store sheds load: retried with backoff
    run_cli("convert", "parquet", str(root), f"s3://{BUCKET}/throttled/out", "--no-progress")
    assert sum(r.status.startswith("503") for r in server.requests) == 3
    assert "manifest.json" in objects(s3, "throttled/out")
    no_keys = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    no_keys.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    anonymous = subprocess.run([sys.executable, "-m", "fastwds", "convert", "parquet", str(root),
                                f"s3://{BUCKET}/anonymous/out"], capture_output=True, text=True, env=no_keys)
    assert anonymous.returncode == 1 and "no AWS credentials" in anonymous.stderr
    for result in (missing, denied, unknown_keys, anonymous):
        assert "Traceback" not in result.stderr


def test_a_store_that_does_not_answer_is_said_so_at_each_retry(tmp_path):
    """Retries of requests that get no answer are warnings as they happen (a store that accepts
    connections and never answers was minutes of silence), as many as AWS_MAX_ATTEMPTS allows."""
    with socket.socket() as placeholder:  # a port nothing listens on
        placeholder.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{placeholder.getsockname()[1]}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, "AWS_ENDPOINT_URL": endpoint,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "3"}
    result = subprocess.run([sys.executable, "-m", "fastwds", "verify", f"s3://{BUCKET}/x"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    retries = [line for line in result.stderr.splitlines() if "WARNING fastwds: s3 ListObjectsV2" in line]
    assert [re.search(r"retrying \(attempt (\d) of 3\)", line).group(1) for line in retries] == ["2", "3"], retries
    assert result.stderr.strip().splitlines()[-1].startswith(f"fastwds: error: s3://{BUCKET}/x: Could not connect")


@pytest.mark.parametrize("output", ["gs://bucket/out", "s3:/bucket/out", "https://host/out"])
def test_a_url_fastwds_cannot_write_is_an_error_not_a_local_folder(tmp_path, output):
    root = tmp_path / "pq"
    generate(root, rows=10, subsets=1, files_per_subset=1, row_group_rows=10, seed=14)
    result = subprocess.run([sys.executable, "-m", "fastwds", "convert", "parquet", str(root), output],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and output in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pq"], "a local folder was created for a URL"


@pytest.mark.parametrize("command", [["convert", "parquet", "{url}", "out"], ["convert", "sft", "{url}", "out"],
                                     ["convert", "npz", "{url}", "out"], ["verify", "{url}"], ["inspect", "{url}"]])
@pytest.mark.parametrize("url", ["s3://", "s3:///prefix"])
def test_a_url_without_a_bucket_is_said_so_for_inputs_too(tmp_path, command, url):
    """'s3://' used to lose its slashes on the way and be looked for as the local folder 's3:'
    (with such a folder present, it was read)."""
    (tmp_path / "s3:").mkdir()
    result = subprocess.run([sys.executable, "-m", "fastwds", *(word.format(url=url) for word in command)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{url}: no bucket in the URL" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_bench_upload_measures_against_uploading_the_finished_shards(tmp_path):
    """`fastwds bench upload` starts its own S3 server: the three lines and the ratios come out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run([sys.executable, "-m", "fastwds", "bench", "upload", "--rows", "300", "--repeat", "1",
                             "--dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    for runner in ("fastwds convert into the bucket", "boto3 upload_file of the finished shards [floor]",
                   "fastwds convert into a local folder (no upload) [peer]"):
        assert runner in lines and "FAILED" not in lines[runner]
    assert "x floor" in result.stdout
