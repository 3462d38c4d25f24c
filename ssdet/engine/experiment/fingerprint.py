"""What a self-training stage was run with (``stage.json``), and the check that a rerun reuses
a stage folder only when it was made with the same setup."""

import functools
import glob
import json
import logging
import os
from typing import Any

from detectron2.config import CfgNode, get_cfg

from ssdet.config import add_ssdet_config
from ssdet.data.pseudo_labels import file_sha256, read_metadata
from ssdet.engine.experiment.plan import (
    ExperimentPlan,
    Stage,
    StageKind,
    flat_config,
    read_json,
    weights_of,
)
from ssdet.engine.pseudo_labeling import SHARD_DIR, STORE_DIR
from ssdet.utils.errors import InputError
from ssdet.utils.run_dir import FINAL_METRICS, STAGE_FILE

__all__ = ["check_stage", "has_resumable_state", "spec_differences", "stage_spec"]

logger = logging.getLogger(__name__)

# Config keys that do not change a stage's result (where it runs, how many loader processes,
# where it writes), and the experiment's own keys, whose effect is in the stages' other keys.
_UNCHECKED_KEYS = ("OUTPUT_DIR", "MODEL.DEVICE")
_UNCHECKED_SUFFIXES = ("NUM_WORKERS",)
_UNCHECKED_PREFIXES = ("SSDET.EXPERIMENT.",)
# Keys that only the student's trainer reads (StudentTrainer: the store and its filter, the mixed
# batches and loss, the noise): the teacher and the labeling do not depend on them, so that
# changing the student reuses them. The labeling stage stores every box down to the floor.
_STUDENT_ONLY_PREFIXES = ("SSDET.PSEUDO_LABELS.", "SSDET.SELF_TRAINING.", "SSDET.NOISE.")
# Keys of the labeling pass only: a teacher's training does not depend on them.
_LABELING_PREFIX = "SSDET.LABELING."
# In stage.json, paths inside the experiment's folder are written relative to it, so that an
# experiment folder can be moved or copied.
_OUTPUT_DIR_TOKEN = "$OUTPUT_DIR"


