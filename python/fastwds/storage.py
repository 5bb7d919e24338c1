"""Object storage: ``s3://bucket/key`` URLs for inputs and outputs, on AWS S3 or any S3-compatible
store (MinIO, Cloudflare R2, Ceph, Google Cloud Storage's XML interoperability endpoint, ...).

Clients, chosen for what each does best (see README, "Object storage"):
- **boto3** for objects: credentials and endpoints the standard way (environment,
  ``AWS_PROFILE`` and ``~/.aws`` profiles, ``AWS_ENDPOINT_URL``, instance roles), retries with
  backoff (adaptive mode, for throttling), and ``upload_file``, which uploads a complete local
  file, multipart above a threshold, and aborts the multipart upload when anything fails, Ctrl-C
  included: an object appears only when it is complete. (Streaming through an fsspec or pyarrow
  writer and raising mid-way publishes the truncated object.)
- **pyarrow's S3FileSystem** for random-access reads (parquet row groups, NPZ members, shards):
  native ranged GETs, one per column chunk. pyarrow ignores ``AWS_ENDPOINT_URL`` and signs
  nothing without credentials, so it is given what botocore resolved.

Credentials never reach the manifest or the logs: only URLs do.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

from fastwds.errors import FastwdsError, InvalidInputError

SCHEMES = ("s3",)
# Uploads: multipart above the part size, in parts of that size (FASTWDS_S3_PART_SIZE bytes,
# at least S3's 5 MiB), this many parts at once.
DEFAULT_PART_SIZE = 64 << 20
UPLOAD_CONCURRENCY = 4


def part_size() -> int:
    return max(5 << 20, int(os.environ.get("FASTWDS_S3_PART_SIZE") or DEFAULT_PART_SIZE))


class StorageError(FastwdsError):
    """An object store refused or failed a request (the message names the URL)."""


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str  # no leading slash; '' for the bucket itself

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Url:
        key = posixpath.normpath(posixpath.join(self.key, *parts)).lstrip("/")
        return S3Url(self.bucket, "" if key == "." else key)

    def relative_to(self, base: S3Url) -> str:
        prefix = base.key.rstrip("/") + "/" if base.key else ""
        return self.key[len(prefix):]


def is_url(location: str | os.PathLike) -> bool:
    return "://" in os.fspath(location)


def parse_url(location: str | os.PathLike) -> S3Url:
    """``s3://bucket/key``; any other scheme is refused by name (it must never become a local
    folder called ``gs:``)."""
    text = os.fspath(location)
    scheme, _, rest = text.partition("://")
    if scheme.lower() not in SCHEMES:
        raise InvalidInputError(f"{text}: fastwds reads and writes local paths and s3:// URLs (AWS S3 or any "
                                f"S3-compatible store, via AWS_ENDPOINT_URL), not {scheme}://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InvalidInputError(f"{text}: no bucket in the URL (s3://BUCKET/PREFIX)")
    return S3Url(bucket, posixpath.normpath(key).lstrip("/") if key.strip("/") else "")


def display_location(location: str | os.PathLike) -> str:
    """How a location is shown to the user: an absolute path, or the URL as it is used
    (``s3://b//x//`` is read and written as ``s3://b/x``)."""
    if is_url(location):
        return str(parse_url(location)).rstrip("/")
    return os.path.abspath(location)


def check_location(location: str | os.PathLike) -> None:
    """Refuse what looks like a URL but is not one fastwds handles, and ``s3:/x`` typos that
    would become local folders."""
    text = os.fspath(location)
    if is_url(text):
        parse_url(text)
    elif text.lower().startswith(("s3:", "gs:", "gcs:", "http:", "https:", "az:", "abfs:", "hf:")):
        raise InvalidInputError(f"{text}: not a valid URL (did you mean {text.split(':', 1)[0]}://...?); "
                                "fastwds will not create a local folder of that name")


# -- clients --------------------------------------------------------------------------------------

# Every retry of a request can wait this long for a connection / a response. botocore's 60 s
# read timeout times 8 attempts left a store that accepts connections and never answers silent
# for 8 minutes; 30 s is still far above a healthy store's slowest response to one request.
CONNECT_TIMEOUT, READ_TIMEOUT = 10, 30
MAX_ATTEMPTS = 8  # unless AWS_MAX_ATTEMPTS says otherwise

log = logging.getLogger("fastwds")
_client_lock = threading.Lock()
_client: tuple[int, Any] | None = None  # (pid, client): a forked child makes its own


def client() -> Any:
    """The process's boto3 S3 client, shared by its threads: botocore clients are thread-safe
    (sessions are not, so it is made once, under a lock). A client per thread cost 0.15 s of CPU
    and ~15 MB each, and the SFT media readers start 40 threads per task."""
    global _client
    pid = os.getpid()
    if _client is None or _client[0] != pid:
        with _client_lock:
            if _client is None or _client[0] != pid:
                _client = (pid, _new_client())
    return _client[1]


def _new_client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise InvalidInputError("s3:// URLs need boto3: pip install 'fastwds[s3]'") from None
    configured = os.environ.get("AWS_MAX_ATTEMPTS", "")
    retries = {"mode": "adaptive"} if configured else {"mode": "adaptive", "total_max_attempts": MAX_ATTEMPTS}
    config = Config(retries=retries, max_pool_connections=64, connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=READ_TIMEOUT)
    s3 = boto3.session.Session().client("s3", config=config)
    attempts = int(configured) if configured.isdigit() else MAX_ATTEMPTS
    s3.meta.events.register("needs-retry.s3", partial(_say_retrying, attempts))
    return s3


def _say_retrying(max_attempts: int, attempts: int, caught_exception: Exception | None = None,
                  operation: Any = None, **_: Any) -> None:
    """A request that failed without a response (timeout, refused connection) and will be retried:
    said at once, so a store that does not answer is not minutes of silence. (Throttling is
    answered, and adaptive retries handle it quietly.) Never decides the retry: botocore does."""
    if caught_exception is not None and attempts < max_attempts:
        log.warning("s3 %s: %s; retrying (attempt %d of %d)", getattr(operation, "name", "request"),
                    caught_exception, attempts + 1, max_attempts)


@cache
def arrow_filesystem() -> Any:
    """pyarrow's S3FileSystem with botocore's endpoint, region and credentials (pyarrow would
    ignore AWS_ENDPOINT_URL and send unsigned requests without credentials)."""
    from pyarrow import fs

    s3 = client()
    credentials = s3._request_signer._credentials  # resolved by botocore's standard chain
    if credentials is None:
        raise StorageError("no AWS credentials found (environment, AWS_PROFILE / ~/.aws, or an instance role)")
    frozen = credentials.get_frozen_credentials()
    endpoint = s3.meta.endpoint_url
    scheme = "http" if endpoint.startswith("http://") else "https"
    return fs.S3FileSystem(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token,
                           region=s3.meta.region_name or "us-east-1", scheme=scheme,
                           endpoint_override=endpoint.split("://", 1)[1])


def describe_error(error: Exception, url: S3Url | str) -> Exception:
    """A clear, typed error naming the URL, from a boto3 / botocore / pyarrow one."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError:  # pragma: no cover - boto3 is there whenever a client was made
        return StorageError(f"{url}: {error}")
    if isinstance(error, NoCredentialsError):
        return StorageError(f"{url}: no AWS credentials found (environment variables, AWS_PROFILE / ~/.aws, or an "
                            "instance role)")
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket",):
            bucket = url.bucket if isinstance(url, S3Url) else parse_url(url).bucket
            return StorageError(f"{url}: bucket {bucket!r} does not exist")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return FileNotFoundError(2, "no such object", str(url))
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return PermissionError(13, f"access denied ({code}): the store does not accept these credentials "
                                       "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE)", str(url))
        if code in ("AccessDenied", "403", "Forbidden") or status == 403:
            return PermissionError(13, f"access denied ({code})", str(url))
        if code in ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "503") or status == 503:
            return StorageError(f"{url}: the store kept throttling requests ({code}) after retries with backoff")
        return StorageError(f"{url}: {code or status}: {error.response.get('Error', {}).get('Message', error)}")
    if isinstance(error, BotoCoreError):
        return StorageError(f"{url}: {error}")
    return error


def _call(url: S3Url, method: str, **kwargs: Any) -> Any:
    try:
        return getattr(client(), method)(**kwargs)
    except Exception as error:
        raise describe_error(error, url) from None


# -- objects ---------------------------------------------------------------------------------------

def head(url: S3Url) -> dict[str, Any] | None:
    """``{"size", "etag"}`` of an object, or None when there is none."""
    try:
        response = client().head_object(Bucket=url.bucket, Key=url.key)
    except Exception as error:
        described = describe_error(error, url)
        if isinstance(described, FileNotFoundError):
            return None
        raise described from None
    return {"size": response["ContentLength"], "etag": response["ETag"].strip('"')}


def read_bytes(url: S3Url, start: int | None = None, stop: int | None = None) -> bytes:
    """The object's bytes, or bytes ``[start, stop)`` of it (one ranged GET)."""
    extra = {"Range": f"bytes={start}-{stop - 1}"} if start is not None and stop is not None else {}
    if start is not None and stop is not None and stop <= start:
        return b""
    try:
        body = client().get_object(Bucket=url.bucket, Key=url.key, **extra)["Body"]
    except Exception as error:
        if extra and getattr(error, "response", {}).get("Error", {}).get("Code") == "InvalidRange":
            return b""  # the range starts past the end (an empty object): no bytes, as a file read gives
        raise describe_error(error, url) from None
    try:
        return body.read()
    except Exception as error:
        raise describe_error(error, url) from None


def put_bytes(url: S3Url, data: bytes) -> None:
    """One PUT: the object appears whole or not at all."""
    _call(url, "put_object", Bucket=url.bucket, Key=url.key, Body=data)


def create_bytes(url: S3Url, data: bytes) -> bool:
    """PUT only if no object is there (If-None-Match: *); False when one already is."""
    try:
        client().put_object(Bucket=url.bucket, Key=url.key, Body=data, IfNoneMatch="*")
        return True
    except Exception as error:
        response = getattr(error, "response", {}) or {}
        if response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
            return False
        raise describe_error(error, url) from None


def upload_file(local: str | os.PathLike, url: S3Url) -> None:
    """Upload a complete local file; multipart above ``part_size()``, aborted on failure."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=part_size(), multipart_chunksize=part_size(),
                            max_concurrency=UPLOAD_CONCURRENCY)
    try:
        client().upload_file(os.fspath(local), url.bucket, url.key, Config=config)
    except Exception as error:
        cause = getattr(error, "__cause__", None) or getattr(error, "__context__", None)
        raise describe_error(cause if cause is not None and not isinstance(error, OSError) else error, url) from None


def list_objects(prefix: S3Url) -> Iterator[dict[str, Any]]:
    """Every object under ``prefix`` (a folder: ``prefix/``): ``{"url", "relative", "size", "etag"}``."""
    folder = prefix.key.rstrip("/") + "/" if prefix.key else ""
    try:
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=folder):
            for entry in page.get("Contents", []):
                yield {"url": S3Url(prefix.bucket, entry["Key"]), "relative": entry["Key"][len(folder):],
                       "size": entry["Size"], "etag": entry["ETag"].strip('"')}
    except Exception as error:
        raise describe_error(error, prefix) from None


def delete_objects(urls: list[S3Url]) -> None:
    for start in range(0, len(urls), 1000):  # DeleteObjects takes 1000 keys a request
        batch = urls[start:start + 1000]
        if batch:
            _call(batch[0], "delete_objects", Bucket=batch[0].bucket,
                  Delete={"Objects": [{"Key": u.key} for u in batch], "Quiet": True})


def abort_uploads(prefix: S3Url) -> int:
    """Abort every pending multipart upload under ``prefix`` (what killed uploads leave: no
    object, but stored parts that cost money). Returns how many."""
    folder = prefix.key.rstrip("/") + "/" if prefix.key else ""
    aborted = 0
    try:
        for page in client().get_paginator("list_multipart_uploads").paginate(Bucket=prefix.bucket, Prefix=folder):
            for upload in page.get("Uploads", []):
                client().abort_multipart_upload(Bucket=prefix.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
    except Exception as error:
        raise describe_error(error, prefix) from None
    return aborted


def pending_uploads(prefix: S3Url) -> list[str]:
    folder = prefix.key.rstrip("/") + "/" if prefix.key else ""
    pages = client().get_paginator("list_multipart_uploads").paginate(Bucket=prefix.bucket, Prefix=folder)
    return [upload["Key"] for page in pages for upload in page.get("Uploads", [])]


def open_input(url: S3Url) -> Any:
    """A seekable, random-access file of the object (ranged GETs as it is read)."""
    try:
        return arrow_filesystem().open_input_file(f"{url.bucket}/{url.key}")
    except FileNotFoundError:
        raise FileNotFoundError(2, "no such object", str(url)) from None
    except OSError as error:
        raise StorageError(f"{url}: {error}") from None


def open_stream(url: S3Url) -> Any:
    """A forward-only stream of the object (large sequential GETs), for reading shards through."""
    try:
        return arrow_filesystem().open_input_stream(f"{url.bucket}/{url.key}", buffer_size=8 << 20)
    except FileNotFoundError:
        raise FileNotFoundError(2, "no such object", str(url)) from None
    except OSError as error:
        raise StorageError(f"{url}: {error}") from None


def scratch_root() -> Path:
    """Where work for remote outputs is staged on this machine: ``FASTWDS_SCRATCH``, else the
    system temporary folder. A task stages its shard(s) there until they are uploaded."""
    return Path(os.environ.get("FASTWDS_SCRATCH") or os.path.join(tempfile.gettempdir(), "fastwds-scratch"))


# -- inputs: local paths and s3:// URLs alike ------------------------------------------------------

@dataclass(frozen=True)
class FileEntry:
    relative: str  # '/'-separated, relative to the folder listed
    size: int
    mtime_ns: int  # 0 for objects: an object store's identity of content is its ETag
    etag: str | None


def join(root: str, relative: str) -> str:
    if is_url(root):
        return str(parse_url(root).join(relative))
    return os.path.join(root, relative)


def is_dir(location: str) -> bool:
    if is_url(location):
        return next(list_objects(parse_url(location)), None) is not None
    return os.path.isdir(location)


def is_file(location: str) -> bool:
    if is_url(location):
        return head(parse_url(location)) is not None
    return os.path.isfile(location)


def list_files(root: str, hidden: bool = False) -> list[FileEntry]:
    """Every file under ``root`` (hidden files and folders left out unless ``hidden``), sorted by path."""
    if is_url(root):
        entries = [FileEntry(e["relative"], e["size"], 0, e["etag"]) for e in list_objects(parse_url(root))
                   if e["relative"] and not e["relative"].endswith("/")]
    else:
        entries = []
        for directory, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if hidden or not d.startswith("."))
            for name in filenames:
                path = os.path.join(directory, name)
                stat = stat_local(path)
                entries.append(FileEntry(os.path.relpath(path, root).replace(os.sep, "/"), stat.st_size,
                                         stat.st_mtime_ns, None))
    visible = [e for e in entries if hidden or not is_hidden(e.relative)]
    return sorted(visible, key=lambda e: e.relative.split("/"))


def is_hidden(relative: str) -> bool:
    """Whether a '/'-separated relative path is in, or is, a hidden file or folder."""
    return any(part.startswith(".") for part in relative.split("/"))


def stat_file(location: str) -> FileEntry:
    """Size and identity (mtime, or the object's ETag) of one file."""
    if is_url(location):
        found = head(parse_url(location))
        if found is None:
            raise FileNotFoundError(2, "no such object", location)
        return FileEntry(location.rsplit("/", 1)[-1], found["size"], 0, found["etag"])
    stat = stat_local(location)
    return FileEntry(os.path.basename(location), stat.st_size, stat.st_mtime_ns, None)


def stat_local(path: str) -> os.stat_result:
    """The file's stat, or for a symlink that leads nowhere (dangling, a loop) the link's own: the
    file is still listed and fingerprinted, and reading it reports the problem where it is read."""
    try:
        return os.stat(path)
    except OSError:
        try:
            return os.lstat(path)
        except OSError:
            pass
        raise


def open_file(location: str) -> Any:
    """A seekable binary file: a local file, or an object read with ranged GETs."""
    if is_url(location):
        return open_input(parse_url(location))
    return open(location, "rb")


def read_range(location: str, start: int, stop: int) -> bytes:
    if is_url(location):
        return read_bytes(parse_url(location), start, stop)
    with open(location, "rb") as file:
        file.seek(start)
        return file.read(stop - start)


@cache
def local_copy(location: str) -> str:
    """A local path of ``location``: itself, or for an object a copy downloaded once per process
    into the scratch folder (for small inputs that libraries read only from files: CSVs)."""
    if not is_url(location):
        return location
    url = parse_url(location)
    target = input_copies() / hashlib.sha256(location.encode()).hexdigest()[:16] / posixpath.basename(url.key)
    target.parent.mkdir(parents=True, exist_ok=True)
    downloading = target.with_name(target.name + ".partial")
    downloading.write_bytes(read_bytes(url))
    os.replace(downloading, target)
    return str(target)


@cache
def input_copies() -> Path:
    """This process's folder of downloaded inputs, removed when it exits: a multi-GB JSONL in a
    bucket must not stay in the temporary folder after every run. (Per process: another process's
    exit never removes a copy this one still reads.)"""
    folder = scratch_root() / "inputs" / str(os.getpid())
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@contextmanager
def readable(location: str) -> Iterator[Any]:
    """What pyarrow and zipfile read from: the path of a local file (they open it their own,
    faster way), or a random-access file of an object."""
    if not is_url(location):
        yield location
        return
    with open_input(parse_url(location)) as file:
        yield file
