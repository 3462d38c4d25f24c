"""Dataset registration: COCO-format detection sets, the mini world, and ImageNet-layout folders.

COCO 2017 itself is registered by Detectron2 (``coco_2017_train``, ``coco_2017_val``, ... under
``$DETECTRON2_DATASETS/coco``); ssdet adds, under the same root:

- ``mini_coco_train`` / ``mini_coco_val``: the generated mini-COCO (``mini_coco/``);
- ``mini_imagenet_train`` / ``mini_imagenet_val``: mini-ImageNet (``mini_imagenet/``), with the
  ground truth of its images recorded as ``ground_truth_json`` metadata (see
  :mod:`ssdet.data.ground_truth`: for the pseudo-label report only, never for training);
- ``imagenet_train`` / ``imagenet_val``: ImageNet, folder layout (``imagenet/{train,val}/<wnid>/``).

Your own data is registered from the config (:func:`register_config_datasets`, called when a
config is loaded): ``SSDET.DATA.REGISTER`` entries, and ``<train>_remainder`` for every
``DATASETS.TRAIN`` dataset, the images its labeled subset leaves out (the semi-supervised
protocol's unlabeled set).

Every loader checks its files first and raises :class:`InputError` naming the missing or broken
file and how to fix it, instead of failing deep inside Detectron2.
"""

import difflib
import json
import os
from collections.abc import Sequence
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ssdet.data.builtin_meta import MINI_COCO_CLASSES
from ssdet.data.image_folder import ImageFolderListing
from ssdet.data.subsets import split_labeled
from ssdet.utils.errors import InputError

_MINI_HINT = "Generate the mini world with `python datasets/prepare_mini_world.py`."
# The name of the images of a training set that its labeled subset leaves out: <train>_remainder.
REMAINDER_SUFFIX = "_remainder"
# What register_config_datasets registered in this process: name -> the spec it was registered
# with. A config loaded again (every tool loads its config more than once) re-registers nothing;
# a changed spec replaces the registration.
_CONFIG_REGISTERED: dict[str, tuple] = {}


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


def unknown_dataset_hint(name: str) -> str:
    """What to tell a user who named an unregistered dataset: the close names, and how to register.

    Detectron2 registers some 60 datasets: listing them all buries the one the user meant.
    """
    close = difflib.get_close_matches(name, DatasetCatalog.list(), n=5, cutoff=0.6)
    if close:
        found = f"Did you mean {' or '.join(repr(c) for c in close)}?"
    else:
        found = "No registered dataset has a similar name."
    return (
        f"{found} Register your own data with SSDET.DATA.REGISTER [[NAME, JSON, IMAGE_ROOT]] "
        "(docs/datasets.md: Using your own data)."
    )


def _register_once(name: str, spec: tuple, register: Any) -> None:
    """Register ``name`` by calling ``register()``, unless this process did so with ``spec``."""
    if _CONFIG_REGISTERED.get(name) == spec:
        return
    if name in _CONFIG_REGISTERED:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register()
    _CONFIG_REGISTERED[name] = spec


def _load_remainder(name: str, parent: str, fraction: float, seed: int) -> list[dict]:
    dicts = DatasetCatalog.get(parent)
    _, remainder = split_labeled(dicts, fraction, seed)
    if not remainder:
        raise InputError(
            f"Dataset {name!r} is empty: SSDET.DATA.LABELED_FRACTION {fraction} labels every image "
            f"of {parent!r}. Set a fraction below 1 to leave images for pseudo-labeling."
        )
    # Set by the parent's load_coco_json, as the remainder's own loader would have.
    loaded = MetadataCatalog.get(parent)
    for key in ("thing_classes", "thing_dataset_id_to_contiguous_id"):
        if loaded.get(key) is not None:
            MetadataCatalog.get(name).set(**{key: loaded.get(key)})
    return remainder