def stage_spec(stage: Stage, plan: ExperimentPlan) -> dict[str, Any]:
    """What decides a stage's result: its config and the fingerprint of its input."""
    cfg = stage.load_cfg()
    student = bool(cfg.SSDET.PSEUDO_LABELS.STORE)
    config = {
        key: value
        for key, value in flat_config(cfg).items()
        if key not in _UNCHECKED_KEYS
        and not key.endswith(_UNCHECKED_SUFFIXES)
        and not key.startswith(_UNCHECKED_PREFIXES)
        and (student or not key.startswith(_STUDENT_ONLY_PREFIXES))
        and (student or stage.kind == StageKind.LABEL or not key.startswith(_LABELING_PREFIX))
    }
    spec: dict[str, Any] = {"kind": stage.kind, "config": config}
    if stage.kind == StageKind.LABEL:
        spec["unlabeled"] = plan.unlabeled
        spec["teacher_weights_sha256"] = file_sha256(stage.weights)
    elif stage.kind == StageKind.EVALUATE:
        # The given file may be replaced under the same name: its AP is of its content.
        spec["weights_sha256"] = file_sha256(weights_of(stage))
    else:
        store = config.get("SSDET.PSEUDO_LABELS.STORE")
        if store:
            metadata = read_metadata(store)
            spec["pseudo_labels"] = {
                "teacher_weights_sha256": metadata["teacher"]["weights_sha256"],
                "listing_sha256": metadata["listing"]["sha256"],
            }

    def relative(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(plan.output_dir + os.sep):
            return _OUTPUT_DIR_TOKEN + value[len(plan.output_dir) :]
        if isinstance(value, list | tuple):
            return [relative(v) for v in value]
        if isinstance(value, dict):
            return {k: relative(v) for k, v in value.items()}
        return value

    # As JSON holds it: tuples become lists.
    return json.loads(json.dumps(relative(spec)))


@functools.lru_cache(maxsize=1)
def _default_flat_config() -> dict[str, Any]:
    """Detectron2's and ssdet's defaults, flattened and JSON round-tripped as specs store them."""
    cfg = get_cfg()
    add_ssdet_config(cfg)
    return json.loads(json.dumps(flat_config(cfg)))


@functools.lru_cache(maxsize=1)
def _renamed_keys() -> dict[str, str]:
    """ssdet's renamed keys (``register_renamed_key`` in ssdet/config.py): old name -> new."""
    cfg = get_cfg()
    add_ssdet_config(cfg)
    renamed = cfg.__dict__[CfgNode.RENAMED_KEYS]
    return {old: new if isinstance(new, str) else new[0] for old, new in renamed.items()}


def spec_differences(old: dict, new: dict) -> list[str]:
    """``"KEY old -> new"`` for every config key and input that differs between two specs.

    A key the old spec lacks is no difference while the new spec has it at its default: ssdet
    added the key after the stage was made, and the default keeps the old behaviour. A key the
    old spec names by its old name (a renamed key) is compared under its new name.
    """
    renamed = _renamed_keys()
    old_config = {renamed.get(k, k): v for k, v in old.get("config", {}).items()}
    new_config = new.get("config", {})
    defaults = _default_flat_config()
    old_config = {
        **{k: defaults[k] for k in new_config.keys() - old_config.keys() if k in defaults},
        **old_config,
    }
    differences = [
        f"{key} {old_config.get(key, '(absent)')!r} -> {new_config.get(key, '(absent)')!r}"
        for key in sorted(set(old_config) | set(new_config))
        if old_config.get(key, "(absent)") != new_config.get(key, "(absent)")
    ]
    for key in sorted((set(old) | set(new)) - {"config"}):
        if old.get(key) != new.get(key):
            differences.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    return differences


def check_stage(stage: Stage, plan: ExperimentPlan) -> dict[str, Any] | None:
    """Refuse a stage folder made with another setup.

    Only a folder with something to reuse is refused: checkpoints or pseudo labels. A stage
    that holds none (it stopped before its first checkpoint, or refused its input) runs as if
    new. An evaluation stage (a given teacher checkpoint) of another setup, e.g. a replaced
    checkpoint file, is evaluated again: it has nothing to resume, and the stages after it record
    its weights' fingerprint, so that their own check refuses them.

    Returns:
        The spec to record in ``stage.json`` before the stage runs: the folder has none yet, or
        holds nothing to reuse from another setup (an evaluation's ``final_metrics.json`` is
        then removed); None when ``stage.json`` records this setup.

    Raises:
        InputError: the folder's ``stage.json`` records another config or input.
    """
    spec = stage_spec(stage, plan)
    path = os.path.join(stage.output_dir, STAGE_FILE)
    if not os.path.isfile(path):
        return spec
    differences = spec_differences(read_json(path), spec)
    if not differences:
        return None
    shown = "; ".join(differences[:5])
    more = f" (and {len(differences) - 5} more)" if len(differences) > 5 else ""
    if stage.kind == StageKind.EVALUATE or not has_resumable_state(stage):
        metrics = os.path.join(stage.output_dir, FINAL_METRICS)
        if stage.kind == StageKind.EVALUATE and os.path.isfile(metrics):
            os.remove(metrics)
        logger.warning(
            "%s was %s with another setup (%s%s): running it again, it holds nothing to reuse",
            stage.name,
            "evaluated" if stage.kind == StageKind.EVALUATE else "started",
            shown,
            more,
        )
        return spec
    raise InputError(
        f"Stage {stage.name} in {stage.output_dir} was run with another setup: {shown}"
        f"{more}. Give the experiment another OUTPUT_DIR, or delete that folder and those "
        "of the stages after it to redo them."
    )


def has_resumable_state(stage: Stage) -> bool:
    """Whether a stage folder holds work a rerun would continue: checkpoints, labeled shards."""
    if stage.kind == StageKind.LABEL:
        names = (SHARD_DIR, STORE_DIR)
        return any(os.path.exists(os.path.join(stage.output_dir, n)) for n in names)
    return stage.kind == StageKind.TRAIN and bool(
        glob.glob(os.path.join(glob.escape(stage.output_dir), "model_*.pth"))
    )


# -------------------------------------------------------------------------------------------------
# The experiment
