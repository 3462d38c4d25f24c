"""The plan of a self-training experiment: its stages, checked before anything runs."""

import json
import logging
import os
from dataclasses import dataclass
from enum import Enum
from typing import Any

from detectron2.config import CfgNode

from ssdet.checkpoint import fetch_checkpoint, is_loadable_checkpoint
from ssdet.data.build import num_classes, num_classes_key
from ssdet.data.datasets import unknown_dataset_hint
from ssdet.data.image_folder import image_source_kind
from ssdet.data.pseudo_labels import PseudoLabelFilter, PseudoLabelStoreError, read_metadata
from ssdet.engine.defaults import load_cfg
from ssdet.engine.pseudo_labeling import STORE_DIR, build_teacher
from ssdet.engine.student import StudentTrainer
from ssdet.engine.trainer import Trainer
from ssdet.utils.errors import InputError
from ssdet.utils.run_dir import CONTROL_STAGE, FINAL_METRICS, MODEL_FINAL, TEACHER_STAGE

__all__ = [
    "CONTROLS",
    "STUDENT_INITS",
    "ExperimentPlan",
    "Stage",
    "StageKind",
    "flat_config",
    "plan_experiment",
    "read_json",
    "weights_of",
]

logger = logging.getLogger(__name__)

STUDENT_INITS = ("config", "teacher")
# SSDET.EXPERIMENT.CONTROL: "auto" plans the equal-compute control, "none" skips it.
CONTROLS = ("auto", "none")
# How a supervised run was set up besides its model (schedule, init, data, seed, policy). A control
# that differs from its student on one of them is named with it: the student - control difference
# includes that key's effect, not self-training's alone.
_SETUP_KEYS = (
    "SOLVER.MAX_ITER",
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.BASE_LR",
    "SOLVER.LR_SCHEDULER_NAME",
    "SOLVER.STEPS",
    "SOLVER.GAMMA",
    "SOLVER.WARMUP_ITERS",
    "SOLVER.WARMUP_FACTOR",
    "SSDET.SOLVER.OPTIMIZER",
    "SSDET.SOLVER.GRAD_ACCUM_STEPS",
    "MODEL.WEIGHTS",
    "SSDET.INIT",
    "SSDET.INIT_WEIGHTS",
    "DATASETS.TRAIN",
    "SSDET.DATA.LABELED_FRACTION",
    "SSDET.DATA.SUBSET_SEED",
    "SEED",
    "SSDET.AUGMENT.POLICY",
)

# Config keys that do not change a stage's result (where it runs, how many loader processes,


class StageKind(str, Enum):
    """What a stage does. A ``str``, so that ``stage.json`` and comparisons read plain names."""

    # Train, then evaluate (tools/train_net.py).
    TRAIN = "train"
    # Evaluate a given teacher checkpoint (tools/train_net.py --eval-only).
    EVALUATE = "evaluate"
    # Pseudo-label the unlabeled images (tools/pseudo_label.py).
    LABEL = "label"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Stage:
    """One stage of the experiment: what runs, from which config, into which folder.

    Attributes:
        name: the stage's folder relative to the experiment's, e.g. ``"round1/student"``.
        kind: :class:`StageKind`: train then evaluate, evaluate a given teacher checkpoint, or
            pseudo-label the unlabeled images.
        output_dir: the stage's folder (absolute).
        config_file: the config file the stage's config is read from.
        opts: ``KEY VALUE`` overrides applied after the file, ending with the stage's own
            (``OUTPUT_DIR``, the teacher's weights, the pseudo-label store).
        weights: for a labeling stage, its teacher's checkpoint; "" otherwise.
    """

    name: str
    kind: StageKind
    output_dir: str
    config_file: str
    opts: tuple
    weights: str = ""

    def load_cfg(self) -> CfgNode:
        """The stage's config (not set up: nothing is written)."""
        return load_cfg(self.config_file, list(self.opts))

    @property
    def finished(self) -> bool:
        """Whether the stage wrote its completion marker and, when it trains, its final
        checkpoint loads (a kill can leave a truncated one behind; the next stage reads it)."""
        if self.kind == StageKind.LABEL:
            try:
                read_metadata(os.path.join(self.output_dir, STORE_DIR))
            except PseudoLabelStoreError:
                return False
            return True
        return os.path.isfile(os.path.join(self.output_dir, FINAL_METRICS)) and (
            self.kind == StageKind.EVALUATE
            or is_loadable_checkpoint(os.path.join(self.output_dir, MODEL_FINAL))
        )

    def results(self) -> dict:
        """A finished training or evaluation stage's ``{dataset: {"bbox": metrics}}``."""
        return read_json(os.path.join(self.output_dir, FINAL_METRICS))["results"]


