"""The class lists of ssdet's built-in datasets, without their generator.

Registering the datasets (``ssdet.data.datasets``, on ``import ssdet``) needs the names only; the
mini world's generator (``ssdet.data.mini_world``, OpenCV and multiprocessing) is imported when
the data is generated.
"""

__all__ = ["MINI_COCO_CLASSES", "MINI_IMAGENET_CLASSES"]

MINI_COCO_CLASSES: list[str] = [
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "hexagon",
    "heart",
    "arrow",
    "crescent",
]
# Like ImageNet, the unlabeled set has classes the labeled set lacks.
MINI_IMAGENET_CLASSES: list[str] = MINI_COCO_CLASSES + ["tee", "frame", "bolt", "clover"]
