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
    # The images a subset leaves out are the dataset "<train>_remainder" (registered for every
    # DATASETS.TRAIN dataset, with its annotations as the pseudo-label report's ground truth).
    _C.SSDET.DATA.SUBSET_SEED = 0
    # Your own datasets, registered when the config is loaded: [[name, json, image_root], ...],
    # a COCO instances file and its image folder, or json "" for an image folder (ImageNet layout
    # <class>/<image>, unlabeled). Relative paths are from the current directory.
    _C.SSDET.DATA.REGISTER = []

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
    # Labeling: the teacher's pass over the unlabeled images (tools/pseudo_label.py,
    # ssdet/engine/pseudo_labeling.py). These keys decide the store; the student's filter
    # (SSDET.PSEUDO_LABELS) acts on it when it is loaded.
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.LABELING = CN()
    # Lowest teacher score (0-1) stored; the student's thresholds act at >= it.
    _C.SSDET.LABELING.SCORE_FLOOR = 0.05
    # Its name until ssdet 0.1: an old config gets an error naming the new key.
    _C.register_renamed_key(
        "SSDET.PSEUDO_LABELS.LABELING_SCORE_FLOOR", "SSDET.LABELING.SCORE_FLOOR"
    )

    # ---------------------------------------------------------------------------------------------
    # Pseudo labels: the teacher's boxes on unlabeled images (ssdet/data/pseudo_labels/). The
    # teacher stores every box above SSDET.LABELING.SCORE_FLOOR once; the student's filter below is
    # applied when the store is loaded, so changing it needs no second teacher pass.
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.PSEUDO_LABELS = CN()
    # Directory of the pseudo-label store the student trains on (written by tools/pseudo_label.py);
    # "" = none.
    _C.SSDET.PSEUDO_LABELS.STORE = ""
    # Student side: keep pseudo boxes with teacher score >= this (0-1); the paper keeps >= 0.5.
    _C.SSDET.PSEUDO_LABELS.SCORE_THRESH = 0.5
    # Per-class overrides of SCORE_THRESH: [[class name or contiguous id, threshold], ...];
    # empty = SCORE_THRESH for every class.
    _C.SSDET.PSEUDO_LABELS.CLASS_SCORE_THRESHS = []
    # Keep at most this many top-scoring pseudo boxes per image (boxes); 0 = no limit.
    _C.SSDET.PSEUDO_LABELS.MAX_BOXES_PER_IMAGE = 0
    # Drop pseudo boxes whose shorter side is below this (pixels, original image); 0 = keep all.
    _C.SSDET.PSEUDO_LABELS.MIN_BOX_SIZE = 0.0
    # Ignore regions: boxes the filter does not keep (below SCORE_THRESH, over
    # MAX_BOXES_PER_IMAGE, under MIN_BOX_SIZE) but scoring >= this (0-1) are passed on with class
    # -1, so that RetinaNet ignores their anchors instead of teaching them as background (objects
    # the teacher is unsure of are often real). 0 = off; must be below every keep threshold.
    _C.SSDET.PSEUDO_LABELS.IGNORE_SCORE_THRESH = 0.0
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
    # Weights (dimensionless, >= 0) of single terms of the pseudo-labeled images' loss dict,
    # applied before L_p is summed and normalized: [[loss name, weight], ...], e.g.
    # [["loss_box_reg", 0.0]] trains no box regression on pseudo boxes (as unbiased-teacher).
    # Unnamed terms weigh 1; a name the detector does not return is an error at the first step.
    _C.SSDET.SELF_TRAINING.PSEUDO_LOSS_TERM_WEIGHTS = []
    # Classification targets of the pseudo boxes: "hard" (the paper's: each box teaches its
    # class fully) or "score" (RetinaNet only: the focal loss of each anchor matched to a pseudo
    # box is multiplied by the box's teacher score; background anchors and the box regression
    # are unchanged; see ssdet/modeling/pseudo_targets.py).
    _C.SSDET.SELF_TRAINING.PSEUDO_CLS_TARGET = "hard"
    # Momentum (0-1, per step) of the moving averages: avg = m * avg + (1 - m) * loss.
    _C.SSDET.SELF_TRAINING.LOSS_AVG_MOMENTUM = 0.99
    # True: the human- and pseudo-labeled images of a step go through the model as one batch (as
    # in the paper; BatchNorm sees the mixed batch) and a RetinaNet/FCOS-style detector computes
    # each part's losses on its slice of the predictions. Used when both parts fall in one
    # aspect-ratio group (always, with the S1-S4 policies' fixed output size); otherwise, and with
    # False, each part gets its own forward (BatchNorm sees each part as its own batch).
    _C.SSDET.SELF_TRAINING.ONE_FORWARD = True

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
    # Self-training experiment (tools/self_train.py, ssdet/engine/experiment/): teacher ->
    # pseudo labels -> student, for one or more Noisy Student rounds.
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.EXPERIMENT = CN()
    # The teacher's config file (YAML). A relative path is looked up next to the experiment config
    # first, then from the current directory.
    _C.SSDET.EXPERIMENT.TEACHER_CONFIG = ""
    # Config overrides [KEY, VALUE, ...] for the teacher only, applied after the command line's
    # (which apply to every stage), so that they hold for the teacher whatever it says.
    _C.SSDET.EXPERIMENT.TEACHER_OPTS = []
    # The teacher's checkpoint: "" = train the teacher with TEACHER_CONFIG; a path = load it and
    # only evaluate it.
    _C.SSDET.EXPERIMENT.TEACHER_WEIGHTS = ""
    # The unlabeled images the teacher labels: a registered dataset (e.g. "imagenet_train",
    # "mini_imagenet_train", or "<train>_remainder": the teacher's DATASETS.TRAIN images outside
    # its labeled subset) or an image folder, as tools/pseudo_label.py --input takes.
    _C.SSDET.EXPERIMENT.UNLABELED_DATASET = ""
    # Noisy Student rounds (>= 1): the student of round k is the teacher of round k + 1.
    _C.SSDET.EXPERIMENT.ROUNDS = 1
    # Initialization of each student: "config" = as this config says (MODEL.WEIGHTS, SSDET.INIT;
    # the paper's), "teacher" = its teacher's final weights (fine-tuning the teacher).
    _C.SSDET.EXPERIMENT.STUDENT_INIT = "config"
    # The students' equal-compute control, a supervised run of as many steps as a student: "auto"
    # = the teacher when it trained the student's steps, else a "control" stage (STUDENT_INIT
    # config), or a "roundK/continuation" stage per round (STUDENT_INIT teacher); "none" = none.
    _C.SSDET.EXPERIMENT.CONTROL = "auto"

    # ---------------------------------------------------------------------------------------------
    # Backbone initialization (ssdet/checkpoint/backbone_init.py, tools/convert_pretrained.py).
    # ---------------------------------------------------------------------------------------------
    # The backbone init of a run that starts training (not of --resume from a checkpoint): "RAND"
    # (Rand Init: Detectron2's random init, training from scratch), "IMAGENET" (supervised
    # pre-training) or "SIMCLR" (self-supervised), the last two loaded from INIT_WEIGHTS into the
    # bottom-up ResNet. RAND needs normalization that trains in backbone, FPN and head
    # (MODEL.RESNETS.NORM, FPN.NORM, RETINANET.NORM "BN", "SyncBN" or "GN", never "FrozenBN"),
    # MODEL.BACKBONE.FREEZE_AT 0 and a longer schedule than fine-tuning (He et al. 2019: about
    # 2-3x). The mini and COCO configs train every norm with FREEZE_AT 0, for all three inits.
    # The init used is written to OUTPUT_DIR/init.json and final_metrics.json.
    _C.SSDET.INIT = "RAND"
    # Backbone checkpoint in ssdet's format (tools/convert_pretrained.py, tools/pretrain.py) that
    # IMAGENET and SIMCLR load; must be "" for RAND. With it, MODEL.WEIGHTS must be "": a detector
    # checkpoint in MODEL.WEIGHTS (loaded by Detectron2) initializes the model with INIT RAND.
    _C.SSDET.INIT_WEIGHTS = ""

    # ---------------------------------------------------------------------------------------------
    # Joint training: detection + ImageNet classification (ssdet/modeling/joint.py).
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.JOINT = CN()
    # Joint training is chosen by the model, MODEL.META_ARCHITECTURE "JointRetinaNet": a RetinaNet
    # with a classification head (global average pool + linear layer) on the backbone, fed by
    # labeled image-folder batches alongside the detection batches (Trainer and StudentTrainer).
    # The head is dropped from the exported detector (OUTPUT_DIR/model_final_detector.pth).
    # ENABLED is the old switch, kept one release so that an old config gets an error saying what
    # to change: True is refused.
    _C.SSDET.JOINT.ENABLED = False
    # Registered ImageNet-layout folder dataset (<split>/<class>/<image>) of the classification
    # images and labels, e.g. "imagenet_train" or "mini_imagenet_train".
    _C.SSDET.JOINT.DATASET = "imagenet_train"
    # Classes of the classification head; 0 = the number of class folders of DATASET. A non-zero
    # value must equal that number.
    _C.SSDET.JOINT.NUM_CLASSES = 0
    # Classification images per step over all processes (divided evenly among them), in addition
    # to the SOLVER.IMS_PER_BATCH detection images.
    _C.SSDET.JOINT.IMS_PER_BATCH = 16
    # Weight (dimensionless, >= 0) of the classification cross-entropy added to the detection
    # loss, logged as loss_joint_cls.
    _C.SSDET.JOINT.LOSS_WEIGHT = 1.0
    # Side (pixels) of the square classification images, after the random crop.
    _C.SSDET.JOINT.IMAGE_SIZE = 224
    # Random crop of each classification image before resizing: its height and width are each a
    # uniform fraction in [MIN_CROP_FRACTION, 1] of the image's (1 = no crop). A horizontal flip
    # with probability 0.5 follows.
    _C.SSDET.JOINT.MIN_CROP_FRACTION = 0.5
    # Bottom-up (ResNet) feature the head pools, e.g. "res5" (the last stage); it must be one of
    # MODEL.RESNETS.OUT_FEATURES.
    _C.SSDET.JOINT.FEATURE = "res5"
    # Seed (integer) of the shuffle of the classification images; negative = a random seed
    # shared by all processes (Detectron2's default).
    _C.SSDET.JOINT.SAMPLER_SEED = 0
    # DataLoader worker processes of the classification batches; 0 = load in the main process.
    _C.SSDET.JOINT.NUM_WORKERS = 2

    # ---------------------------------------------------------------------------------------------
    # FCOS (MODEL.META_ARCHITECTURE "SsdetFCOS", ssdet/modeling/fcos.py): Detectron2's FCOS built
    # from a YAML config. It shares RetinaNet's keys (MODEL.RETINANET: NUM_CLASSES, IN_FEATURES,
    # NUM_CONVS, NORM, PRIOR_PROB, FOCAL_LOSS_*, SCORE_THRESH_TEST, TOPK_CANDIDATES_TEST), so the
    # class-count checks and the teacher's score floor need no FCOS case; only these are its own.
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.FCOS = CN()
    # Radius, in anchor strides, of a box's "center": every anchor point within it is positive
    # (FCOS's center sampling; Detectron2's default 1.5, FCOS_DEFAULTS in ssdet/modeling/fcos.py).
    _C.SSDET.FCOS.CENTER_SAMPLING_RADIUS = 1.5
    # IoU threshold of FCOS's test-time NMS (Detectron2's FCOS uses 0.6, RetinaNet 0.5).
    _C.SSDET.FCOS.NMS_THRESH_TEST = 0.6

    # ---------------------------------------------------------------------------------------------
    # Pre-training (tools/pretrain.py). The detector's ResNet (MODEL.RESNETS:
    # depth, widths, norm) is trained on an ImageNet-layout folder, supervised or with SimCLR, and
    # exported as a backbone checkpoint for SSDET.INIT. The optimizer and schedule are SOLVER.*.
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.PRETRAIN = CN()
    # Pre-training method: "supervised" (cross-entropy over the folder's classes) or "simclr"
    # (two augmented views per image, NT-Xent loss; the labels are not used for training).
    _C.SSDET.PRETRAIN.METHOD = "supervised"
    # Training images: a registered ImageNet-layout dataset (e.g. "mini_imagenet_train", or
    # "mini_imagenet" for its _train split) or a folder holding train/<class>/ and val/<class>/.
    _C.SSDET.PRETRAIN.DATASET = ""
    # Validation images (top-1, linear probe): a registered dataset or a split folder <class>/;
    # "" = the DATASET's val split (<folder>/val, or the registered name with _train -> _val).
    _C.SSDET.PRETRAIN.VAL_DATASET = ""
    # Side of the square training crops and evaluation center crops (pixels).
    _C.SSDET.PRETRAIN.IMAGE_SIZE = 224
    # Area range (min, max) of the random resized crop, as fractions of the image area.
    _C.SSDET.PRETRAIN.CROP_SCALE = (0.08, 1.0)
    # Images per process per batch in evaluation and linear-probe feature extraction.
    _C.SSDET.PRETRAIN.EVAL_BATCH_SIZE = 64

    _C.SSDET.PRETRAIN.SIMCLR = CN()
    # NT-Xent softmax temperature (dimensionless, > 0).
    _C.SSDET.PRETRAIN.SIMCLR.TEMPERATURE = 0.2
    # Output size of the projection head (the embedding the loss compares), channels.
    _C.SSDET.PRETRAIN.SIMCLR.PROJECTION_DIM = 128
    # Hidden size of the projection head MLP, channels; 0 = the backbone's feature size.
    _C.SSDET.PRETRAIN.SIMCLR.PROJECTION_HIDDEN_DIM = 0
    # Color jitter strength s (SimCLR's): brightness, contrast, saturation 0.8 s, hue 0.2 s.
    _C.SSDET.PRETRAIN.SIMCLR.COLOR_JITTER_STRENGTH = 1.0
    # Probability (0-1) that a view is color jittered.
    _C.SSDET.PRETRAIN.SIMCLR.COLOR_JITTER_PROB = 0.8
    # Probability (0-1) that a view is converted to grayscale.
    _C.SSDET.PRETRAIN.SIMCLR.GRAYSCALE_PROB = 0.2
    # Probability (0-1) that a view is Gaussian blurred (kernel 10% of IMAGE_SIZE, sigma 0.1-2 px).
    _C.SSDET.PRETRAIN.SIMCLR.BLUR_PROB = 0.5
    # Negatives from every process's batch (embeddings gathered with gradient) when True; only
    # from the process's own batch when False.
    _C.SSDET.PRETRAIN.SIMCLR.GATHER_NEGATIVES = True

    # Linear probe of SimCLR: frozen backbone features -> multinomial logistic regression fitted
    # on the train split, top-1 on the val split.
    _C.SSDET.PRETRAIN.LINEAR_PROBE = CN()
    # Train images per class the probe is fitted on (the first ones of each class); 0 = all.
    _C.SSDET.PRETRAIN.LINEAR_PROBE.TRAIN_IMAGES_PER_CLASS = 0
    # L2 penalty on the probe's weights (0.5 * WEIGHT_DECAY * |W|^2 added to the mean loss), when
    # WEIGHT_DECAYS is empty.
    _C.SSDET.PRETRAIN.LINEAR_PROBE.WEIGHT_DECAY = 1e-4
    # Candidate penalties: the probe uses the one that scores best on HOLDOUT_FRACTION of the train
    # images when fitted on the others, so that its setting is not chosen on val. The best one
    # differs between backbones (1e-4 under-regularizes a SimCLR backbone's features).
    _C.SSDET.PRETRAIN.LINEAR_PROBE.WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)
    # Fraction (0-1) of the probe's train images held out to choose among WEIGHT_DECAYS.
    _C.SSDET.PRETRAIN.LINEAR_PROBE.HOLDOUT_FRACTION = 0.2
    # Iterations of full-batch L-BFGS fitting the probe: enough to converge, so that the result
    # does not depend on the order of the features (200 did not, by up to 0.6 points).
    _C.SSDET.PRETRAIN.LINEAR_PROBE.MAX_ITER = 1000
    # Also probe a randomly initialized backbone of the same architecture (the baseline that
    # shows what pre-training added), reported as linear_probe_top1_random_init.
    _C.SSDET.PRETRAIN.LINEAR_PROBE.RANDOM_INIT_BASELINE = False

    # ---------------------------------------------------------------------------------------------
    # Optimizer (ssdet/solver/build.py). The schedule, clipping and weight decay are SOLVER.*.
    # ---------------------------------------------------------------------------------------------
    _C.SSDET.SOLVER = CN()
    # "SGD" (Detectron2's, with SOLVER.MOMENTUM) or "ADAMW" (converges faster from scratch in short
    # schedules; SOLVER.WEIGHT_DECAY is then decoupled weight decay).
    _C.SSDET.SOLVER.OPTIMIZER = "SGD"
    # AdamW's (beta1, beta2) moment decay rates.
    _C.SSDET.SOLVER.BETAS = (0.9, 0.999)
    # Gradient accumulation (integer >= 1; 1 = off), for GPUs too small for the batch: each
    # iteration backwards this many batches of SOLVER.IMS_PER_BATCH images (losses divided by it)
    # and takes one optimizer step, so the effective batch is SOLVER.IMS_PER_BATCH x this, and
    # SOLVER.MAX_ITER, the LR schedule and the periods count optimizer steps. Detector training
    # (tools/train_net.py, tools/self_train.py) only; see ssdet/engine/accumulation.py.
    _C.SSDET.SOLVER.GRAD_ACCUM_STEPS = 1