@dataclass(frozen=True)
class ExperimentPlan:
    """A checked experiment: its config and its stages, in the order they run.

    Attributes:
        config_file: the experiment config file.
        cfg: the experiment config (the student's), with the command-line options.
        output_dir: the experiment's folder (absolute).
        unlabeled: ``SSDET.EXPERIMENT.UNLABELED_DATASET``.
        teacher: the teacher stage.
        rounds: per round, its labeling and student stages.
        controls: per round, the equal-compute control of its student: the teacher stage, the
            ``control`` stage (the same for every round) or the round's ``continuation``; empty
            with ``SSDET.EXPERIMENT.CONTROL none``.
        control_why: why the control is that stage (``"same schedule"`` for the teacher).
    """

    config_file: str
    cfg: CfgNode
    output_dir: str
    unlabeled: str
    teacher: Stage
    rounds: tuple[tuple[Stage, Stage], ...]
    controls: tuple[Stage, ...] = ()
    control_why: str = ""

    @property
    def stages(self) -> list[Stage]:
        """Every stage once, in the order they run: a control after the last student it controls."""
        stages = [self.teacher]
        for k, pair in enumerate(self.rounds):
            stages += pair
            later = self.controls[k + 1 :]
            stages += [c for c in self.controls[k : k + 1] if c not in stages and c not in later]
        return stages

    def control_differences(self) -> dict[str, list]:
        """``{key: [control's value, student's value]}`` for each of the setup keys (schedule,
        init, data, seed, policy) on which the last student's control differs from it."""
        if not self.controls:
            return {}
        control = flat_config(self.controls[-1].load_cfg())
        student = flat_config(self.rounds[-1][1].load_cfg())
        differences = {
            key: [control[key], student[key]] for key in _SETUP_KEYS if control[key] != student[key]
        }
        return json.loads(json.dumps(differences))


def _resolve_teacher_config(path: str, config_file: str) -> str:
    if not path:
        raise InputError(
            f"SSDET.EXPERIMENT.TEACHER_CONFIG is empty in {config_file!r}: name the teacher's "
            "config file, e.g. retinanet_R18_FPN_S1_supervised.yaml (relative to the experiment "
            "config's folder)."
        )
    if os.path.isabs(path):
        candidates = [path]
    else:
        candidates = [os.path.join(os.path.dirname(os.path.abspath(config_file)), path), path]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise InputError(
        f"Teacher config SSDET.EXPERIMENT.TEACHER_CONFIG {path!r} not found (looked for "
        f"{' and '.join(repr(c) for c in candidates)})."
    )


def _check_unlabeled(source: str) -> None:
    if not source:
        raise InputError(
            "SSDET.EXPERIMENT.UNLABELED_DATASET is empty: name the unlabeled images, a registered "
            "dataset (e.g. mini_imagenet_train, imagenet_train) or an image folder."
        )
    if image_source_kind(source) is None:
        raise InputError(
            f"SSDET.EXPERIMENT.UNLABELED_DATASET {source!r} is neither a folder nor a registered "
            f"dataset. {unknown_dataset_hint(source)}"
        )


