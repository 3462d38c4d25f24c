"""Dataset registration: COCO-format detection sets, the mini world, and ImageNet-layout folders.

COCO 2017 itself is registered by Detectron2 (``coco_2017_train``, ``coco_2017_val``, ... under
``$DETECTRON2_DATASETS/coco``); ssdet adds, under the same root:

- ``mini_coco_train`` / ``mini_coco_val``: the generated mini-COCO (``mini_coco/``);
- ``mini_imagenet_train`` / ``mini_imagenet_val``: mini-ImageNet (``mini_imagenet/``), with the
  ground truth of its images recorded as ``ground_truth_json`` metadata (see
  :mod:`ssdet.data.ground_truth`: for the pseudo-label report only, never for training);
- ``imagenet_train`` / ``imagenet_val``: ImageNet, folder layout (``imagenet/{train,val}/<wnid>/``).

Every loader checks its files first and raises :class:`InputError` naming the missing or broken
file and how to fix it, instead of failing deep inside Detectron2.
"""

import json
import os
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ssdet.data.image_folder import ImageFolderListing
from ssdet.data.mini_world import MINI_COCO_CLASSES
from ssdet.utils.errors import InputError

_MINI_HINT = "Generate the mini world with `python datasets/prepare_mini_world.py`."


def datasets_root() -> str:
    """The datasets root, as Detectron2 resolves it: ``$DETECTRON2_DATASETS`` or ``./datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def load_coco_dataset(json_file: str, image_root: str, name: str, hint: str = "") -> list[dict]:
    """Detectron2's ``load_coco_json`` with the input checked first.

    Args:
        json_file: COCO instances annotation file.
        image_root: folder the JSON's ``file_name`` entries are relative to.
        name: the registered dataset name (sets its metadata, as ``load_coco_json`` does).
        hint: appended to error messages, e.g. how to create the dataset.

    Returns:
        Detectron2 dataset dicts, one per image.

    Raises:
        InputError: a missing or unreadable annotation file, no images, or images that the
            annotations name but the image folder lacks (counted, the first few named).
    """
    if not os.path.isfile(json_file):
        raise InputError(f"Dataset {name!r}: annotation file {json_file!r} not found. {hint}")
    if not os.path.isdir(image_root):
        raise InputError(f"Dataset {name!r}: image folder {image_root!r} not found. {hint}")
    try:
        dicts = load_coco_json(json_file, image_root, name)
    except json.JSONDecodeError as e:
        raise InputError(
            f"Dataset {name!r}: {json_file!r} is not valid JSON ({e}). The file is corrupt or "
            f"truncated: re-download or regenerate it. {hint}"
        ) from e
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise InputError(
            f"Dataset {name!r}: {json_file!r} is not a COCO instances file (problem: {e!r}). "
            f"It needs 'images', 'annotations' and 'categories'."
        ) from e
    if not dicts:
        raise InputError(f"Dataset {name!r}: {json_file!r} lists no images. {hint}")
    check_image_files(dicts, name, json_file, image_root, hint)
    return dicts


def check_image_files(
    dicts: list[dict], name: str, json_file: str, image_root: str, hint: str = ""
) -> None:
    """Raise :class:`InputError` when images that the annotations name are missing.

    A missing file would otherwise stop training at the first batch that samples it, hours in.
    Each folder is listed once, rather than one ``stat`` per image: about 0.2 s for a folder of
    COCO's 118k images.

    Args:
        dicts: the dataset dicts (``file_name`` absolute or relative to the working directory).
        name, json_file, image_root, hint: for the message.
    """
    by_folder: dict[str, list[str]] = {}
    for d in dicts:
        folder, base = os.path.split(d["file_name"])
        by_folder.setdefault(folder, []).append(base)
    missing = []
    for folder, names in by_folder.items():
        try:
            present = set(os.listdir(folder))
        except OSError:  # a folder that is gone, or no folder
            present = set()
        missing += [os.path.join(folder, n) for n in names if n not in present]
    if missing:
        first = ", ".join(os.path.relpath(f, image_root) for f in missing[:5])
        raise InputError(
            f"Dataset {name!r}: {len(missing)} of the {len(dicts)} images that {json_file!r} "
            f"annotates are missing from {image_root!r} (first: {first}). Restore them, or "
            f"remove their entries from the annotation file. {hint}".rstrip()
        )


def register_coco_dataset(
    name: str,
    json_file: str,
    image_root: str,
    thing_classes: list[str] | None = None,
    hint: str = "",
) -> None:
    """Register a COCO-format detection dataset, evaluated with ``COCOEvaluator``.

    Args:
        name: dataset name for ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        json_file: COCO instances annotation file.
        image_root: folder of the images.
        thing_classes: class names, when known before loading (the loader sets them otherwise).
        hint: how to create the dataset, appended to error messages.
    """
    DatasetCatalog.register(name, lambda: load_coco_dataset(json_file, image_root, name, hint))
    metadata: dict[str, Any] = dict(json_file=json_file, image_root=image_root)
    if thing_classes is not None:
        metadata["thing_classes"] = list(thing_classes)
    MetadataCatalog.get(name).set(evaluator_type="coco", **metadata)


def register_image_folder(name: str, root: str, ground_truth_json: str | None = None) -> None:
    """Register an ImageNet-layout split folder (``root/<class>/<image>``) as a dataset.

    ``DatasetCatalog.get(name)`` returns an :class:`ImageFolderListing`, a lazy sequence of
    ``{"file_name", "image_id", "class_id"}`` dicts, not a list: at ImageNet scale a list of dicts
    would cost gigabytes in every DataLoader worker.

    Args:
        name: dataset name, e.g. for ``tools/pseudo_label.py --input``.
        root: the split folder.
        ground_truth_json: COCO instances file of the images' objects (file names relative to
            ``root``), set as the ``ground_truth_json`` metadata; the file need not exist yet.
    """
    DatasetCatalog.register(name, lambda: ImageFolderListing(root))
    metadata: dict[str, Any] = dict(image_root=root, evaluator_type="classification")
    if ground_truth_json is not None:
        metadata["ground_truth_json"] = ground_truth_json
    MetadataCatalog.get(name).set(**metadata)


def register_all(root: str) -> None:
    """Register ssdet's datasets under ``root`` (the Detectron2 datasets root)."""
    mini_coco = os.path.join(root, "mini_coco")
    for split in ("train", "val"):
        register_coco_dataset(
            f"mini_coco_{split}",
            os.path.join(mini_coco, "annotations", f"instances_{split}.json"),
            os.path.join(mini_coco, split),
            thing_classes=MINI_COCO_CLASSES,
            hint=_MINI_HINT,
        )
        register_image_folder(
            f"mini_imagenet_{split}",
            os.path.join(root, "mini_imagenet", split),
            ground_truth_json=os.path.join(
                root, "mini_imagenet", "annotations", f"instances_{split}.json"
            ),
        )
        register_image_folder(f"imagenet_{split}", os.path.join(root, "imagenet", split))


register_all(datasets_root())
