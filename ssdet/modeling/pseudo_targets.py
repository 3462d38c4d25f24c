"""Score-weighted pseudo-label classification for RetinaNet (``PSEUDO_CLS_TARGET "score"``).

With hard targets (the paper's), a pseudo box of teacher score 0.51 teaches its class as firmly
as a human-labeled box. With ``"score"``, RetinaNet's focal classification loss of every anchor it
matches to a pseudo box (a foreground anchor) is multiplied by that box's teacher score:

    loss_cls = (sum over background anchors of FL(a)
                + sum over foreground anchors of score(box(a)) * FL(a)) / normalizer

where ``FL(a)`` is Detectron2's sigmoid focal loss of anchor ``a`` summed over the classes (its
one-hot target unchanged), ``box(a)`` the pseudo box RetinaNet's anchor matcher assigned it, and
``normalizer`` RetinaNet's moving average of the foreground-anchor count, as in its own loss.
Background anchors keep weight 1, ignored anchors (IoU between the matcher's thresholds, or
matched to an ignore region of class -1) stay out, and the box regression loss is unchanged
(``PSEUDO_LOSS_TERM_WEIGHTS`` weights it). A box of score 1 is a hard label; a box of score 0
removes its anchors from the loss, as an ignore region would.

Weighting, not a soft focal-loss target: Detectron2's focal loss with a target t strictly between
0 and 1 is not minimized at the prediction p = t (its modulating factor is 1 - p_t, which is not
|t - p|), so "target = score" would not teach the score.

Nothing of Detectron2's is copied: :func:`score_weighted_classification` shadows, on the
instance and for the duration of a forward, RetinaNet's public ``label_anchors`` (which also
records the matcher's box index per anchor) and ``losses`` (which calls the class's own, then
replaces ``loss_cls``; the focal loss is computed a second time, elementwise, which costs a few
percent of a step).
"""

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from fvcore.nn import sigmoid_focal_loss_jit

__all__ = ["PSEUDO_CLS_TARGETS", "score_weighted_classification"]

# SSDET.SELF_TRAINING.PSEUDO_CLS_TARGET: "hard" (the paper's one-hot targets) or "score".
PSEUDO_CLS_TARGETS = ("hard", "score")


@contextlib.contextmanager
def score_weighted_classification(detector: RetinaNet) -> Iterator[None]:
    """Within: the detector's ``loss_cls`` weights each foreground anchor by its box's score.

    Every image's ``gt_instances`` must carry ``gt_scores`` (float (K,), the teacher's score of
    each box), as the student's pseudo mapper gives them. See the module docstring for the loss.

    Args:
        detector: a RetinaNet (not wrapped in DDP); its training forwards inside the block use the
            weighted loss, and it is left as it was on exit.

    Raises:
        ValueError (inside the block): an image with boxes but no ``gt_scores``.
    """
    if not isinstance(detector, RetinaNet):
        raise TypeError(f"score-weighted classification needs a RetinaNet, not {type(detector)}")
    if {"label_anchors", "losses"} & set(vars(detector)):
        raise RuntimeError("the detector's losses are already replaced on the instance")
    matcher = detector.anchor_matcher
    # Per image of the current forward: the matcher's box index of each anchor (R,), then the
    # weight of each anchor (R,).
    matches: list[torch.Tensor] = []
    weights: list[torch.Tensor] = []

    def record_matches(match_quality_matrix: torch.Tensor):
        matched_idxs, anchor_labels = matcher(match_quality_matrix)
        matches.append(matched_idxs)
        return matched_idxs, anchor_labels

    def label_anchors(anchors, gt_instances):
        matches.clear()
        weights.clear()
        # RetinaNet.label_anchors calls the matcher once per image, in order.
        detector.anchor_matcher = record_matches
        try:
            gt_labels, gt_boxes = type(detector).label_anchors(detector, anchors, gt_instances)
        finally:
            detector.anchor_matcher = matcher
        for labels, matched, instances in zip(gt_labels, matches, gt_instances, strict=True):
            weight = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
            if len(instances):
                if not instances.has("gt_scores"):
                    raise ValueError(
                        "PSEUDO_CLS_TARGET 'score' needs the teacher's scores of the pseudo boxes "
                        "(Instances.gt_scores); the pseudo-labeled images have none."
                    )
                foreground = (labels >= 0) & (labels != detector.num_classes)
                scores = instances.gt_scores.to(device=weight.device, dtype=weight.dtype)
                weight[foreground] = scores[matched[foreground]]
            weights.append(weight)
        return gt_labels, gt_boxes

    def losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        result = type(detector).losses(
            detector, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes
        )
        labels = torch.stack(gt_labels)  # (N, R)
        valid = labels >= 0
        # The class's one-hot targets: no column for the background label num_classes.
        targets = F.one_hot(labels[valid], num_classes=detector.num_classes + 1)[:, :-1]
        per_anchor = sigmoid_focal_loss_jit(
            torch.cat(pred_logits, dim=1)[valid],
            targets.to(pred_logits[0].dtype),
            alpha=detector.focal_loss_alpha,
            gamma=detector.focal_loss_gamma,
            reduction="none",
        ).sum(dim=1)
        weighted = (per_anchor * torch.stack(weights)[valid]).sum()
        # The class's losses just updated the normalizer they divided by.
        result["loss_cls"] = weighted / detector.loss_normalizer
        return result

    # Instance attributes shadow the class's methods for this block only.
    detector.label_anchors = label_anchors
    detector.losses = losses
    try:
        yield
    finally:
        del detector.label_anchors
        del detector.losses
