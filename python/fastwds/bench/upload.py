"""``fastwds bench upload``: shards going to an S3-compatible store. fastwds converts a generated
LLaVA-style dataset straight into a bucket (every shard staged locally, then uploaded whole with
``upload_file``; records, indexes and the manifest after it), against the floor: the same
finished shard files, made beforehand, uploaded with the same client and settings and nothing
else. The conversion alone, to a local folder, is the third line, so what the upload adds is a
ratio. Without ``--endpoint``, moto's S3 server is started on 127.0.0.1 for the run (then the
store is this machine's CPU, not a network: the ratio, not the MB/s, is the finding)."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from fastwds import storage
from fastwds.arguments import positive
from fastwds.bench.harness import Clock, Runner, Suite, manifest_shard_digests, run_suite
from fastwds.convert.run import convert
from fastwds.errors import InvalidInputError
from fastwds.sources import get_source
from fastwds.sources.parquet import ParquetColumns
from fastwds.synthetic import generate

log = logging.getLogger(__name__)

HELP = "convert into an S3-compatible bucket, against uploading the same finished shards with boto3"
MAXCOUNT = 1_000
FASTWDS = "fastwds convert into the bucket"
LOCAL = "fastwds convert into a local folder (no upload)"
FLOOR = "boto3 upload_file of the finished shards"


def _options(args: dict[str, Any]) -> Any:
    source = get_source("parquet")
    return source, source.convert_options(max_samples_per_shard=MAXCOUNT, source_options=ParquetColumns())


def fastwds_to_bucket(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    source, options = _options(args)
    url = f"{args['bucket']}/run-{uuid.uuid4().hex[:8]}"
    with clock:
        plan = source.plan(args["input"], options)
        manifest = convert(plan, url, options, command="bench upload", show_progress=False)
    parsed = storage.parse_url(url)
    digests = sorted(s["sha256"] for s in manifest["shards"])
    storage.delete_objects([entry["url"] for entry in storage.list_objects(parsed)])
    return {"samples": manifest["totals"]["samples"], "bytes": manifest["totals"]["bytes"], "outputs": digests}


def fastwds_to_folder(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    source, options = _options(args)
    with clock:
        manifest = convert(source.plan(args["input"], options), out_dir, options, command="bench upload",
                           show_progress=False)
    return {"samples": manifest["totals"]["samples"], "bytes": manifest["totals"]["bytes"],
            "outputs": sorted(manifest_shard_digests(manifest, out_dir))}


def boto3_floor(args: dict[str, Any], out_dir: Path, clock: Clock) -> dict[str, Any]:
    """The same shard files, made before the clock starts, uploaded one after another."""
    source, options = _options(args)
    manifest = convert(source.plan(args["input"], options), out_dir / "shards", options, command="bench upload",
                       show_progress=False)
    shards = [out_dir / "shards" / s["name"] for s in manifest["shards"]]
    prefix = storage.parse_url(f"{args['bucket']}/floor-{uuid.uuid4().hex[:8]}")
    with clock:
        for shard in shards:
            storage.upload_file(shard, prefix.join(shard.name))
    storage.delete_objects([entry["url"] for entry in storage.list_objects(prefix)])
    return {"samples": manifest["totals"]["samples"], "bytes": sum(p.stat().st_size for p in shards),
            "outputs": None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=positive(int), default=6_000, metavar="N",
                        help="LLaVA-style rows to generate (default: %(default)s; shards of 1,000)")
    parser.add_argument("--bucket", metavar="s3://BUCKET/PREFIX",
                        help="where to write (default: a bucket on a moto server started for the run)")


def run(args: argparse.Namespace) -> int:
    server = None
    if args.bucket is None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise InvalidInputError("without --bucket, bench upload starts moto's S3 server: pip install 'moto[server]'"
                                    ", or give --bucket s3://... with credentials in the environment") from None
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        server.start()
        port = server._server.server_port
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_EC2_METADATA_DISABLED="true")
        storage.client().create_bucket(Bucket="fastwds-bench")
        args.bucket = "s3://fastwds-bench/upload"
    try:
        with tempfile.TemporaryDirectory(prefix="fastwds-bench-upload-", dir=args.dir) as tmp:
            dataset = generate(Path(tmp, "data"), rows=args.rows, seed=0)
            common = {"input": str(dataset.root), "bucket": args.bucket.rstrip("/")}
            where = "moto on 127.0.0.1 (started for the run)" if server else args.bucket
            suite = Suite(
                name="upload",
                description=f"{args.rows:,} generated LLaVA-style rows ({dataset.image_bytes / 1e6:,.1f} MB of images), "
                            f"shards of {MAXCOUNT:,} samples, into {where}",
                runners=[Runner(FASTWDS, f"{__name__}:fastwds_to_bucket", common, deterministic=True),
                         Runner(LOCAL, f"{__name__}:fastwds_to_folder", common, deterministic=True),
                         Runner(FLOOR, f"{__name__}:boto3_floor", common)],
                floor=FLOOR, peer=LOCAL,
                params={"rows": args.rows, "maxcount": MAXCOUNT, "part_size": storage.part_size(),
                        "concurrency": storage.UPLOAD_CONCURRENCY, "store": where},
                notes=["MB/s are shard bytes; x floor of the first line is fastwds' whole conversion into the bucket "
                       "against only uploading the same finished files (same client, part size and concurrency); "
                       "x peer is it against converting into a local folder, i.e. what the upload adds",
                       "fastwds stages each shard on local scratch and uploads it whole once complete (a killed "
                       "upload leaves no object); records, indexes and the manifest follow as small PUTs"],
            )
            return run_suite(suite, repeat=args.repeat, json_path=args.report, as_json=args.json, workdir=args.dir)
    finally:
        if server is not None:
            server.stop()