def _local_weights(path: str) -> str:
    """The teacher checkpoint as a local file (Detectron2's PathManager fetches a URL once)."""
    # Read once while planning: an unreadable or refused file stops the experiment before
    # anything is written.
    return fetch_checkpoint(path, "teacher checkpoint SSDET.EXPERIMENT.TEACHER_WEIGHTS")


def _filter_opts(cfg: CfgNode) -> list:
    """``KEY VALUE`` pairs giving another config the pseudo-label settings of ``cfg``."""
    return [
        item
        for key, value in cfg.SSDET.PSEUDO_LABELS.items()
        for item in (f"SSDET.PSEUDO_LABELS.{key}", value)
    ]


def _plan_control(
    teacher: Stage, cfg: CfgNode, output_dir: str, teacher_opts: list
) -> tuple[tuple[Stage, ...], str]:
    """The equal-compute control of a STUDENT_INIT config student, and why it is that stage.

    The teacher's config trained for the student's steps and images per step. Only the schedule's
    length changes: a learning rate or warmup scaled to it would be another baseline than the
    teacher's recipe, and with a cosine schedule (or steps past MAX_ITER) the decay follows
    MAX_ITER anyway.
    """
    teacher_cfg = teacher.load_cfg()
    steps = (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH)
    teacher_steps = (teacher_cfg.SOLVER.MAX_ITER, teacher_cfg.SOLVER.IMS_PER_BATCH)
    if teacher.kind == StageKind.TRAIN and teacher_steps == steps:
        return (teacher,), "same schedule"
    if teacher.kind == StageKind.TRAIN:
        why = "the teacher trained {} steps of {} images, the student {} of {}".format(
            *teacher_steps, *steps
        )
    else:
        why = "the teacher was given (SSDET.EXPERIMENT.TEACHER_WEIGHTS), not trained here"
    control = Stage(
        CONTROL_STAGE,
        StageKind.TRAIN,
        output_dir,
        teacher.config_file,
        (
            *teacher_opts,
            "SOLVER.MAX_ITER",
            cfg.SOLVER.MAX_ITER,
            "SOLVER.IMS_PER_BATCH",
            cfg.SOLVER.IMS_PER_BATCH,
            "OUTPUT_DIR",
            output_dir,
        ),
    )
    return (control,), why


