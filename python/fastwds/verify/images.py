"""Image members of the shards being verified, checked in batches: headers in one Rust call, full
decodes (``--full``) on a pool of threads (Pillow releases the GIL) while the shards are read on:
a batch's decodes run while the next batch is read, and its findings are reported once they are
back, in order. Waiting for each batch's decodes before reading on left the decoding threads idle
while the next 64 MiB were read: `verify --full` of 12,000 LLaVA rows (1.1 GB, tmpfs, 2 cores)
took 8.25-8.93 s that way, 7.57-7.83 s overlapped (4 interleaved rounds), for up to one batch
more in memory. (Decoding in processes instead of threads was measured too: no faster on 2 cores,
7.71-8.48 s, since the images must be pickled to them.)"""

from __future__ import annotations

from concurrent.futures import Executor, Future

from fastwds.media import ImageInfo, decode_problem, inspect_images
from fastwds.reasons import Problem
from fastwds.verify.report import Report
from fastwds.verify.rules import image_format_finding

# Images are checked in batches of about this many bytes (one Rust call), and decoded in pieces of
# about this many bytes (one pool job each: enough pieces per batch to keep every thread busy).
IMAGE_BATCH_BYTES = 64 << 20
DECODE_PIECE_BYTES = 4 << 20


def decode_problems(images: list[bytes]) -> list[Problem | None]:
    """Each image's decoding problem, or None."""
    return [decode_problem(data) for data in images]


def pieces(images: list[bytes], size: int) -> list[list[bytes]]:
    """Consecutive runs of images of about ``size`` bytes each (at least one image each)."""
    runs: list[list[bytes]] = [[]]
    filled = 0
    for data in images:
        if filled >= size:
            runs.append([])
            filled = 0
        runs[-1].append(data)
        filled += len(data)
    return [run for run in runs if run]


class ImageChecks:
    """Queues the shards' images and checks them in batches: headers at once, in one Rust call;
    with ``decoder`` (--full), every decodable image on that pool, reported when back."""

    def __init__(self, report: Report, decoder: Executor | None = None) -> None:
        self.report = report
        self.decoder = decoder
        self.pending: list[tuple[str, str, str, str, bytes]] = []  # shard, key, member, ext, data
        self.pending_bytes = 0
        self.checked = 0
        # The batch being decoded: its images, their header checks, which were decoded, the futures.
        self.decoding: tuple[list, list, list[int], list[Future]] | None = None

    def add(self, shard: str, key: str, member: str, ext: str, data: bytes) -> None:
        self.pending.append((shard, key, member, ext, data))
        self.pending_bytes += len(data)
        if self.pending_bytes >= IMAGE_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Check the queued images: their headers now, their decodes started; the batch before
        them is reported first."""
        if not self.pending:
            return
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        results = inspect_images([data for *_, data in batch])
        decodable = [i for i, result in enumerate(results) if isinstance(result, ImageInfo)]
        futures = []
        if self.decoder is not None and decodable:
            futures = [self.decoder.submit(decode_problems, piece)
                       for piece in pieces([batch[i][4] for i in decodable], DECODE_PIECE_BYTES)]
        self.finish()  # the previous batch, decoded meanwhile
        self.decoding = (batch, results, decodable, futures)
        if not futures:  # nothing to wait for
            self.finish()

    def finish(self) -> None:
        """Report the batch being decoded, once its decodes are back."""
        if self.decoding is None:
            return
        batch, results, decodable, futures = self.decoding
        self.decoding = None
        decoded = dict(zip(decodable, [problem for future in futures for problem in future.result()])) \
            if futures else {}
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
