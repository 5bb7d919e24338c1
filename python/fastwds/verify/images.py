"""Image members of the shards being verified, checked in batches: headers in one Rust call, full
decodes (``--full``) in threads (Pillow releases the GIL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastwds.media import ImageInfo, decode_problem, inspect_images
from fastwds.verify.report import Report
from fastwds.verify.rules import image_format_finding

# Images are checked in batches of about this many bytes (one Rust call, one thread-pool map).
IMAGE_BATCH_BYTES = 64 << 20


class ImageChecks:
    """Queues a shard's images and checks them in batches: headers in one Rust call, full
    decodes in threads (Pillow releases the GIL)."""

    def __init__(self, report: Report, full: bool, executor: ThreadPoolExecutor | None) -> None:
        self.report = report
        self.full = full
        self.executor = executor
        self.pending: list[tuple[str, str, str, str, bytes]] = []  # shard, key, member, ext, data
        self.pending_bytes = 0
        self.checked = 0

    def add(self, shard: str, key: str, member: str, ext: str, data: bytes) -> None:
        self.pending.append((shard, key, member, ext, data))
        self.pending_bytes += len(data)
        if self.pending_bytes >= IMAGE_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        results = inspect_images([data for *_, data in batch])
        decodable = [i for i, result in enumerate(results) if isinstance(result, ImageInfo)]
        decoded = {}
        if self.full and decodable:
            problems = (self.executor.map if self.executor else map)(lambda i: decode_problem(batch[i][4]), decodable)
            decoded = dict(zip(decodable, problems))
        for i, ((shard, key, member, ext, _), result) in enumerate(zip(batch, results)):
            self.checked += 1
            if not isinstance(result, ImageInfo):
                self.report.add("image_invalid", f"{member}: {result.reason}: {result.detail}", shard, key, member)
                continue
            mismatch = image_format_finding(member, ext, result.format)
            if mismatch is not None:
                self.report.add_finding(mismatch, shard, key)
            problem = decoded.get(i)
            if problem is not None:
                self.report.add("image_decode_failed", f"{member}: {problem.detail}", shard, key, member)
