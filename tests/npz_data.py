"""Small CT-like datasets for the npz converter tests: volumes in the three layouts, CSVs keyed by
VolumeName, and volumes with the defects the converter must catch."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHAPE = (1, 8, 16, 16)
LABELS = ("Medical material", "Cardiomegaly", "Emphysema")


@dataclass
class Dataset:
    root: Path
    reports: Path
    meta: Path
    labels: Path
    volumes: dict[str, np.ndarray] = field(default_factory=dict)  # key -> float32 volume
    files: dict[str, str] = field(default_factory=dict)  # key -> path relative to root
    label_rows: dict[str, list[int]] = field(default_factory=dict)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def make_dataset(base: Path, *, shape: tuple[int, ...] = SHAPE, defects: bool = True, seed: int = 0) -> Dataset:
    """Eight good volumes over the three layouts; with ``defects``, also a volume with a NaN, one
    with 1e6, one with -inf, one without a reports row, and a labels row for a missing volume."""
    rng = np.random.default_rng(seed)
    root = base / "data"
    data = Dataset(root, base / "reports.csv", base / "meta.csv", base / "labels.csv")
    layout = {
        "train_1_a_1": "train_1_a_1.npz",
        "train_1_a_2": "train_1_a_2.npz",
        "train_2_a_1": "train_2/train_2_a_1.npz",
        "train_2_b_1": "train_2/train_2_b_1.npz",
        "train_3_a_1": "train_3/train_3_a/train_3_a_1.npz",
        "train_3_a_2": "train_3/train_3_a/train_3_a_2.npz",
        "train_4_a_1": "train_4/train_4_a/train_4_a_1.npz",
        "train_4_b_1": "train_4/train_4_b/train_4_b_1.npz",
    }
    if defects:
        layout |= {"bad_nan": "bad/bad_nan.npz", "bad_big": "bad/b/bad_big.npz", "bad_inf": "bad_inf.npz",
                   "no_report": "train_5/no_report.npz"}
    for key, relative in layout.items():
        volume = rng.uniform(-1, 1, shape).astype(np.float32)
        if key == "bad_nan":
            volume.flat[5] = np.nan
        elif key == "bad_big":
            volume.flat[7] = 1e6
        elif key == "bad_inf":
            volume.flat[-1] = -np.inf
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, volume)
        data.volumes[key] = volume
        data.files[key] = relative
        data.label_rows[key] = [int(v) for v in rng.integers(0, 2, len(LABELS))]
    names = {key: f"{key}.nii.gz" for key in layout}
    write_csv(data.reports, ["VolumeName", "ClinicalInformation_EN", "Findings_EN", "Impressions_EN"],
              [[names[k], f"info {k}", f"findings of {k}, with a comma", f"impression {k}"]
               for k in layout if k != "no_report"])
    write_csv(data.meta, ["VolumeName", "Manufacturer", "XYSpacing", "ZSpacing"],
              [[names[k], "GE", "[0.75, 0.75]", 1.5] for k in layout])
    label_rows = [[names[k], *data.label_rows[k]] for k in layout]
    if defects:
        label_rows.append(["ghost_volume.nii.gz", 1, 1, 1])
    write_csv(data.labels, ["VolumeName", *LABELS], label_rows)
    return data


GOOD = ["train_1_a_1", "train_1_a_2", "train_2_a_1", "train_2_b_1", "train_3_a_1", "train_3_a_2",
        "train_4_a_1", "train_4_b_1"]
