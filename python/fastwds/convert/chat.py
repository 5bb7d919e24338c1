"""Conversation + images samples (parquet and SFT sources): validation and encoding of a batch.

The sample JSON keeps the original id, conversations normalised to ``{role, content}``, the
source's extra fields, and per image its member name, format, width and height.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from fastwds.convert.options import ConvertOptions
from fastwds.convert.pipeline import PreparedBatch, RejectLog
from fastwds.convert.plan import Task
from fastwds.media import ImageData, ImageInfo, ImageProblem, decode_problem, image_bytes, inspect_images, reencode_jpeg
from fastwds.sources.base import RowBatch
from fastwds.validate import CheckedSample, check_sample, image_member_names


class ChatConverter(RejectLog):
    """Validates and encodes the conversation + images rows of one task."""

    def __init__(self, task: Task, options: ConvertOptions, images: ThreadPoolExecutor) -> None:
        super().__init__(task, options)
        self.images = images
        self.rejected = {offset: (reason, detail) for offset, reason, detail in task.rejected}

    def reject_row(self, batch: RowBatch, index: int, reason: str, detail: str, kept: bool = False) -> None:
        self.reject(batch.file, batch.first_row + index, batch.ids[index], reason, detail, kept)

    def inspect(self, flat: list[ImageData]) -> list[ImageInfo | ImageProblem]:
        """Checks of every image of a batch, in one call (sources with other media override this)."""
        checks: list[ImageInfo | ImageProblem] = inspect_images(flat)
        if self.options.verify_images == "full":
            decoded = self.images.map(
                lambda pair: decode_problem(image_bytes(pair[0])) if isinstance(pair[1], ImageInfo) else None,
                zip(flat, checks))
            checks = [problem or check for problem, check in zip(decoded, checks)]
        return checks

    def check_row(self, batch: RowBatch, index: int, media_checks: list) -> CheckedSample:
        return check_sample(batch.conversations[index], media_checks)

    def prepare(self, batch: RowBatch) -> PreparedBatch:
        flat = [image for images in batch.images for image in images]
        checks = self.inspect(flat)
        prepared = PreparedBatch(rows=len(batch))
        position = 0
        for index, sample_id in enumerate(batch.ids):
            images = batch.images[index]
            image_checks = checks[position:position + len(images)]
            position += len(images)
            offset = self.result.rows + index
            if sample_id is None or sample_id == "":
                self.reject_row(batch, index, "missing_id", "the id is null or empty")
                continue
            if offset in self.rejected:
                self.reject_row(batch, index, *self.rejected[offset])
                continue
            checked = self.check_row(batch, index, image_checks)
            keep_invalid = checked.problem is not None and self.options.on_invalid == "keep"
            if checked.problem is not None:
                self.reject_row(batch, index, checked.problem.reason, checked.problem.detail, kept=keep_invalid)
                if not keep_invalid:
                    continue
            prepared.add(sample_id, self.members(batch, index, images, image_checks, checked))
        self.result.rows += len(batch)
        return prepared

    def members(self, batch, index, images, image_checks, checked) -> dict[str, ImageData]:
        infos = [c if isinstance(c, ImageInfo) else None for c in image_checks]
        if self.options.reencode == "jpeg":
            encoded = list(self.images.map(
                lambda pair: reencode_jpeg(image_bytes(pair[0]), self.options.quality, self.options.max_side)
                if pair[1] is not None else (pair[0], None), zip(images, infos)))
            images = [data for data, _ in encoded]
            infos = [info for _, info in encoded]
        names = image_member_names([info.extension if info else "bin" for info in infos])
        document = {
            "id": batch.ids[index],
            "conversations": checked.conversations if checked.conversations is not None
            else batch.conversations[index],
            **batch.extras[index],
            "images": [{"member": name, "format": info.format if info else None,
                        "width": info.width if info else None, "height": info.height if info else None}
                       for name, info in zip(names, infos)],
            "source": {"file": batch.file, "row": batch.first_row + index},
        }
        if checked.problem is not None:
            document["invalid"] = {"reason": checked.problem.reason, "detail": checked.problem.detail}
        # An empty image (kept with --on-invalid keep) has no member; the JSON still lists it.
        empty = [isinstance(c, ImageProblem) and c.reason == "image_empty" for c in image_checks]
        members = {name: data for name, data, is_empty in zip(names, images, empty) if not is_empty}
        members["json"] = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return members
