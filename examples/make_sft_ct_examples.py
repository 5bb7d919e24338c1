"""Regenerate examples/sft/ (SFT JSONL with mixed-format images, for `fastwds convert sft`) and
examples/ct/ (small CT-like NPZ volumes plus reports/metadata/labels CSVs, for `fastwds convert
npz`). Both are shipped as files, so the tests' golden hashes do not depend on the image encoder
or numpy of the machine that runs them. Run from anywhere: the files land beside this script."""

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent
rng = np.random.default_rng(11)


def image(fmt: str, width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256], axis=-1)
    pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    picture = Image.fromarray(pixels)
    if fmt == "GIF":
        picture = picture.convert("P")
    picture.save(out, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return out.getvalue()


def make_sft() -> None:
    root = HERE / "sft"
    media = root / "images"
    media.mkdir(parents=True, exist_ok=True)
    files = {"cat.jpg": image("JPEG", 96, 64), "dog.png": image("PNG", 48, 40), "bird.webp": image("WEBP", 64, 48),
             "fish.gif": image("GIF", 40, 30), "cow.jpg": image("JPEG", 80, 60), "cut.jpg": image("JPEG", 64, 64)[:-200]}
    for name, data in files.items():
        (media / name).write_bytes(data)

    def turns(question: str, answer: str, system: str | None = None) -> list[dict]:
        head = [{"role": "system", "content": system}] if system else []
        return head + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    rows = [
        {"id": "sft-0", "image": "images/cat.jpg", "messages": turns("<image>\nWhat animal is this?", "A cat.")},
        {"id": "sft-1", "image": "images/dog.png", "messages": turns("<image> Describe it.", "A dog.", "Be brief.")},
        {"id": "sft-2", "image": "images/bird.webp", "messages": turns("<image> Colour?", "Mostly green.")},
        {"id": "sft-3", "image": "images/fish.gif", "messages": turns("<image> Where is it?", "In water.")},
        {"id": "sft-4", "images": ["images/cat.jpg", "images/dog.png"],
         "messages": turns("<image><image> Compare them.", "A cat and a dog.")},
        {"id": "sft-5", "messages": turns("Tell me a joke.", "Not today.")},
        {"id": "sft-6", "image": "images/cow.jpg", "messages": turns("<image> Count the legs.", "Four.")},
        {"id": "sft-7", "images": ["images/bird.webp", "images/fish.gif", "images/cow.jpg"],
         "messages": turns("<image> <image> <image> Which can fly?", "The bird.")},
        {"id": "sft-8", "image": "images/missing.jpg", "messages": turns("<image> ?", "?")},
        {"id": "sft-9", "image": "images/cut.jpg", "messages": turns("<image> ?", "?")},
        {"id": "sft-10", "image": "images/cow.jpg", "messages": turns("No token here.", "Then no image.")},
        {"id": "sft-11", "image": "images/dog.png", "messages": turns("<image> Good boy?", "Yes.")},
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def make_ct() -> None:
    root = HERE / "ct"
    layout = ["train_1/train_1_a/train_1_a_1.npz", "train_1/train_1_a/train_1_a_2.npz",
              "train_2/train_2_a/train_2_a_1.npz", "train_3/train_3_a/train_3_a_1.npz",
              "train_4/train_4_a/train_4_a_1.npz", "train_5/train_5_a/train_5_a_1.npz"]
    labels = ("Cardiomegaly", "Emphysema", "Nodule")
    names = []
    for number, relative in enumerate(layout):
        volume = rng.normal(0, 300, (1, 8, 32, 32)).astype(np.float32)
        if number == 4:
            volume.flat[17] = 1e6  # beyond float16: rejected as float16_overflow by default
        path = root / "data" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, volume)
        names.append(Path(relative).stem + ".nii.gz")

    def table(name: str, header: list[str], rows: list[list]) -> None:
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    table("reports.csv", ["VolumeName", "Findings_EN", "Impressions_EN"],
          [[n, f"Findings of volume {i}, unremarkable.", f"Impression {i}."] for i, n in enumerate(names) if i != 5])
    table("meta.csv", ["VolumeName", "Manufacturer", "XYSpacing", "ZSpacing"],
          [[n, "GE", "[0.75, 0.75]", 1.5] for n in names])
    table("labels.csv", ["VolumeName", *labels], [[n, i % 2, (i // 2) % 2, 1] for i, n in enumerate(names)])


make_sft()
make_ct()
print("wrote", HERE / "sft", "and", HERE / "ct")
