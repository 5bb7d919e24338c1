"""Every reason code fastwds reports, in one place, by the side that reports it.

- ``REJECT_REASONS``: why ``convert`` did not write an input row (every source), as listed in
  ``rejects.jsonl`` and counted in the manifest's ``invalid_by_reason``.
- ``VERIFY_CODES``: what ``verify`` / ``inspect`` found in a shard set, with its severity. An
  **error** breaks a reader or loses data; a **warning** is a portability problem (some readers
  see the data differently). See COMPAT.md for the reader behaviour behind every rule.

Some names exist on both sides with the same meaning (``image_token_mismatch``): convert refuses
to write such a sample, verify finds one written by another producer.
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR, WARNING = "error", "warning"

REJECT_REASONS: dict[str, str] = {
    "missing_id": "the id is null or empty",
    "duplicate_id": "the id was already seen earlier in the dataset",
    "key_collision": "a different id maps to the same shard key",
    "no_conversation": "conversations missing or empty",
    "bad_turn": "a turn is not a {role, content} / {from, value} mapping",
    "bad_role": "a role is not user, assistant or system",
    "empty_turn": "a turn has no text",
    "image_token_mismatch": "number of <image> tokens differs from number of images",
    "image_empty": "an image has no bytes",
    "image_unknown_format": "an image is not JPEG/PNG/GIF/WebP/BMP/TIFF",
    "image_unreadable_header": "an image header cannot be parsed",
    "image_zero_size": "an image has zero width or height",
    "image_too_large": "an image has more pixels than --max-image-pixels (a decompression bomb)",
    "image_truncated": "an image is cut short",
    "image_decode_failed": "an image does not decode (--verify-images full)",
    "invalid_unicode": "a text or id holds a lone surrogate (a JSON \\ud800 escape without its pair): not Unicode",
    # SFT JSON sources: rows, media files read from disk, videos, system turns.
    "bad_json": "a JSONL line is not valid JSON",
    "bad_sample": "a row is not a JSON object, its id is no string or number, its media field is not a path / list "
                  "of paths, or it gives media (or turns) in two fields",
    "media_kind_mismatch": "a row has media of the other kind than --media",
    "media_missing": "a media file does not exist",
    "media_unreadable": "a media file cannot be read, or is not a regular file (a folder, FIFO or device)",
    "media_too_large": "a media file is larger than --max-media-size",
    "media_outside_root": "a media path resolves (symlinks followed) outside the media root",
    "video_token_mismatch": "number of <video> tokens differs from number of videos",
    "video_empty": "a video has no bytes",
    "video_unknown_format": "a video is not MP4/MOV/WebM/MKV/AVI",
    "video_truncated": "a video is cut short (its container structure runs past the end of the file)",
    "system_turn_position": "a system turn is not the first turn",
    # NPZ volumes and their CSV tables.
    "missing_csv_row": "a volume has no row in one of the CSV tables",
    "duplicate_csv_row": "a CSV row repeats a volume that an earlier row already describes (the first is used)",
    "csv_row_without_volume": "a CSV row names a volume file that does not exist",
    "array_not_found": "the .npz holds no array of the given name, or several arrays and none was named",
    "unreadable_volume": "the .npz or its .npy member cannot be read (bad zip, CRC, header or data cut short)",
    "not_numeric": "the array is not numeric (object arrays are never unpickled)",
    "empty_volume": "the array has a zero-length axis: no values to train on",
    "non_finite": "the volume holds NaN or infinite values (--on-overflow clip replaces them)",
    "float16_overflow": "the volume holds values beyond float16's range of +-65504 (--on-overflow clip clips them)",
}


VERIFY_CODES: dict[str, tuple[str, str]] = {
    # tar structure
    "tar_bad_checksum": (ERROR, "a header checksum is wrong: the archive is corrupt from there on"),
    "tar_bad_header": (ERROR, "a header field cannot be parsed"),
    "tar_truncated": (ERROR, "the archive is cut short"),
    "tar_missing_end": (ERROR, "the two zero blocks that end a tar are missing"),
    "tar_data_after_end": (ERROR, "data after the end-of-archive blocks (readers never see it)"),
    "shard_unreadable": (ERROR, "the shard file cannot be read"),
    # samples and keys
    "sample_not_contiguous": (ERROR, "a sample's members are not consecutive: readers split it in two"),
    "unsafe_member_path": (ERROR, "a member path is absolute or contains '..': extracting the shard writes outside "
                                  "its folder (tarfile on Python 3.11 does), fastwds' reader refuses the shard"),
    "key_split_hides_member": (ERROR, "a dot in a key makes readers split the name elsewhere: the sample's 'json' or "
                                      "image member comes back under another extension"),
    "duplicate_extension": (ERROR, "two members of one sample have the same extension"),
    "duplicate_key": (ERROR, "a key is used by more than one sample of the dataset"),
    "json_invalid": (ERROR, "a .json member is not valid UTF-8 JSON"),
    "name_mismatch": (ERROR, "the JSON's name/images list and the sample's members disagree"),
    "image_token_mismatch": (ERROR, "number of <image> tokens differs from number of image members"),
    "image_invalid": (ERROR, "an image is empty, truncated, unreadable or not an image"),
    "image_decode_failed": (ERROR, "an image does not decode (--full)"),
    # indexes and manifest
    "manifest_invalid": (ERROR, "manifest.json cannot be read"),
    "run_incomplete": (ERROR, "a fastwds run in this folder never finished: no manifest.json beside its run state"),
    "manifest_mismatch": (ERROR, "manifest.json disagrees with the shards"),
    "wids_index_mismatch": (ERROR, "a wids index disagrees with the shards"),
    "dali_index_mismatch": (ERROR, "a DALI .idx disagrees with its shard"),
    "energon_index_mismatch": (ERROR, "an Energon .tar.idx disagrees with its shard"),
    "energon_meta_mismatch": (ERROR, "Energon's .nv-meta (.info.json, index.sqlite) disagrees with the shards"),
    # float16 volumes against their NPZ sources (--check-precision)
    "precision_exceeded": (ERROR, "a float16 value is not its NPZ source value rounded to float16 (or clipped)"),
    "precision_stats_mismatch": (ERROR, "a volume's recorded max_abs_error/rmse differ from the recomputed ones"),
    "shape_mismatch": (ERROR, "a float16 volume's shape differs from its NPZ source's"),
    "source_missing": (ERROR, "a volume's NPZ source cannot be found"),
    "source_unreadable": (ERROR, "a volume's NPZ source cannot be read"),
    "volume_unreadable": (ERROR, "a sample's float16 volume member is missing, not float16, or does not decode"),
    # portability (COMPAT.md)
    "compressed_shard": (WARNING, "compressed shard: wids and DALI cannot read it, offsets cannot be indexed"),
    "empty_shard": (WARNING, "a shard without samples (DALI refuses it, Energon skips it)"),
    "member_ignored": (WARNING, "a member readers leave out of every sample"),
    "pax_header": (WARNING, "PAX extended headers: wids ignores them, 1 KiB more per member"),
    "float_mtime": (WARNING, "fractional mtimes (PAX): the shard is not reproducible byte for byte"),
    "long_name": (WARNING, "a name needs a long-name header: wids and DALI see a different name"),
    "name_not_portable": (WARNING, "a member name is not plain ASCII without spaces/backslashes"),
    "uppercase_extension": (WARNING, "an extension has uppercase letters: only webdataset lowercases them"),
    "pickled_member": (WARNING, "a .pkl/.pickle/.pyd/.pth member: webdataset's default decoders unpickle it (torch.load "
                                "without weights_only), running any code it holds; fastwds' reader never does"),
    "hidden_key": (WARNING, "a key starting with '.' or '__': HF datasets skips it, other readers do not"),
    "image_extension_mismatch": (WARNING, "an image's extension does not match its real format"),
    "unlisted_shard": (WARNING, "a shard that an index or manifest of the dataset does not list"),
    "hf_columns_differ": (WARNING, "samples have different members: HF datasets fails to load them or drops some "
                                   "(it infers its columns from the first samples) unless they are declared"),
    "hf_columns_undeclared": (WARNING, "members the dataset card (README.md) does not declare: HF datasets drops them"),
    "index_not_checked": (WARNING, "an index file that could not be checked"),
}


class UnregisteredReasonError(AssertionError):
    """A reason code that is not registered here: a bug in fastwds, never the user's data."""


def printable(text: str) -> str:
    """``text`` as it can be written to UTF-8 files: a lone surrogate (which JSON's ``\\ud800``
    escapes can produce) as the escape it came from, so the reject naming it can be written."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class Problem:
    """Why one row (or one of its media) cannot be written: a registered reason and a detail."""

    reason: str
    detail: str

    def __post_init__(self) -> None:
        check_reason(self.reason)


def check_reason(reason: str) -> str:
    if reason not in REJECT_REASONS:
        raise UnregisteredReasonError(f"reason {reason!r} is not in fastwds.reasons.REJECT_REASONS")
    return reason


def severity(code: str) -> str:
    return VERIFY_CODES[code][0]
