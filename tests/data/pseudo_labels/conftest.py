"""Shared pseudo-label test helpers: tiny stores written through the shard writer and merge."""

import os

import numpy as np
import pytest

from ssdet.data.pseudo_labels import LabelingProvenance, PseudoLabelShardWriter, merge_shards

CLASSES = ["person", "car", "dog"]


def make_provenance(**kwargs) -> LabelingProvenance:
    defaults = dict(
        class_names=list(CLASSES),
        teacher_config_path="configs/teacher.yaml",
        teacher_config_text="MODEL:\n  META_ARCHITECTURE: RetinaNet\n",
        teacher_weights_path="teacher.pth",
        teacher_weights_sha256="ab" * 32,
        listing_path="listing.txt",
        listing_sha256="cd" * 32,
    )
    defaults.update(kwargs)
    return LabelingProvenance(**defaults)


def write_store(tmp_path, images, name="store", floor=0.0, **provenance):
    """Write ``images`` (file name, h, w, [(x1, y1, x2, y2, score, class), ...]) as one shard."""
    writer = PseudoLabelShardWriter(tmp_path / f"{name}.npz", len(CLASSES), score_floor=floor)
    for index, (file_name, h, w, dets) in enumerate(images):
        dets = np.asarray(dets, dtype=np.float64).reshape(-1, 6)
        writer.add(index, file_name, h, w, dets[:, :4], dets[:, 4], dets[:, 5].astype(int))
    return merge_shards([writer.write()], tmp_path / name, make_provenance(**provenance))


def mapped_store_kb(path: str, columns: tuple[str, ...] | None = None) -> int:
    """Resident kB of this process's mappings of files under ``path`` (/proc/self/smaps); with
    ``columns``, of those columns' ``.npy`` files only."""
    names = None if columns is None else {os.path.join(path, c + ".npy") for c in columns}
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                file = fields[5] if len(fields) >= 6 else ""
                inside = file.startswith(path + os.sep) and (names is None or file in names)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


def random_detections(num_images, seed=0):
    rng = np.random.default_rng(seed)
    images = []
    for i in range(num_images):
        k = int(rng.integers(0, 6))
        xy = rng.uniform(0, 50, size=(k, 2))
        wh = rng.uniform(1, 30, size=(k, 2))
        images.append(
            (
                f"img/{i:03d}.jpg",
                64,
                80,
                rng.uniform(0, 1, size=k).astype(np.float32),
                np.concatenate([xy, xy + wh], axis=1),
                rng.integers(0, len(CLASSES), size=k),
            )
        )
    return images


def write_shards(tmp_path, images, groups, tag):
    """Write one shard per group of image indices, with a failure for every 7th image."""
    paths = []
    for g, indices in enumerate(groups):
        writer = PseudoLabelShardWriter(tmp_path / f"{tag}-{g}.npz", len(CLASSES), 0.05)
        for i in indices:
            name, h, w, scores, boxes, classes = images[i]
            if i % 7 == 3:
                writer.add_failure(i, name, "cannot decode")
            else:
                writer.add(i, name, h, w, boxes, scores, classes)
        paths.append(writer.write())
    return paths


@pytest.fixture
def filter_store(tmp_path):
    return write_store(
        tmp_path,
        [
            # image 0: person 0.9 (10x10), car 0.6 (2x2 px), dog 0.4
            (
                "0.jpg",
                100,
                100,
                [(0, 0, 10, 10, 0.9, 0), (0, 0, 2, 2, 0.6, 1), (0, 0, 8, 8, 0.4, 2)],
            ),
            # image 1: dog 0.55, dog 0.5 (exactly the threshold), person 0.45
            (
                "1.jpg",
                100,
                100,
                [(0, 0, 9, 9, 0.55, 2), (0, 0, 9, 9, 0.5, 2), (1, 1, 9, 9, 0.45, 0)],
            ),
            # image 2: only low scores
            ("2.jpg", 100, 100, [(0, 0, 9, 9, 0.2, 1)]),
        ],
    )


@pytest.fixture
def balance_store(tmp_path):
    # Top classes: person x6 (scores 0.60..0.95), car x2, dog x1, and two images without a box.
    images = [(f"p{k}.jpg", 10, 10, [(0, 0, 5, 5, 0.6 + 0.07 * k, 0)]) for k in range(6)]
    images += [
        (f"c{k}.jpg", 10, 10, [(0, 0, 5, 5, 0.8, 1), (0, 0, 5, 5, 0.7, 0)]) for k in range(2)
    ]
    images += [("d.jpg", 10, 10, [(0, 0, 5, 5, 0.9, 2)])]
    images += [(f"e{k}.jpg", 10, 10, [(0, 0, 5, 5, 0.1, 2)]) for k in range(2)]
    return write_store(tmp_path, images)
