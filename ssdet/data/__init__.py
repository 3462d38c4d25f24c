"""ssdet's data: dataset registration, labeled subsets, image folders, the teacher's input, the
mini world.

Importing this module registers ssdet's datasets with Detectron2 (see ``datasets.py``).
"""

from ssdet.data.build import check_num_classes, check_registered, get_labeled_dataset_dicts
from ssdet.data.datasets import (
    datasets_root,
    load_coco_dataset,
    register_coco_dataset,
    register_image_folder,
)
from ssdet.data.image_folder import ImageFolderListing
from ssdet.data.labeling import ImageListing, build_labeling_loader
from ssdet.data.mixed import MixedBatch, build_mixed_train_loader
from ssdet.data.pseudo_labels import (
    PseudoLabelFilter,
    PseudoLabelStore,
    load_pseudo_label_dataset,
    register_pseudo_label_dataset,
)
from ssdet.data.subsets import split_labeled

__all__ = [
    "ImageFolderListing",
    "ImageListing",
    "MixedBatch",
    "PseudoLabelFilter",
    "PseudoLabelStore",
    "build_labeling_loader",
    "build_mixed_train_loader",
    "load_pseudo_label_dataset",
    "register_pseudo_label_dataset",
    "check_num_classes",
    "check_registered",
    "datasets_root",
    "get_labeled_dataset_dicts",
    "load_coco_dataset",
    "register_coco_dataset",
    "register_image_folder",
    "split_labeled",
]
