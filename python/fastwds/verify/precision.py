"""``verify --check-precision``: every float16 volume written by ``convert npz`` compared with its
NPZ source again (shape, float16 rounding, and the statistics recorded in its JSON)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from fastwds.convert.layout import MANIFEST_NAME
from fastwds.decode import DECODERS, decode_value
from fastwds.tar.scanner import TarMember
from fastwds.verify.report import Report
from fastwds.volume import VolumeReadError, compare_float16, open_npz_volume, rounding_bound

# Recorded and recomputed volume statistics agree to this relative tolerance (the converter works
# in float32 where the check works in float64).
STATS_TOLERANCE = 1e-6


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class PrecisionChecks:
    """``--check-precision``: each float16 volume that ``convert npz`` wrote (a sample whose JSON
    has ``volume.member``) against its NPZ source, found at the JSON's ``file`` under
    ``manifest.json``'s ``source.root`` or ``--source-root``. The source is read in chunks
    (``fastwds.volume``), so a volume costs its float16 array and its member bytes."""

    def __init__(self, report: Report, dataset_root: Path, source_root: str | None) -> None:
        self.report = report
        self.array: str | None = None  # the npz array `convert npz --array` named
        self.recorded: dict[str, tuple[int, int]] = {}  # NPZ file -> (size, mtime_ns) when converted
        self.root, self.no_root = self._find_root(dataset_root, source_root)
        self.volumes = 0  # compared with their source
        self.not_compared = 0  # no source root to look in
        self.values = 0
        self.squared_error = 0.0
        self.clipped = 0
        self.worst: tuple[float, str, str] | None = None  # (max abs error, shard, key)

    def _find_root(self, dataset_root: Path, source_root: str | None) -> tuple[Path | None, str]:
        """The folder NPZ files are relative to, or None and why there is none."""
        manifest = None
        try:
            manifest = json.loads((dataset_root / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # missing: said below; unreadable: Sidecars reports manifest_invalid
        source = manifest.get("source") if isinstance(manifest, dict) else None
        kind = source.get("kind") if isinstance(source, dict) else None
        if kind == "npz":
            options = manifest.get("options") or {}
            self.array = (options.get("source_options") or {}).get("array")
            self.recorded = {f["path"]: (f["size"], f["mtime_ns"]) for f in source.get("files", [])
                             if isinstance(f, dict) and {"path", "size", "mtime_ns"} <= f.keys()}
        if source_root is not None:
            return Path(source_root), ""
        if manifest is None:
            return None, f"no readable {MANIFEST_NAME} beside the shards"
        if kind != "npz":
            return None, f"{MANIFEST_NAME} source.kind is {kind!r}, not 'npz'"
        if not isinstance(source.get("root"), str):
            return None, f"{MANIFEST_NAME} has no source.root"
        return Path(source["root"]), ""

    def check(self, shard: str, key: str, members: dict[str, TarMember], document: object) -> None:
        volume = document.get("volume") if isinstance(document, dict) else None
        if not isinstance(volume, dict) or "member" not in volume:
            return  # not a converted volume
        if self.root is None:
            self.not_compared += 1
            return
        file = document.get("file")
        if not isinstance(file, str) or not file:
            self.report.add("source_missing", f"key {key}: the JSON names no NPZ 'file'", shard, key)
            return
        ext = str(volume["member"])
        member = members.get(ext)
        name = member.name if member is not None else f"{key}.{ext}"
        half = self._decode(shard, key, name, ext, member)
        if half is None:
            return
        source = self.root / file
        if not source.is_file():
            self.report.add("source_missing", f"{name}: NPZ source {source} not found"
                            + ("" if source.parent.is_dir() else " (nor its folder; --source-root DIR "
                               "names the folder the data moved to)"), shard, key, name)
            return
        clipped = bool(volume.get("clipped"))
        try:
            with open_npz_volume(source, self.array) as npz:
                if npz.shape != half.shape:
                    self.report.add("shape_mismatch", f"{name}: shape {list(half.shape)} but NPZ source {source} "
                                    f"holds {list(npz.shape)}{self._changed(file, source)}", shard, key, name)
                    return
                flat = half.ravel(order="F" if npz.fortran_order else "C")  # the source's element order
                found = compare_float16(flat, npz.chunks(), clipped)
                shape, fortran_order = npz.shape, npz.fortran_order
        except (VolumeReadError, OSError) as error:
            self.report.add("source_unreadable", f"{name}: NPZ source {source}: {error}", shard, key, name)
            return
        self.volumes += 1
        self.values += found.compared
        self.squared_error += found.squared_error
        self.clipped += found.clipped
        if found.max_abs_error is not None and (self.worst is None or found.max_abs_error > self.worst[0]):
            self.worst = (found.max_abs_error, shard, key)
        if found.wrong:
            index, expected, got = found.first_wrong
            position = [int(i) for i in np.unravel_index(index, shape, order="F" if fortran_order else "C")]
            allowed = ("" if not math.isfinite(expected) else
                       f", allowed error {float(rounding_bound(np.float64(expected))):.3g}")
            self.report.add("precision_exceeded", f"{name}: {found.wrong:,} value(s) are not the float16 rounding of "
                            f"NPZ source {source}{' (or its clipped value)' if clipped else ''}; first at "
                            f"{position}: source {expected!r}, float16 {got!r}{allowed}{self._changed(file, source)}",
                            shard, key, name)
        differences = []
        for field_name, recomputed in (("max_abs_error", found.max_abs_error), ("rmse", found.rmse)):
            recorded = volume.get(field_name)
            if not _same_stat(recorded, _finite_or_none(recomputed)):
                differences.append(f"{field_name} {recorded!r} recorded, {recomputed!r} recomputed")
        for field_name, recomputed in (("compared", found.compared), ("clipped", found.clipped)):
            if field_name in volume and volume[field_name] != recomputed:
                differences.append(f"{field_name} {volume[field_name]!r} recorded, {recomputed} recomputed")
        if differences:
            self.report.add("precision_stats_mismatch", f"{name}: the JSON's volume statistics differ from those "
                            f"recomputed against NPZ source {source}: {'; '.join(differences)}"
                            f"{self._changed(file, source)}", shard, key, name)

    def _decode(self, shard: str, key: str, name: str, ext: str, member: TarMember | None) -> np.ndarray | None:
        """The sample's volume as the readers decode it, or None (reported)."""
        if member is None:
            self.report.add("volume_unreadable", f"key {key}: the JSON's volume.member is {ext!r} but the sample "
                            "has no such member", shard, key, name)
            return None
        try:
            half = decode_value(ext, member.data or b"", DECODERS)
        except Exception as error:  # numpy's and zstandard's errors alike: the member does not decode
            self.report.add("volume_unreadable", f"{name}: does not decode: {type(error).__name__}: {error}",
                            shard, key, name)
            return None
        if not isinstance(half, np.ndarray) or half.dtype != np.float16:
            what = f"dtype {half.dtype}" if isinstance(half, np.ndarray) else f"a {type(half).__name__}"
            self.report.add("volume_unreadable", f"{name}: {what}, not a float16 array", shard, key, name)
            return None
        return half

    def _changed(self, file: str, source: Path) -> str:
        """A hint when the NPZ file is not the one converted (by size and modification time)."""
        recorded = self.recorded.get(file)
        if recorded is None:
            return ""
        stat = source.stat()
        if (stat.st_size, stat.st_mtime_ns) == tuple(recorded):
            return ""
        return f" (the NPZ changed since conversion: {MANIFEST_NAME} recorded size {recorded[0]}, now {stat.st_size})" \
            if stat.st_size != recorded[0] else f" (the NPZ was modified after conversion, per {MANIFEST_NAME})"

    def finish(self) -> None:
        if self.not_compared:
            self.report.add("source_missing", f"{self.not_compared:,} float16 volume(s) not compared: {self.no_root}; "
                            "--source-root DIR names the folder `convert npz` read")

    def summary(self) -> dict:
        rmse = math.sqrt(self.squared_error / self.values) if self.values else None
        summary = {
            "volumes": self.volumes,
            "values": self.values,
            "max_abs_error": _finite_or_none(self.worst[0]) if self.worst else None,
            "max_abs_error_shard": self.worst[1] if self.worst else None,
            "max_abs_error_key": self.worst[2] if self.worst else None,
            "rmse": _finite_or_none(rmse),
            "clipped_values": self.clipped,
            "not_compared": self.not_compared,
            "source_root": str(self.root) if self.root is not None else None,
        }
        if not self.volumes and not self.not_compared:
            summary["note"] = "no float16 volumes in these shards: nothing to compare"
        return summary


def _same_stat(recorded: object, recomputed: float | None) -> bool:
    if recorded is None or recomputed is None:
        return recorded is None and recomputed is None
    if isinstance(recorded, bool) or not isinstance(recorded, (int, float)):
        return False
    return math.isclose(recorded, recomputed, rel_tol=STATS_TOLERANCE)