def plan_experiment(
    config_file: str, opts: list | None = None, rounds: int | None = None
) -> ExperimentPlan:
    """Read and check an experiment config and lay out its stages. Nothing is written.

    Args:
        config_file: the experiment config (the student's config plus ``SSDET.EXPERIMENT``).
        opts: ``KEY VALUE`` overrides applied to every stage's config.
        rounds: number of rounds; None = ``SSDET.EXPERIMENT.ROUNDS``.

    Returns:
        The plan.

    Raises:
        InputError: a missing or bad config (the experiment's, the teacher's, any stage's), an
            unknown unlabeled dataset, a missing, unreadable or refused teacher checkpoint,
            teacher and student with different class counts, or no evaluation dataset.
    """
    opts = list(opts or [])
    cfg = load_cfg(config_file, opts)
    if rounds is not None:
        cfg.SSDET.EXPERIMENT.ROUNDS = rounds
    cfg.freeze()
    exp = cfg.SSDET.EXPERIMENT
    if exp.ROUNDS < 1:
        raise InputError(
            "The number of rounds (--rounds, SSDET.EXPERIMENT.ROUNDS) must be >= 1, got "
            f"{exp.ROUNDS}."
        )
    if exp.STUDENT_INIT not in STUDENT_INITS:
        raise InputError(
            f"Unknown SSDET.EXPERIMENT.STUDENT_INIT {exp.STUDENT_INIT!r}; valid: "
            f"{', '.join(STUDENT_INITS)}."
        )
    if exp.CONTROL not in CONTROLS:
        raise InputError(
            f"Unknown SSDET.EXPERIMENT.CONTROL {exp.CONTROL!r}; valid: {', '.join(CONTROLS)}."
        )
    if len(exp.TEACHER_OPTS) % 2:
        raise InputError(
            f"SSDET.EXPERIMENT.TEACHER_OPTS must be KEY VALUE pairs, got {list(exp.TEACHER_OPTS)}."
        )
    if not cfg.OUTPUT_DIR:
        raise InputError("OUTPUT_DIR is empty: name the experiment's folder.")
    if not cfg.DATASETS.TEST:
        raise InputError("DATASETS.TEST is empty: the teacher and the students are compared on it.")
    teacher_config = _resolve_teacher_config(exp.TEACHER_CONFIG, config_file)
    _check_unlabeled(exp.UNLABELED_DATASET)
    output_dir = os.path.abspath(cfg.OUTPUT_DIR)

    def folder(name: str) -> str:
        return os.path.join(output_dir, name)

    # The command line changes the whole experiment; TEACHER_OPTS come after it, so that an
    # experiment can keep a key of its teacher fixed whatever the command line says. Teacher and
    # students are evaluated on the same val sets, the experiment's.
    teacher_opts = [*opts, *exp.TEACHER_OPTS, "DATASETS.TEST", cfg.DATASETS.TEST]
    overridden = set(opts[::2]) & set(exp.TEACHER_OPTS[::2])
    if overridden:
        logger.warning(
            "SSDET.EXPERIMENT.TEACHER_OPTS override the command line for the teacher: %s",
            ", ".join(sorted(overridden)),
        )
    if exp.TEACHER_WEIGHTS:
        weights = _local_weights(exp.TEACHER_WEIGHTS)
        teacher = Stage(
            TEACHER_STAGE,
            StageKind.EVALUATE,
            folder(TEACHER_STAGE),
            teacher_config,
            (*teacher_opts, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", folder(TEACHER_STAGE)),
        )
    else:
        weights = os.path.join(folder(TEACHER_STAGE), MODEL_FINAL)
        teacher = Stage(
            TEACHER_STAGE,
            StageKind.TRAIN,
            folder(TEACHER_STAGE),
            teacher_config,
            (*teacher_opts, "OUTPUT_DIR", folder(TEACHER_STAGE)),
        )

    pairs, continuations = [], []
    for k in range(1, exp.ROUNDS + 1):
        label_name, student_name = f"round{k}/pseudo_labels", f"round{k}/student"
        if k == 1:
            # The student's pseudo-label settings: the labeling report shows what it will keep.
            label_source, label_opts = teacher_config, [*teacher_opts, *_filter_opts(cfg)]
        else:
            label_source, label_opts = config_file, opts
        label = Stage(
            label_name,
            StageKind.LABEL,
            folder(label_name),
            label_source,
            (*label_opts, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", folder(label_name)),
            weights=weights,
        )
        student_opts = [
            *opts,
            "SSDET.PSEUDO_LABELS.STORE",
            os.path.join(label.output_dir, STORE_DIR),
        ]
        if exp.STUDENT_INIT == "teacher":
            # The student starts from the whole teacher, so the experiment's backbone init
            # (SSDET.INIT, which the teacher started from) must not be applied on top of it:
            # check_init_config refuses both at once.
            from_teacher = [
                "SSDET.INIT",
                "RAND",
                "SSDET.INIT_WEIGHTS",
                "",
                "MODEL.WEIGHTS",
                weights,
            ]
            student_opts += from_teacher
            # The student's steps from the student's starting point, on human labels only: with
            # no store, train_or_evaluate trains the supervised Trainer.
            name = f"round{k}/continuation"
            continuations.append(
                Stage(
                    name,
                    StageKind.TRAIN,
                    folder(name),
                    config_file,
                    (
                        *opts,
                        "SSDET.PSEUDO_LABELS.STORE",
                        "",
                        *from_teacher,
                        "OUTPUT_DIR",
                        folder(name),
                    ),
                )
            )
        student = Stage(
            student_name,
            StageKind.TRAIN,
            folder(student_name),
            config_file,
            (*student_opts, "OUTPUT_DIR", folder(student_name)),
        )
        pairs.append((label, student))
        weights = os.path.join(student.output_dir, MODEL_FINAL)

    if exp.CONTROL == "none":
        controls, control_why = (), ""
    elif exp.STUDENT_INIT == "teacher":
        controls = tuple(continuations)
        control_why = "the student fine-tunes its teacher, STUDENT_INIT teacher"
    else:
        controls, control_why = _plan_control(teacher, cfg, folder(CONTROL_STAGE), teacher_opts)
        controls *= exp.ROUNDS
    plan = ExperimentPlan(
        config_file=config_file,
        cfg=cfg,
        output_dir=output_dir,
        unlabeled=exp.UNLABELED_DATASET,
        teacher=teacher,
        rounds=tuple(pairs),
        controls=controls,
        control_why=control_why,
    )
    # Every stage's config must load, and pass its trainer's or labeler's checks, before
    # anything trains for hours.
    cfgs = {stage.name: stage.load_cfg() for stage in plan.stages}
    for stage in plan.stages:
        _check_stage_config(stage, cfgs[stage.name])
    # The class count wherever each model keeps it (a RetinaNet teacher may label for any
    # detector), as the trainers' dataset checks read it.
    teacher_classes = num_classes(cfgs[TEACHER_STAGE])
    if teacher_classes != num_classes(cfg):
        raise InputError(
            f"The teacher ({teacher_config}) has {num_classes_key(cfgs[TEACHER_STAGE])} "
            f"{teacher_classes} but the student ({config_file}) {num_classes_key(cfg)} "
            f"{num_classes(cfg)}: the pseudo labels are the teacher's classes."
        )
    if teacher.kind == StageKind.EVALUATE:
        _check_teacher_fits(cfgs[TEACHER_STAGE], weights_of(teacher))
    return plan


def weights_of(stage: Stage) -> str:
    """The checkpoint a stage reads: its teacher's (labeling) or ``MODEL.WEIGHTS`` (evaluation)."""
    return stage.weights or stage.load_cfg().MODEL.WEIGHTS


def _check_stage_config(stage: Stage, cfg: CfgNode) -> None:
    """Refuse a stage's config as its trainer or labeler would, without building them.

    Raises:
        InputError: naming the stage and its config file.
    """
    try:
        if stage.kind == StageKind.TRAIN:
            trainer = StudentTrainer if cfg.SSDET.PSEUDO_LABELS.STORE else Trainer
            trainer.check_config(cfg)
        elif stage.kind == StageKind.LABEL:
            # The labeling report shows what the student's filter keeps.
            PseudoLabelFilter.from_config(cfg)
    # Detectron2's and some of ssdet's config checks raise a plain ValueError (InputError is one).
    except ValueError as e:
        raise InputError(f"Stage {stage.name} ({stage.config_file}): {e}") from e


def _check_teacher_fits(cfg: CfgNode, weights: str) -> None:
    """Refuse a given teacher checkpoint that does not fill the teacher's model (a missing or
    misshapen tensor), as labeling would, before it is evaluated. The model is built on the CPU.

    Raises:
        InputError: the tensors that do not fit.
    """
    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    try:
        build_teacher(cpu_cfg, weights)
    except InputError as e:
        raise InputError(f"SSDET.EXPERIMENT.TEACHER_WEIGHTS {weights!r}: {e}") from e


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def flat_config(cfg: CfgNode, prefix: str = "") -> dict[str, Any]:
    """``{"SOLVER.MAX_ITER": 9000, ...}``: every leaf of a config under its dotted key."""
    flat = {}
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
