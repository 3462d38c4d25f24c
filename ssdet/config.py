"""ssdet's config keys: every key lives under ``cfg.SSDET``; Detectron2's keep their meaning."""

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
    # Training image size (height, width), pixels, to which S1..S4 crop and pad every image.
    _C.SSDET.AUGMENT.OUTPUT_SIZE = (640, 640)
    # Scale jitter (min, max) of S1..S4, as factors of OUTPUT_SIZE. Empty means the policy default:
    # (0.8, 1.2) for S1 and S2, (0.5, 2.0) for S3 and S4.
    _C.SSDET.AUGMENT.SCALE_RANGE = ()
    # Probability (0-1) of the horizontal flip of S1..S4.
    _C.SSDET.AUGMENT.FLIP_PROB = 0.5
    # AutoAugment detection policy of S2 and S3: "v0" (the paper's), "v1", "v2" or "v3".
    _C.SSDET.AUGMENT.AUTOAUGMENT_VERSION = "v0"
    # Number of RandAugment ops applied to each image by S4 (the paper's N).
    _C.SSDET.AUGMENT.RANDAUGMENT_NUM_OPS = 2
    # Magnitude of the RandAugment ops of S4 (the paper's M), AutoAugment levels (10 = top level).
    _C.SSDET.AUGMENT.RANDAUGMENT_MAGNITUDE = 10
    # AutoAugment op names S4 draws from. Empty means the authors' detection RandAugment op set
    # (ssdet.data.augment.RANDAUGMENT_OPS: 4 color ops, Cutout and the 5 box-moving ops).
    _C.SSDET.AUGMENT.RANDAUGMENT_OPS = ()
    # Pixel value (0-255) of the padding of S1..S4 and of the pixels their ops leave empty.
    _C.SSDET.AUGMENT.FILL_VALUE = 128
    # Factor on the pixel-valued AutoAugment / RandAugment magnitudes (translate up to 250 px,
    # cutout up to 100 px), sized by the authors for COCO images (~640 px); ~0.25 for 160-px images.
    _C.SSDET.AUGMENT.PIXEL_MAGNITUDE_SCALE = 1.0

    # ---------------------------------------------------------------------------------------------
    # Pseudo labels: the teacher's boxes on unlabeled images (ssdet/data/pseudo_labels.py). The
    # teacher stores every box above LABELING_SCORE_FLOOR once; the student's filter below is
    # applied when the store is loaded, so changing it needs no second teacher pass.
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.PSEUDO_LABELS = CN()
    # Directory of the pseudo-label store the student trains on (written by tools/pseudo_label.py);
    # "" = none.
    _C.SSDET.PSEUDO_LABELS.STORE = ""
    # Lowest teacher score (0-1) stored at labeling time; the student's thresholds act at >= it.
    _C.SSDET.PSEUDO_LABELS.LABELING_SCORE_FLOOR = 0.05
    # Student side: keep pseudo boxes with teacher score >= this (0-1); the paper keeps >= 0.5.
    _C.SSDET.PSEUDO_LABELS.SCORE_THRESH = 0.5
    # Per-class overrides of SCORE_THRESH: [[class name or contiguous id, threshold], ...];
    # empty = SCORE_THRESH for every class.
    _C.SSDET.PSEUDO_LABELS.CLASS_SCORE_THRESHS = []
    # Keep at most this many top-scoring pseudo boxes per image (boxes); 0 = no limit.
    _C.SSDET.PSEUDO_LABELS.MAX_BOXES_PER_IMAGE = 0
    # Drop pseudo boxes whose shorter side is below this (pixels, original image); 0 = keep all.
    _C.SSDET.PSEUDO_LABELS.MIN_BOX_SIZE = 0.0
    # Keep images left without pseudo boxes as background-only images (once each, not balanced).
    _C.SSDET.PSEUDO_LABELS.KEEP_EMPTY_IMAGES = False
    # Noisy Student's class balancing: an image's class is that of its top-scoring kept box; each
    # class is duplicated or subsampled to IMAGES_PER_CLASS images.
    _C.SSDET.PSEUDO_LABELS.BALANCE_CLASSES = False
    # Target number of images per class when balancing (images); 0 = the mean over classes present.
    _C.SSDET.PSEUDO_LABELS.IMAGES_PER_CLASS = 0
    # How classes over the target are cut: "top_score" keeps the images with the highest top-box
    # score (Noisy Student's rule), "random" draws them with BALANCE_SEED.
    _C.SSDET.PSEUDO_LABELS.BALANCE_SUBSAMPLE = "top_score"
    # Seed (integer) of the balancing draws: duplicates' remainder and "random" subsampling.
    _C.SSDET.PSEUDO_LABELS.BALANCE_SEED = 0

    # ---------------------------------------------------------------------------------------------
    # Self-training: the student's mixed batches and loss (ssdet/data/mixed.py,
    # ssdet/engine/student.py).
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.SELF_TRAINING = CN()
    # Fraction (0-1) of each process's batch that is pseudo-labeled: of B = SOLVER.IMS_PER_BATCH /
    # world size images, round(B * PSEUDO_RATIO) are pseudo-labeled and the rest human-labeled.
    # The paper uses half and half (0.5); 0 trains on human labels only, 1 on pseudo labels only.
    _C.SSDET.SELF_TRAINING.PSEUDO_RATIO = 0.5
    # Augmentation policy of the pseudo-labeled images ("D2", "S1".."S4", with the other
    # SSDET.AUGMENT keys); "" = SSDET.AUGMENT.POLICY, the human-labeled images' policy.
    _C.SSDET.SELF_TRAINING.PSEUDO_AUGMENT_POLICY = ""
    # Seed (integer) of the shuffles of the two training samplers, which use two different seeds
    # derived from it; negative = a random seed shared by all processes (Detectron2's default).
    _C.SSDET.SELF_TRAINING.SAMPLER_SEED = 0
    # How the pseudo-label loss L_p is weighted against the human-label loss L_h, with
    # alpha = PSEUDO_LOSS_WEIGHT: "none" = L_h + alpha * L_p; "moving_average" = the paper's
    # L_h + alpha * (avg(L_h) / avg(L_p)) * L_p, avg(.) exponential moving averages over steps.
    _C.SSDET.SELF_TRAINING.LOSS_NORMALIZATION = "moving_average"
    # The weight alpha (dimensionless, >= 0) of the pseudo-label loss, in both normalizations.
    _C.SSDET.SELF_TRAINING.PSEUDO_LOSS_WEIGHT = 1.0
    # Momentum (0-1, per step) of the moving averages: avg = m * avg + (1 - m) * loss.
    _C.SSDET.SELF_TRAINING.LOSS_AVG_MOMENTUM = 0.99

    # ---------------------------------------------------------------------------------------------
    # Student noise (Noisy Student; ssdet/modeling/noise.py). Added to the model by
    # StudentTrainer; identity at evaluation. 0 = off, as for the teacher.
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.NOISE = CN()
    # Stochastic depth of the ResNet backbone: probability (0-1) that the last residual block skips
    # its residual branch for a training image; block i of n uses DROP_PATH_RATE * i / (n - 1).
    # Noisy Student uses 0.2.
    _C.SSDET.NOISE.DROP_PATH_RATE = 0.0
    # Dropout probability (0-1) on the RetinaNet head's last hidden features, just before its
    # class and box prediction convs (every FPN level).
    _C.SSDET.NOISE.DROPOUT = 0.0

    # ---------------------------------------------------------------------------------------------
    # Self-training experiment (tools/self_train.py, ssdet/engine/self_training.py): teacher ->
    # pseudo labels -> student, for one or more Noisy Student rounds. Owned by self_train.
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.EXPERIMENT = CN()

    # ---------------------------------------------------------------------------------------------
    # Backbone initialization (ssdet/modeling/init.py, tools/convert_pretrained.py). Owned by init.
    # ---------------------------------------------------------------------------------------------

    # ---------------------------------------------------------------------------------------------
    # Joint training: detection + ImageNet classification (ssdet/modeling/joint.py). Owned by joint.
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.JOINT = CN()
