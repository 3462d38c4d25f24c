"""Building the labeled training set and checking datasets against the config."""

import logging
import os

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.utils import comm

from ssdet.data.datasets import unknown_dataset_hint
from ssdet.data.subsets import split_labeled
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_write_json
from ssdet.utils.run_dir import LABELED_SUBSET_FILE

logger = logging.getLogger(__name__)


# Meta-architectures whose class count is MODEL.RETINANET.NUM_CLASSES: Detectron2's RetinaNet and
# ssdet's JointRetinaNet and SsdetFCOS (names only: data imports no model).
RETINANET_KEYED_META_ARCHITECTURES = ("RetinaNet", "JointRetinaNet", "SsdetFCOS")


def num_classes_key(cfg: CfgNode) -> str:
    """The config key of the detector's class count, wherever its meta-architecture keeps it."""
    if cfg.MODEL.META_ARCHITECTURE in RETINANET_KEYED_META_ARCHITECTURES:
        return "MODEL.RETINANET.NUM_CLASSES"
    return "MODEL.ROI_HEADS.NUM_CLASSES"


def num_classes(cfg: CfgNode) -> int:
    """The detector's class count, wherever its meta-architecture keeps it."""
    node = cfg
    for name in num_classes_key(cfg).split("."):
        node = getattr(node, name)
    return node


def check_registered(names: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`InputError` naming the close matches when a name is not registered."""
    available = DatasetCatalog.list()
    for name in names:
        if name not in available:
            raise InputError(f"Unknown dataset {name!r}. {unknown_dataset_hint(name)}")


def check_num_classes(cfg: CfgNode, name: str) -> None:
    """Raise :class:`InputError` when the dataset's class count differs from the model's."""
    classes = MetadataCatalog.get(name).get("thing_classes")
    if classes is not None and len(classes) != num_classes(cfg):
        key = num_classes_key(cfg)
        raise InputError(
            f"Dataset {name!r} has {len(classes)} classes but {key} is {num_classes(cfg)}. "
            f"Set {key} {len(classes)} (or use a dataset with {num_classes(cfg)} classes)."
        )


def get_labeled_dataset_dicts(cfg: CfgNode) -> list[dict]:
    """The labeled training set: ``DATASETS.TRAIN``, each cut to ``SSDET.DATA.LABELED_FRACTION``.

    The chosen image ids are written to ``OUTPUT_DIR/labeled_subset.json`` by the main process,
    so every run records exactly which images it was trained on.
    """
    fraction, seed = cfg.SSDET.DATA.LABELED_FRACTION, cfg.SSDET.DATA.SUBSET_SEED
    check_registered(cfg.DATASETS.TRAIN)
    dicts: list[dict] = []
    record = {"fraction": fraction, "seed": seed, "datasets": {}}
    for name in cfg.DATASETS.TRAIN:
        full = DatasetCatalog.get(name)
        check_num_classes(cfg, name)
        labeled, _ = split_labeled(full, fraction, seed)
        logger.info("Labeled subset of %s: %s of %s images", name, len(labeled), len(full))
        record["datasets"][name] = {
            "num_images": len(full),
            "image_ids": sorted(d["image_id"] for d in labeled),
        }
        dicts.extend(labeled)
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        dicts = filter_images_with_only_crowd_annotations(dicts)
    if not dicts:
        raise InputError(f"No training images with annotations in {cfg.DATASETS.TRAIN}")
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        atomic_write_json(os.path.join(cfg.OUTPUT_DIR, LABELED_SUBSET_FILE), record, indent=None)
    return dicts
