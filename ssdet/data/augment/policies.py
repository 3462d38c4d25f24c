"""The paper's augmentation policies Augment-S1..S4, by name, from arguments or from a config.

=====  ===========================================================================
D2     Detectron2's default: ResizeShortestEdge(INPUT.MIN_SIZE_TRAIN) + flip
S1     FlipCrop: horizontal flip + scale jitter (0.8, 1.2) + crop/pad to the output size
S2     AutoAugment "v0" + FlipCrop
S3     AutoAugment "v0" + flip + scale jitter (0.5, 2.0) + crop/pad
S4     RandAugment (N=2, M=10) + flip + scale jitter (0.5, 2.0) + crop/pad
=====  ===========================================================================

The order is the authors' (tensorflow/tpu ``retinanet_parser``): AutoAugment / RandAugment on the
image as loaded, then the flip, then resize and crop. Test-time augmentation is Detectron2's for
every policy.
"""

from detectron2.config import CfgNode, get_cfg
from detectron2.data import detection_utils
from detectron2.data import transforms as T

from ssdet.data.augment.autoaugment import AutoAugment
from ssdet.data.augment.ops import FILL_VALUE, ScaleJitterCrop
from ssdet.data.augment.randaugment import RANDAUGMENT_OPS, RandAugment
from ssdet.utils.errors import InputError

__all__ = [
    "DEFAULT_SCALE_RANGES",
    "POLICY_NAMES",
    "build_augmentation_policy",
    "build_policy",
]

POLICY_NAMES = ("D2", "S1", "S2", "S3", "S4")

# Scale jitter range (min, max) of each policy, as factors of the output size.
DEFAULT_SCALE_RANGES = {
    "S1": (0.8, 1.2),
    "S2": (0.8, 1.2),
    "S3": (0.5, 2.0),
    "S4": (0.5, 2.0),
}


def _check_policy_name(name: str) -> None:
    if name not in POLICY_NAMES:
        # InputError (a ValueError): the tools report a config's bad value as one error line.
        raise InputError(
            f"Unknown augmentation policy {name!r}; valid policies: {', '.join(POLICY_NAMES)}"
        )


def build_policy(
    name: str,
    *,
    output_size: tuple[int, int] = (640, 640),
    scale_range: tuple[float, float] | None = None,
    flip_prob: float = 0.5,
    autoaugment_version: str = "v0",
    randaugment_num_ops: int = 2,
    randaugment_magnitude: float = 10,
    randaugment_ops: tuple[str, ...] | None = None,
    fill: int = FILL_VALUE,
    pixel_scale: float = 1.0,
    image_format: str = "BGR",
) -> list[T.Augmentation]:
    """Training augmentations of a named policy, from plain arguments.

    Args:
        name: "D2", "S1", "S2", "S3" or "S4". "D2" ignores the other arguments and returns
            Detectron2's default training augmentation of its default config.
        output_size: (height, width) in pixels of the training images of S1..S4.
        scale_range: (min, max) scale jitter as factors of ``output_size``; None takes the
            policy's (:data:`DEFAULT_SCALE_RANGES`).
        flip_prob: probability of the horizontal flip.
        autoaugment_version: AutoAugment policy of S2 and S3, "v0".."v3".
        randaugment_num_ops: RandAugment's N (S4).
        randaugment_magnitude: RandAugment's M (S4), on AutoAugment's 0-10 level scale.
        randaugment_ops: AutoAugment op names RandAugment draws from; None takes the authors'
            (:data:`~ssdet.data.augment.RANDAUGMENT_OPS`).
        fill: pixel value of padding and of pixels the ops leave undefined.
        pixel_scale: multiplies the pixel-valued AutoAugment / RandAugment magnitudes.
        image_format: channel order of the images (Detectron2's INPUT.FORMAT), "BGR", "RGB" or
            "L", for the gray level of the color ops.

    Returns:
        Augmentations to pass to a mapper, in order.

    Raises:
        InputError: for an unknown policy name (a ValueError).
    """
    _check_policy_name(name)
    if name == "D2":
        return detection_utils.build_augmentation(get_cfg(), is_train=True)
    augmentations: list[T.Augmentation] = []
    if name in ("S2", "S3"):
        augmentations.append(
            AutoAugment(
                autoaugment_version, fill=fill, image_format=image_format, pixel_scale=pixel_scale
            )
        )
    elif name == "S4":
        augmentations.append(
            RandAugment(
                randaugment_num_ops,
                randaugment_magnitude,
                ops=tuple(randaugment_ops or RANDAUGMENT_OPS),
                fill=fill,
                image_format=image_format,
                pixel_scale=pixel_scale,
            )
        )
    if flip_prob > 0:
        augmentations.append(T.RandomFlip(prob=flip_prob, horizontal=True))
    augmentations.append(
        ScaleJitterCrop(
            tuple(output_size), tuple(scale_range or DEFAULT_SCALE_RANGES[name]), pad_value=fill
        )
    )
    return augmentations


def build_augmentation_policy(cfg: CfgNode, is_train: bool) -> list[T.Augmentation]:
    """Augmentations of ``cfg.SSDET.AUGMENT.POLICY``, with the overrides of ``cfg.SSDET.AUGMENT``.

    Args:
        cfg: a config with ssdet's keys (``add_ssdet_config``).
        is_train: False returns Detectron2's test augmentation (ResizeShortestEdge from
            INPUT.MIN_SIZE_TEST) for every policy.

    Returns:
        Augmentations to pass to a mapper, in order.

    Raises:
        InputError: for an unknown policy name (also when ``is_train`` is False).
    """
    augment = cfg.SSDET.AUGMENT
    _check_policy_name(augment.POLICY)
    if not is_train or augment.POLICY == "D2":
        return detection_utils.build_augmentation(cfg, is_train)
    return build_policy(
        augment.POLICY,
        output_size=tuple(augment.OUTPUT_SIZE),
        scale_range=tuple(augment.SCALE_RANGE) or None,
        flip_prob=augment.FLIP_PROB,
        autoaugment_version=augment.AUTOAUGMENT_VERSION,
        randaugment_num_ops=augment.RANDAUGMENT_NUM_OPS,
        randaugment_magnitude=augment.RANDAUGMENT_MAGNITUDE,
        randaugment_ops=tuple(augment.RANDAUGMENT_OPS) or None,
        fill=augment.FILL_VALUE,
        pixel_scale=augment.PIXEL_MAGNITUDE_SCALE,
        image_format=cfg.INPUT.FORMAT,
    )