def register_remainder(parent: str, fraction: float, seed: int) -> str:
    """Register ``<parent>_remainder``: the images of ``parent`` not in its labeled subset.

    The subset is :func:`~ssdet.data.subsets.split_labeled`'s, the one a run with this
    ``SSDET.DATA.LABELED_FRACTION`` and ``SUBSET_SEED`` trains on, so the remainder and the
    subset are disjoint and together are ``parent``. The dicts keep their annotations, and the
    parent's annotation file is the remainder's ``ground_truth_json``: the pseudo-label report
    measures the teacher's precision and recall on the remainder (labeling never reads them).

    Args:
        parent: a registered detection dataset (list of dicts with unique ``image_id``).
        fraction, seed: the labeled subset's.

    Returns:
        The remainder's name. A name that is already taken by another registration is left as it
        is.
    """
    name = parent + REMAINDER_SUFFIX
    if name in DatasetCatalog.list() and name not in _CONFIG_REGISTERED:
        return name

    def register() -> None:
        DatasetCatalog.register(name, lambda: _load_remainder(name, parent, fraction, seed))
        metadata = {k: v for k, v in MetadataCatalog.get(parent).as_dict().items() if k != "name"}
        if metadata.get("json_file"):
            metadata["ground_truth_json"] = metadata["json_file"]
        MetadataCatalog.get(name).set(
            remainder_of=parent, labeled_fraction=fraction, subset_seed=seed, **metadata
        )

    _register_once(name, ("remainder", parent, fraction, seed), register)
    return name


def _register_entry(entry: Any) -> None:
    """Register one ``SSDET.DATA.REGISTER`` entry, ``[name, json, image_root]``."""
    if (
        not isinstance(entry, Sequence)
        or isinstance(entry, str)
        or len(entry) != 3
        or not all(isinstance(v, str) for v in entry)
    ):
        raise InputError(
            f"SSDET.DATA.REGISTER entry {entry!r} is not [NAME, JSON, IMAGE_ROOT] (three strings; "
            'JSON "" for an image folder).'
        )
    name, json_file, image_root = entry
    if not name or not image_root:
        raise InputError(f"SSDET.DATA.REGISTER entry {list(entry)!r} needs a name and image root.")
    if name in DatasetCatalog.list() and name not in _CONFIG_REGISTERED:
        raise InputError(
            f"SSDET.DATA.REGISTER: {name!r} is already a registered dataset; choose another name."
        )
    # Absolute now: a relative path means the same folder whatever a later stage's working dir.
    json_file = os.path.abspath(os.path.expanduser(json_file)) if json_file else ""
    image_root = os.path.abspath(os.path.expanduser(image_root))
    if json_file:
        _register_once(
            name,
            ("coco", json_file, image_root),
            lambda: register_coco_dataset(name, json_file, image_root),
        )
    else:
        _register_once(
            name, ("folder", image_root), lambda: register_image_folder(name, image_root)
        )


def register_config_datasets(cfg: Any) -> None:
    """Register the datasets a config names: ``SSDET.DATA.REGISTER`` and the train remainders.

    Called by :func:`~ssdet.engine.defaults.load_cfg`, so ``DATASETS.TRAIN``, ``DATASETS.TEST``,
    ``SSDET.EXPERIMENT.UNLABELED_DATASET`` and ``tools/pseudo_label.py --input`` can name them.
    Registration is lazy: files are read, and checked, when a dataset is first loaded.

    Args:
        cfg: a config with ssdet's keys.

    Raises:
        InputError: a malformed entry, or a name that another registration holds.
    """
    for entry in cfg.SSDET.DATA.REGISTER:
        _register_entry(entry)
    for name in cfg.DATASETS.TRAIN:
        # A remainder of a remainder would be a name nobody means.
        if name in DatasetCatalog.list() and not name.endswith(REMAINDER_SUFFIX):
            register_remainder(name, cfg.SSDET.DATA.LABELED_FRACTION, cfg.SSDET.DATA.SUBSET_SEED)


register_all(datasets_root())
