"""ssdet's config keys. Every key lives under ``cfg.SSDET``; Detectron2's own keys keep their meaning."""

from detectron2.config import CfgNode as CN


def add_ssdet_config(cfg: CN) -> None:
    """Add ssdet's keys, with their defaults, to a Detectron2 config (in place).

    Args:
        cfg: a config from ``detectron2.config.get_cfg()``.
    """
    _C = cfg
    _C.SSDET = CN()

    # ---------------------------------------------------------------------------------------------
    # Labeled data: the paper's data-size study trains on a fraction of COCO train.
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.DATA = CN()
    # Fraction (0, 1] of each DATASETS.TRAIN dataset's images used as labeled data; 1.0 uses all.
    # The chosen image ids are written to OUTPUT_DIR/labeled_subset.json.
    _C.SSDET.DATA.LABELED_FRACTION = 1.0
    # Seed of the labeled subset's draw. Subsets of one seed are nested: 10% is inside 20%.
    _C.SSDET.DATA.SUBSET_SEED = 0

    # ---------------------------------------------------------------------------------------------
    # Augmentation policies Augment-S1..S4 (ssdet/data/augment).
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.AUGMENT = CN()
    # Training augmentation policy: "S1".."S4" as in the paper, or "D2" for Detectron2's default
    # (ResizeShortestEdge from INPUT.MIN_SIZE_TRAIN + horizontal flip). Test time is unchanged.
    _C.SSDET.AUGMENT.POLICY = "D2"
