"""The student's objective: the human-label loss L_h and the pseudo-label loss L_p combined,
with the paper's loss normalization (see :class:`PseudoLossWeighting`)."""

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.utils import comm

from ssdet.utils.errors import InputError

__all__ = ["LOSS_NORMALIZATIONS", "PseudoLossWeighting", "StudentLoss"]

LOSS_NORMALIZATIONS = ("none", "moving_average")


class StudentLoss(NamedTuple):
    """The student's objective and its terms, for one step.

    Attributes:
        total: 0-dim, the loss to minimize, ``human + pseudo_weight * pseudo`` (with an absent
            part left out).
        human: 0-dim L_h, the sum of the human-labeled images' losses; None without that part.
        pseudo: 0-dim L_p, the same for the pseudo-labeled images; None without that part.
        pseudo_weight: 0-dim, detached: the weight of L_p; None without pseudo-labeled images.
        averages: (2,) detached moving averages of (L_h, L_p) after this step, or None when the
            normalization keeps none.
    """

    total: torch.Tensor
    human: torch.Tensor | None
    pseudo: torch.Tensor | None
    pseudo_weight: torch.Tensor | None
    averages: torch.Tensor | None


class PseudoLossWeighting:
    """Combines the human-label loss L_h and the pseudo-label loss L_p into the student's loss.

    ``"none"``: ``L_h + alpha * L_p``. ``"moving_average"`` (the paper's):
    ``L_h + alpha * (avg(L_h) / avg(L_p)) * L_p``, where ``avg`` are exponential moving averages
    of the per-step losses (``avg = m * avg + (1 - m) * loss``), started at the first step's
    values and updated before use. The ratio carries no gradient. Under DDP the losses are
    averaged over processes before the update, so every process has the same weight and a
    checkpoint resumes it exactly.

    Before L_p is summed, single terms of the pseudo part's loss dict can be weighted
    (``term_weights``, e.g. ``{"loss_box_reg": 0.0}``: no box regression on pseudo boxes); L_p,
    its moving average and the logged ``loss_pseudo`` are of the weighted terms.

    Args:
        normalization: one of :data:`LOSS_NORMALIZATIONS`.
        pseudo_weight: alpha, >= 0.
        momentum: m in [0, 1).
        term_weights: loss name -> weight >= 0 for terms of the pseudo loss dict; the other
            terms weigh 1. A name the detector does not return raises at the first call.
    """

    @configurable
    def __init__(
        self,
        normalization: str = "moving_average",
        pseudo_weight: float = 1.0,
        momentum: float = 0.99,
        term_weights: Mapping[str, float] | None = None,
    ):
        if normalization not in LOSS_NORMALIZATIONS:
            raise InputError(
                f"Unknown SSDET.SELF_TRAINING.LOSS_NORMALIZATION {normalization!r}; valid: "
                f"{', '.join(LOSS_NORMALIZATIONS)}"
            )
        if pseudo_weight < 0:
            raise InputError(
                f"SSDET.SELF_TRAINING.PSEUDO_LOSS_WEIGHT must be >= 0, got {pseudo_weight}"
            )
        if not 0.0 <= momentum < 1.0:
            raise InputError(
                f"SSDET.SELF_TRAINING.LOSS_AVG_MOMENTUM must be in [0, 1), got {momentum}"
            )
        term_weights = dict(term_weights or {})
        negative = {name: w for name, w in term_weights.items() if not w >= 0}
        if negative:
            raise InputError(
                f"SSDET.SELF_TRAINING.PSEUDO_LOSS_TERM_WEIGHTS must be >= 0, got {negative}"
            )
        self.term_weights = {name: float(w) for name, w in term_weights.items()}
        self.normalization = normalization
        self.moving_average = normalization == "moving_average"
        self.pseudo_weight = float(pseudo_weight)
        self.momentum = float(momentum)
        # (2,) moving averages of (L_h, L_p); None until the first step.
        self.averages: torch.Tensor | None = None

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        st = cfg.SSDET.SELF_TRAINING
        if st.LOSS_NORMALIZATION == "moving_average" and not 0.0 < st.PSEUDO_RATIO < 1.0:
            raise InputError(
                f"SSDET.SELF_TRAINING.LOSS_NORMALIZATION 'moving_average' balances the human- and "
                f"pseudo-label losses, but PSEUDO_RATIO {st.PSEUDO_RATIO} gives batches of one "
                "part only; set LOSS_NORMALIZATION 'none'."
            )
        term_weights = {}
        for pair in st.PSEUDO_LOSS_TERM_WEIGHTS:
            if len(pair) != 2 or not isinstance(pair[0], str) or pair[0] in term_weights:
                raise InputError(
                    "SSDET.SELF_TRAINING.PSEUDO_LOSS_TERM_WEIGHTS takes [loss name, weight] pairs "
                    f"with one pair per name, e.g. [['loss_box_reg', 0.0]]; got {pair!r}"
                )
            term_weights[pair[0]] = float(pair[1])
        return {
            "normalization": st.LOSS_NORMALIZATION,
            "pseudo_weight": st.PSEUDO_LOSS_WEIGHT,
            "momentum": st.LOSS_AVG_MOMENTUM,
            "term_weights": term_weights,
        }

    def __call__(
        self, human_losses: Mapping[str, torch.Tensor], pseudo_losses: Mapping[str, torch.Tensor]
    ) -> StudentLoss:
        """Combine one step's losses (and update the moving averages).

        Args:
            human_losses: the model's loss dict on the human-labeled images (0-dim tensors);
                empty when the batch has none.
            pseudo_losses: the loss dict on the pseudo-labeled images; empty when it has none.

        Returns:
            The objective and its terms.

        Raises:
            InputError: ``term_weights`` names a term that ``pseudo_losses`` lacks.
        """
        if not human_losses and not pseudo_losses:
            raise ValueError("the student's step needs the losses of at least one part")
        if pseudo_losses and self.term_weights:
            pseudo_losses = self._weigh_terms(pseudo_losses)
        loss_human = sum(human_losses.values()) if human_losses else None
        loss_pseudo = sum(pseudo_losses.values()) if pseudo_losses else None
        if loss_pseudo is None:
            return StudentLoss(loss_human, loss_human, None, None, None)
        if not self.moving_average:
            weight = loss_pseudo.new_tensor(self.pseudo_weight)
            total = (
                weight * loss_pseudo if loss_human is None else loss_human + weight * loss_pseudo
            )
            return StudentLoss(total, loss_human, loss_pseudo, weight, None)
        if loss_human is None:
            raise ValueError("moving_average normalization needs both human and pseudo losses")
        values = torch.stack([loss_human.detach(), loss_pseudo.detach()]).float()
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(values)
            values /= comm.get_world_size()
        if self.averages is None:
            self.averages = values
        else:
            self.averages = torch.lerp(values, self.averages.to(values), self.momentum)
        # A moving average of positive losses is > 0; the floor only keeps a degenerate all-zero
        # pseudo loss from producing inf * 0.
        weight = self.pseudo_weight * self.averages[0] / self.averages[1].clamp(min=1e-12)
        return StudentLoss(
            loss_human + weight * loss_pseudo, loss_human, loss_pseudo, weight, self.averages
        )

    def _weigh_terms(self, pseudo_losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        unknown = sorted(set(self.term_weights) - set(pseudo_losses))
        if unknown:
            raise InputError(
                f"SSDET.SELF_TRAINING.PSEUDO_LOSS_TERM_WEIGHTS names {unknown}, which the detector "
                f"does not return; its pseudo-label loss terms are {', '.join(pseudo_losses)}."
            )
        # A weight of 0 multiplies rather than drops its term: every parameter stays in the graph,
        # which DDP (find_unused_parameters False) needs when no other term reaches it.
        return {
            name: value * self.term_weights[name] if name in self.term_weights else value
            for name, value in pseudo_losses.items()
        }

    def state_dict(self) -> dict[str, Any]:
        """The moving averages, as plain floats (None before the first step)."""
        return {"averages": None if self.averages is None else self.averages.tolist()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        averages = state_dict["averages"]
        self.averages = None if averages is None else torch.tensor(averages, dtype=torch.float32)
