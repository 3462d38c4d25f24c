"""A whole self-training experiment: teacher, pseudo labels, student, for Noisy Student rounds.

``tools/self_train.py --config EXPERIMENT.yaml`` runs it. The experiment config describes the
student (model, schedule, ``SSDET.SELF_TRAINING``, ``SSDET.NOISE``, ``SSDET.AUGMENT``, ...) and
names the rest under ``SSDET.EXPERIMENT``: the teacher's config (or checkpoint), the unlabeled
images and the number of rounds. Command-line ``KEY VALUE`` options apply to every stage, teacher
and students alike, so that ``SEED 3 SSDET.DATA.LABELED_FRACTION 0.2`` changes the whole
experiment consistently; only the teacher's own ``SSDET.EXPERIMENT.TEACHER_OPTS`` come after them.

Stages, each in its own folder under the experiment's ``OUTPUT_DIR``:

===========================  ====================================================================
``teacher/``                 the teacher trained and evaluated as ``tools/train_net.py`` does (or
                             only evaluated, with ``TEACHER_WEIGHTS``)
``round1/pseudo_labels/``    the teacher labels ``UNLABELED_DATASET`` as ``tools/pseudo_label.py``
                             does (the store is ``store/``)
``round1/student/``          the student (:class:`~ssdet.engine.StudentTrainer`) trained on the
                             labeled data plus that store, and evaluated
``roundK/...``               the same with round K-1's student as the teacher
``control/``                 the equal-compute control (``STUDENT_INIT config``): the teacher's
                             config trained for the student's steps; none when the teacher
                             trained that many steps (it is the control)
``roundK/continuation/``     the equal-compute control (``STUDENT_INIT teacher``): round K's
                             student's config on human labels only, from the same weights
===========================  ====================================================================

Every student is compared with an equal-compute control, a supervised run of as many steps of as
many images (``SSDET.EXPERIMENT.CONTROL``, "auto"; "none" skips it): an effect of self-training
only counts against a supervised run trained as long. A student of ``STUDENT_INIT config`` trains
its config's schedule from its own init in every round, so one control serves them all: the
teacher config (with ``TEACHER_OPTS``) trained with the student's ``SOLVER.MAX_ITER`` and
``SOLVER.IMS_PER_BATCH``, everything else (optimizer, learning rate, warmup, LR steps) the
teacher's and unscaled; it is the teacher itself when the teacher trained here with that schedule.
A student of ``STUDENT_INIT teacher`` fine-tunes its teacher, so its control continues from the
same weights: the student's config and schedule with no pseudo-label store, which trains with the
supervised :class:`~ssdet.engine.Trainer` (human labels only, and without the student-only
``SSDET.NOISE``, which only :class:`~ssdet.engine.StudentTrainer` adds). A control runs after the
last student it is compared with, so that the main result comes first.

A training stage is finished when it has written ``final_metrics.json`` and its
``model_final.pth`` loads, a labeling stage when its store is complete (``store/metadata.json``,
written last). A rerun skips finished stages and resumes an interrupted one (Detectron2's
``last_checkpoint``, or the newest checkpoint that loads; the labeler's resume). One experiment
runs in a folder at a time (:func:`~ssdet.utils.lock.output_dir_lock`). Each stage
records what it was run with in ``stage.json`` (its resolved config, less keys that do not
change its result, and the fingerprint of its input: the teacher's weights, the pseudo labels),
and a rerun that would reuse a stage made with anything else stops with an error instead; only
the evaluation of a given teacher checkpoint (``TEACHER_WEIGHTS``), which has nothing to resume,
is redone, e.g. when the file was replaced. Every stage's config passes its trainer's or
labeler's checks, and a given teacher checkpoint must fit the teacher's model, before any stage
runs; a stage that still refuses its input leaves no ``stage.json`` unless it made something to
resume.

At the end ``OUTPUT_DIR/final_metrics.json`` holds the last student's results in the schema of
:func:`~ssdet.engine.write_final_metrics`, plus the teacher's and every round's, and
``OUTPUT_DIR/model_final.pth`` the last student's plain Detectron2 weights, with
``config_detectron2.yaml`` beside it to load them in stock Detectron2.

Processes: the stages run one after the other, each under its own Detectron2 ``launch``, rather
than one ``launch`` around the whole pipeline. The labeler checks its input and lists the images
once per machine, in the launching process, before any worker starts (see
:mod:`ssdet.engine.pseudo_labeling`); here that and every other input check happen in this
process, so bad input ends with one error line rather than a worker's traceback, and each stage's
workers start as the tools' do (process group, logging into the stage's folder, RNG seeds).
With a single process in all (one machine, ``--num-gpus 1``), ``launch`` runs the stage in this
process.
"""

import argparse
import contextlib
import functools
import gc
import glob
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

import ssdet
from ssdet.checkpoint import (
    STOCK_CONFIG,
    SsdetCheckpointer,
    is_loadable_checkpoint,
    load_checkpoint_file,
    write_stock_config,
)
from ssdet.config import add_ssdet_config
from ssdet.data.datasets import unknown_dataset_hint
from ssdet.data.pseudo_labels import (
    PseudoLabelFilter,
    PseudoLabelStoreError,
    check_pseudo_labels,
    file_sha256,
    read_metadata,
)
from ssdet.engine.defaults import (
    argument_parser,
    format_ap_table,
    launch_url,
    load_cfg,
    setup_cfg,
    write_final_metrics,
)
from ssdet.engine.interrupt import launch_interruptible
from ssdet.engine.joint import save_detector_checkpoint
from ssdet.engine.pseudo_labeling import (
    SHARD_DIR,
    STORE_DIR,
    LabelingPlan,
    build_teacher,
    label_images,
    prepare_labeling,
)
from ssdet.engine.student import StudentTrainer
from ssdet.engine.trainer import Trainer
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_open, atomic_write_json
from ssdet.utils.lock import output_dir_lock

__all__ = [
    "CONTROLS",
    "STUDENT_INITS",
    "ExperimentPlan",
    "Stage",
    "format_self_training_table",
    "plan_experiment",
    "run_self_training",
    "self_training_argument_parser",
    "train_main",
    "train_or_evaluate",
]

logger = logging.getLogger(__name__)

FINAL_METRICS = "final_metrics.json"
# The last student's weights alone ({"model": state_dict}), in OUTPUT_DIR.
FINAL_CHECKPOINT = "model_final.pth"
# What a stage was run with, in its folder.
STAGE_FILE = "stage.json"
TEACHER = "teacher"
STUDENT_INITS = ("config", "teacher")
# SSDET.EXPERIMENT.CONTROL: "auto" plans the equal-compute control, "none" skips it.
CONTROLS = ("auto", "none")
# The control stage of a STUDENT_INIT config experiment (one for every round).
CONTROL = "control"
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
# where it writes), and the experiment's own keys, whose effect is in the stages' other keys.
_UNCHECKED_KEYS = ("OUTPUT_DIR", "MODEL.DEVICE")
_UNCHECKED_SUFFIXES = ("NUM_WORKERS",)
_UNCHECKED_PREFIXES = ("SSDET.EXPERIMENT.",)
# Keys that only the student's trainer reads (StudentTrainer: the store and its filter, the mixed
# batches and loss, the noise): the teacher and the labeling do not depend on them, so that
# changing the student reuses them. The labeling stage stores every box down to the floor.
_STUDENT_ONLY_PREFIXES = ("SSDET.PSEUDO_LABELS.", "SSDET.SELF_TRAINING.", "SSDET.NOISE.")
_LABELING_KEY = "SSDET.PSEUDO_LABELS.LABELING_SCORE_FLOOR"
# In stage.json, paths inside the experiment's folder are written relative to it, so that an
# experiment folder can be moved or copied.
_OUTPUT_DIR_TOKEN = "$OUTPUT_DIR"
# The loggers that Detectron2's and ssdet's setup attach handlers to.
_LOGGERS = ("detectron2", "fvcore", "ssdet")


# -------------------------------------------------------------------------------------------------
# The plan
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One stage of the experiment: what runs, from which config, into which folder.

    Attributes:
        name: the stage's folder relative to the experiment's, e.g. ``"round1/student"``.
        kind: ``"train"`` (train then evaluate), ``"evaluate"`` (a given teacher checkpoint) or
            ``"label"`` (pseudo-label the unlabeled images).
        output_dir: the stage's folder (absolute).
        config_file: the config file the stage's config is read from.
        opts: ``KEY VALUE`` overrides applied after the file, ending with the stage's own
            (``OUTPUT_DIR``, the teacher's weights, the pseudo-label store).
        weights: for a labeling stage, its teacher's checkpoint; "" otherwise.
    """

    name: str
    kind: str
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
        if self.kind == "label":
            try:
                read_metadata(os.path.join(self.output_dir, STORE_DIR))
            except PseudoLabelStoreError:
                return False
            return True
        return os.path.isfile(os.path.join(self.output_dir, FINAL_METRICS)) and (
            self.kind == "evaluate"
            or is_loadable_checkpoint(os.path.join(self.output_dir, "model_final.pth"))
        )

    def results(self) -> dict:
        """A finished training or evaluation stage's ``{dataset: {"bbox": metrics}}``."""
        return _read_json(os.path.join(self.output_dir, FINAL_METRICS))["results"]


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
        control = _flat_config(self.controls[-1].load_cfg())
        student = _flat_config(self.rounds[-1][1].load_cfg())
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
    if source not in DatasetCatalog.list() and not os.path.isdir(source):
        raise InputError(
            f"SSDET.EXPERIMENT.UNLABELED_DATASET {source!r} is neither a folder nor a registered "
            f"dataset. {unknown_dataset_hint(source)}"
        )


def _local_weights(path: str) -> str:
    """The teacher checkpoint as a local file (Detectron2's PathManager fetches a URL once)."""
    try:
        local = PathManager.get_local_path(path)
    except Exception as e:  # any download or handler failure means: no checkpoint to read
        raise InputError(
            f"Cannot fetch the teacher checkpoint SSDET.EXPERIMENT.TEACHER_WEIGHTS {path!r}: {e}"
        ) from e
    if not os.path.isfile(local):
        raise InputError(f"Teacher checkpoint SSDET.EXPERIMENT.TEACHER_WEIGHTS {path!r} not found.")
    # Read once while planning: an unreadable or refused file stops the experiment before
    # anything is written.
    load_checkpoint_file(local)
    return os.path.abspath(local)


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
    if teacher.kind == "train" and teacher_steps == steps:
        return (teacher,), "same schedule"
    if teacher.kind == "train":
        why = "the teacher trained {} steps of {} images, the student {} of {}".format(
            *teacher_steps, *steps
        )
    else:
        why = "the teacher was given (SSDET.EXPERIMENT.TEACHER_WEIGHTS), not trained here"
    control = Stage(
        CONTROL,
        "train",
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
            TEACHER,
            "evaluate",
            folder(TEACHER),
            teacher_config,
            (*teacher_opts, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", folder(TEACHER)),
        )
    else:
        weights = os.path.join(folder(TEACHER), "model_final.pth")
        teacher = Stage(
            TEACHER,
            "train",
            folder(TEACHER),
            teacher_config,
            (*teacher_opts, "OUTPUT_DIR", folder(TEACHER)),
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
            "label",
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
                    "train",
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
            "train",
            folder(student_name),
            config_file,
            (*student_opts, "OUTPUT_DIR", folder(student_name)),
        )
        pairs.append((label, student))
        weights = os.path.join(student.output_dir, "model_final.pth")

    if exp.CONTROL == "none":
        controls, control_why = (), ""
    elif exp.STUDENT_INIT == "teacher":
        controls = tuple(continuations)
        control_why = "the student fine-tunes its teacher, STUDENT_INIT teacher"
    else:
        controls, control_why = _plan_control(teacher, cfg, folder(CONTROL), teacher_opts)
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
    teacher_classes = cfgs[TEACHER].MODEL.RETINANET.NUM_CLASSES
    if teacher_classes != cfg.MODEL.RETINANET.NUM_CLASSES:
        raise InputError(
            f"The teacher ({teacher_config}) has MODEL.RETINANET.NUM_CLASSES {teacher_classes} "
            f"but the student ({config_file}) {cfg.MODEL.RETINANET.NUM_CLASSES}: the pseudo "
            "labels are the teacher's classes."
        )
    if teacher.kind == "evaluate":
        _check_teacher_fits(cfgs[TEACHER], _weights_of(teacher))
    return plan


def _weights_of(stage: Stage) -> str:
    """The checkpoint a stage reads: its teacher's (labeling) or ``MODEL.WEIGHTS`` (evaluation)."""
    return stage.weights or stage.load_cfg().MODEL.WEIGHTS


def _check_stage_config(stage: Stage, cfg: CfgNode) -> None:
    """Refuse a stage's config as its trainer or labeler would, without building them.

    Raises:
        InputError: naming the stage and its config file.
    """
    try:
        if stage.kind == "train":
            trainer = StudentTrainer if cfg.SSDET.PSEUDO_LABELS.STORE else Trainer
            trainer.check_config(cfg)
        elif stage.kind == "label":
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


# -------------------------------------------------------------------------------------------------
# Stages
# -------------------------------------------------------------------------------------------------


def _setup_stage_logging(output_dir: str, stdout: bool) -> None:
    # The same arguments as Detectron2's default_setup, whose calls setup_logger caches.
    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank)
    setup_logger(
        output_dir,
        distributed_rank=rank,
        name="ssdet",
        abbrev_name="ssdet",
        configure_stdout=stdout,
    )


@contextlib.contextmanager
def _scoped_logging() -> Iterator[None]:
    """Remove the log handlers that are set up inside the block when it ends.

    Each stage logs into its own folder. Stages that run in this process (``launch`` with one
    process per machine calls them directly) would otherwise keep logging into the folders of
    the stages before them. Detectron2's ``setup_logger`` caches its calls; the cache is
    cleared, so that a later run in this process sets its handlers up again.
    """
    before = {name: list(logging.getLogger(name).handlers) for name in _LOGGERS}
    try:
        yield
    finally:
        for name, handlers in before.items():
            stage_logger = logging.getLogger(name)
            for handler in list(stage_logger.handlers):
                if handler not in handlers:
                    handler.flush()
                    stage_logger.removeHandler(handler)
        setup_logger.cache_clear()


def train_main(args: argparse.Namespace) -> dict:
    """Train and evaluate (or, with ``args.eval_only``, only evaluate) one detector.

    A training or evaluation stage's main, what ``tools/train_net.py`` runs:
    :class:`~ssdet.engine.StudentTrainer` when the config names a pseudo-label store, else
    :class:`~ssdet.engine.Trainer`; ``final_metrics.json`` at the end. Runs on every rank of
    Detectron2's ``launch``. Its setup log goes to the stage's ``log.txt`` only.

    Args:
        args: ``config_file``, ``opts``, ``eval_only`` and ``resume``, as the tool's arguments.

    Returns:
        ``{dataset: {"bbox": metrics}}`` (the main process's).
    """
    started = time.time()
    # The environment and config go to the stage's log.txt; the experiment printed them once.
    cfg = setup_cfg(args, echo=False)
    # A launched worker starts without handlers; this process has the experiment's stdout.
    _setup_stage_logging(cfg.OUTPUT_DIR, stdout=comm.get_world_size() > 1)
    return train_or_evaluate(cfg, args, started)


def train_or_evaluate(cfg: CfgNode, args: argparse.Namespace, started: float) -> dict:
    """Train (or only evaluate) the detector of a set-up ``cfg``; write ``final_metrics.json``.

    Args:
        cfg: the run's frozen config, after :func:`~ssdet.engine.setup_cfg`.
        args: ``config_file``, ``eval_only`` and ``resume``, as the tools' arguments.
        started: the run's start (``time.time()``), for the recorded wall time.

    Returns:
        ``{dataset: {"bbox": metrics}}`` (the main process's).
    """
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SsdetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
    else:
        trainer = StudentTrainer(cfg) if cfg.SSDET.PSEUDO_LABELS.STORE else Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    write_final_metrics(cfg, results, started, args.config_file)
    return results


def _label_main(cfg: CfgNode, plan: LabelingPlan) -> None:
    """One rank of a labeling stage (``tools/pseudo_label.py``'s main)."""
    _setup_stage_logging(cfg.OUTPUT_DIR, stdout=comm.get_world_size() > 1)
    label_images(cfg, plan)


def _stage_args(stage: Stage, launch_args: argparse.Namespace) -> argparse.Namespace:
    """The arguments the stage's tool would get (Detectron2's setup logs and reads them)."""
    return argparse.Namespace(
        config_file=stage.config_file,
        opts=list(stage.opts),
        eval_only=stage.kind == "evaluate",
        # Training always continues from the stage's last checkpoint when there is one; the
        # evaluated teacher is MODEL.WEIGHTS.
        resume=stage.kind == "train",
        num_gpus=launch_args.num_gpus,
        num_machines=launch_args.num_machines,
        machine_rank=launch_args.machine_rank,
        dist_url=launch_url(launch_args),
    )


def _launch(main, launch_args: argparse.Namespace, main_args: tuple, output_dir: str) -> None:
    # A stop on SIGINT or SIGTERM ends the experiment (TrainingInterrupted); a rerun continues.
    launch_interruptible(
        main,
        launch_args.num_gpus,
        num_machines=launch_args.num_machines,
        machine_rank=launch_args.machine_rank,
        dist_url=launch_url(launch_args),
        args=main_args,
        output_dir=output_dir,
    )


def _run_stage(stage: Stage, plan: ExperimentPlan, launch_args: argparse.Namespace) -> None:
    args = _stage_args(stage, launch_args)
    if stage.kind == "label":
        # As tools/pseudo_label.py: input checked and images listed here, once per machine.
        cfg = setup_cfg(args, echo=False)
        _setup_stage_logging(cfg.OUTPUT_DIR, stdout=False)
        labeling = prepare_labeling(
            cfg, plan.unlabeled, stage.output_dir, config_path=stage.config_file, resume=True
        )
        _launch(_label_main, launch_args, (cfg, labeling), stage.output_dir)
    else:
        _launch(train_main, launch_args, (args,), stage.output_dir)


def _run_checked_stage(
    stage: Stage, plan: ExperimentPlan, args: argparse.Namespace, spec: dict[str, Any] | None
) -> None:
    """Run a stage, recording ``spec`` (if any) in its ``stage.json`` first.

    A stage that refuses its input (:class:`InputError`) before it made anything to resume
    leaves no ``stage.json`` behind: the corrected rerun is no "other setup".
    """
    path = os.path.join(stage.output_dir, STAGE_FILE)
    if spec is not None:
        atomic_write_json(path, spec)
    try:
        with _scoped_logging():
            _run_stage(stage, plan, args)
    except InputError:
        if spec is not None and not _has_resumable_state(stage):
            os.remove(path)
        raise


def _discard_unfinished_metrics(stage: Stage) -> None:
    """Remove the ``final_metrics.json`` of a training stage whose final checkpoint does not load.

    The stage trains again from its newest checkpoint that loads (or, with nothing left to train,
    writes its final checkpoint again); until then the old record must not mark it finished.
    """
    path = os.path.join(stage.output_dir, FINAL_METRICS)
    if stage.kind == "train" and os.path.isfile(path):
        os.remove(path)
        logger.warning(
            "%s: %s does not load; running the stage again from its newest checkpoint that loads",
            stage.name,
            os.path.join(stage.output_dir, "model_final.pth"),
        )


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _flat_config(cfg: CfgNode, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _stage_spec(stage: Stage, plan: ExperimentPlan) -> dict[str, Any]:
    """What decides a stage's result: its config and the fingerprint of its input."""
    cfg = stage.load_cfg()
    student = bool(cfg.SSDET.PSEUDO_LABELS.STORE)
    config = {
        key: value
        for key, value in _flat_config(cfg).items()
        if key not in _UNCHECKED_KEYS
        and not key.endswith(_UNCHECKED_SUFFIXES)
        and not key.startswith(_UNCHECKED_PREFIXES)
        and (
            student
            or (stage.kind == "label" and key == _LABELING_KEY)
            or not key.startswith(_STUDENT_ONLY_PREFIXES)
        )
    }
    spec: dict[str, Any] = {"kind": stage.kind, "config": config}
    if stage.kind == "label":
        spec["unlabeled"] = plan.unlabeled
        spec["teacher_weights_sha256"] = file_sha256(stage.weights)
    elif stage.kind == "evaluate":
        # The given file may be replaced under the same name: its AP is of its content.
        spec["weights_sha256"] = file_sha256(_weights_of(stage))
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
    return json.loads(json.dumps(_flat_config(cfg)))


def _spec_differences(old: dict, new: dict) -> list[str]:
    """``"KEY old -> new"`` for every config key and input that differs between two specs.

    A key the old spec lacks is no difference while the new spec has it at its default: ssdet
    added the key after the stage was made, and the default keeps the old behaviour.
    """
    old_config, new_config = old.get("config", {}), new.get("config", {})
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


def _check_stage(stage: Stage, plan: ExperimentPlan) -> dict[str, Any] | None:
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
    spec = _stage_spec(stage, plan)
    path = os.path.join(stage.output_dir, STAGE_FILE)
    if not os.path.isfile(path):
        return spec
    differences = _spec_differences(_read_json(path), spec)
    if not differences:
        return None
    shown = "; ".join(differences[:5])
    more = f" (and {len(differences) - 5} more)" if len(differences) > 5 else ""
    if stage.kind == "evaluate" or not _has_resumable_state(stage):
        metrics = os.path.join(stage.output_dir, FINAL_METRICS)
        if stage.kind == "evaluate" and os.path.isfile(metrics):
            os.remove(metrics)
        logger.warning(
            "%s was %s with another setup (%s%s): running it again, it holds nothing to reuse",
            stage.name,
            "evaluated" if stage.kind == "evaluate" else "started",
            shown,
            more,
        )
        return spec
    raise InputError(
        f"Stage {stage.name} in {stage.output_dir} was run with another setup: {shown}"
        f"{more}. Give the experiment another OUTPUT_DIR, or delete that folder and those "
        "of the stages after it to redo them."
    )


def _has_resumable_state(stage: Stage) -> bool:
    """Whether a stage folder holds work a rerun would continue: checkpoints, labeled shards."""
    if stage.kind == "label":
        names = (SHARD_DIR, STORE_DIR)
        return any(os.path.exists(os.path.join(stage.output_dir, n)) for n in names)
    return stage.kind == "train" and bool(
        glob.glob(os.path.join(glob.escape(stage.output_dir), "model_*.pth"))
    )


# -------------------------------------------------------------------------------------------------
# The experiment
# -------------------------------------------------------------------------------------------------


def format_self_training_table(teacher: dict, rounds: list[dict], control: dict | None) -> str:
    """Markdown AP tables of the teacher, each round's student and the equal-compute control(s),
    one per evaluated dataset.

    Args:
        teacher: the teacher's ``{dataset: {"bbox": metrics}}``.
        rounds: each round's student's results, in the same form.
        control: the ``control`` of the experiment's ``final_metrics.json`` (its ``rounds``:
            each round's control's ``stage``, ``steps`` and ``results``); None = no control.

    Returns:
        Per dataset, a heading line, the table and the AP differences of the last student to the
        teacher and to its control.
    """
    controls = {}
    for record in control["rounds"] if control else ():
        controls[f"control ({record['stage']}, {record['steps']} steps)"] = record["results"]
    last_control = f"control ({control['stage']}, {control['steps']} steps)" if control else None
    blocks = []
    for dataset, teacher_res in teacher.items():
        rows = {"teacher": teacher_res}
        for k, res in enumerate(rounds, 1):
            rows[f"student (round {k})"] = res.get(dataset, {})
        rows.update({name: res.get(dataset, {}) for name, res in controls.items()})
        block = f"{dataset}:\n" + format_ap_table(rows, row_label="model")
        ap_student = rows[f"student (round {len(rounds)})"].get("bbox", {}).get("AP")
        differences = []
        for name, row in (("teacher", "teacher"), ("control", last_control)):
            ap = rows[row].get("bbox", {}).get("AP") if row else None
            if ap_student is not None and ap is not None:
                differences.append(f"student - {name}: {ap_student - ap:+.1f} AP")
        if not control:
            differences.append("no equal-compute control")
        block += "\n" + ", ".join(differences)
        blocks.append(block)
    return "\n\n".join(blocks)


def _control_record(plan: ExperimentPlan) -> dict | None:
    """The ``control`` of the experiment's ``final_metrics.json``: the last student's control."""
    if not plan.controls:
        return None
    rounds = [
        {"stage": stage.name, "steps": stage.load_cfg().SOLVER.MAX_ITER, "results": stage.results()}
        for stage in plan.controls
    ]
    return {
        **rounds[-1],
        "why": plan.control_why,
        "differs_from_student": plan.control_differences(),
        "rounds": rounds,
    }


def _describe_control(plan: ExperimentPlan) -> str:
    """What the equal-compute control is, whether it is the teacher, and how it differs."""
    if not plan.controls:
        return "no equal-compute control (SSDET.EXPERIMENT.CONTROL none)"
    control = plan.controls[-1]
    steps = control.load_cfg().SOLVER
    schedule = f"{steps.MAX_ITER} steps of {steps.IMS_PER_BATCH} images"
    if control is plan.teacher:
        line = (
            f"equal-compute control: the teacher ({plan.control_why}: {schedule}, as the student)"
        )
    elif control.name == CONTROL:
        line = (
            f"equal-compute control: stage {control.name}, not the teacher: the teacher's config "
            f"for the student's {schedule} ({plan.control_why})"
        )
    else:
        line = (
            f"equal-compute control: stage {control.name}, one per round, not the teacher: the "
            f"student's config on human labels only for its {schedule}, from the weights the "
            f"student starts from ({plan.control_why})"
        )
    differences = plan.control_differences()
    if differences:
        line += "; it differs from the student also in " + ", ".join(
            f"{key} {theirs!r} vs {ours!r}" for key, (theirs, ours) in differences.items()
        )
    return line


def _export_student(student: Stage, path: str) -> None:
    """Write the student's weights alone: loads into Detectron2's model with plain keys."""
    checkpoint = load_checkpoint_file(os.path.join(student.output_dir, "model_final.pth"))
    # Drops a joint-training head, if any: the file holds the detector of the config only.
    save_detector_checkpoint(checkpoint["model"], path)


def _finish(plan: ExperimentPlan, pseudo_counts: list[dict], wall_time: float) -> dict:
    teacher = plan.teacher.results()
    rounds = [student.results() for _, student in plan.rounds]
    control = _control_record(plan)
    last_student = plan.rounds[-1][1]
    final_checkpoint = os.path.join(plan.output_dir, FINAL_CHECKPOINT)
    _export_student(last_student, final_checkpoint)
    write_stock_config(last_student.load_cfg(), final_checkpoint)
    stage_times = {}
    for stage in plan.stages:
        if stage.kind != "label":
            record = _read_json(os.path.join(stage.output_dir, FINAL_METRICS))
            stage_times[stage.name] = record.get("wall_time_s")
    record = {
        # write_final_metrics' schema: the experiment's result is its last student's.
        "results": rounds[-1],
        "config_file": plan.config_file,
        "seed": plan.cfg.SEED,
        "wall_time_s": round(wall_time, 1),
        "ssdet_version": ssdet.__version__,
        "teacher": teacher,
        "rounds": rounds,
        # The equal-compute control of the last student (None with CONTROL none).
        "control": control,
        "stages": [stage.name for stage in plan.stages],
        "pseudo_labels": pseudo_counts,
        # The wall time each training stage recorded (its last run, if it was resumed).
        "stage_wall_time_s": stage_times,
        "checkpoint": FINAL_CHECKPOINT,
        # The checkpoint's config for stock Detectron2, beside it.
        "detectron2_config": STOCK_CONFIG,
    }
    # Written last, atomically: its presence means the experiment finished.
    atomic_write_json(os.path.join(plan.output_dir, FINAL_METRICS), record)
    print("\n" + format_self_training_table(teacher, rounds, control) + "\n", flush=True)
    logger.info(_describe_control(plan))
    return record


def _setup_experiment(plan: ExperimentPlan) -> float | None:
    """The experiment's own log (OUTPUT_DIR/log.txt) and resolved config (config.yaml).

    Only ssdet's logger: the stages' Detectron2 logs go to their own folders.

    Returns:
        The wall time recorded by a summary of the same stages (a finished experiment), or None.
    """
    os.makedirs(plan.output_dir, exist_ok=True)
    setup_logger(plan.output_dir, name="ssdet", abbrev_name="ssdet")
    config_path = os.path.join(plan.output_dir, "config.yaml")
    with atomic_open(config_path) as f:
        f.write(plan.cfg.dump())
    # Once for the experiment, where Detectron2's default_setup would print them for every stage
    # (the stages write theirs to their own log.txt).
    logger.info("Environment info:\n%s", collect_env_info())
    logger.info("Running with full config:\n%s", plan.cfg.dump())
    logger.info("Full config saved to %s (each stage's: STAGE/config.yaml)", config_path)
    stages = [stage.name for stage in plan.stages]
    final = os.path.join(plan.output_dir, FINAL_METRICS)
    logger.info("Self-training experiment %s: stages %s", plan.output_dir, ", ".join(stages))
    logger.info(_describe_control(plan))
    if not os.path.isfile(final):
        return None
    summary = _read_json(final)
    if summary.get("stages") == stages:
        return summary.get("wall_time_s")
    # The summary of another plan (e.g. fewer rounds) must not say that this one finished.
    os.remove(final)
    logger.info("Removed %s: it summarized other stages than %s", final, stages)
    return None


def run_self_training(args: argparse.Namespace) -> dict | None:
    """Run (or continue) a self-training experiment; see the module docstring.

    Args:
        args: from :func:`self_training_argument_parser`: ``config_file``, ``opts``, ``rounds``
            and Detectron2's launch arguments (``num_gpus``, ``num_machines``, ``machine_rank``,
            ``dist_url``).

    Returns:
        The content of ``OUTPUT_DIR/final_metrics.json`` (None on machines other than the first,
        which writes it).

    Raises:
        InputError: bad input (see :func:`plan_experiment`), a stage folder made with another
            setup, or a teacher whose pseudo boxes the student's filter drops entirely.
    """
    if getattr(args, "eval_only", False):
        raise InputError(
            "--eval-only is not a self-training mode: evaluate a checkpoint with "
            "tools/train_net.py --eval-only MODEL.WEIGHTS FILE."
        )
    started = time.time()
    plan = plan_experiment(args.config_file, args.opts, getattr(args, "rounds", None))
    first_machine = args.machine_rank == 0
    # One experiment per folder; the other machines write nothing of their own there.
    lock = output_dir_lock(plan.output_dir) if first_machine else contextlib.nullcontext()
    with lock, _scoped_logging():
        finished_wall_time = _setup_experiment(plan)
        pseudo_counts = []
        ran = False
        for stage in plan.stages:
            spec = _check_stage(stage, plan)
            # An evaluation of another setup is no longer finished after this check.
            if stage.finished:
                logger.info("skipping %s: finished", stage.name)
            else:
                _discard_unfinished_metrics(stage)
                ran = True
                logger.info("running %s in %s", stage.name, stage.output_dir)
                stage_started = time.time()
                _run_checked_stage(stage, plan, args, spec)
                gc.collect()  # the stage's model, optimizer and loader workers
                if first_machine and not stage.finished:
                    raise RuntimeError(f"Stage {stage.name} ended without its completion marker.")
                logger.info("%s finished in %.0f s", stage.name, time.time() - stage_started)
            if stage.kind == "label":
                student = next(s for label, s in plan.rounds if label is stage)
                pseudo_counts.append(
                    check_pseudo_labels(
                        os.path.join(stage.output_dir, STORE_DIR),
                        student.load_cfg(),
                        stage.weights,
                    )
                )
        if not first_machine:
            return None
        # Like write_final_metrics, the time of this run; a rerun that only found the finished
        # stages keeps the time of the run that finished them.
        wall_time = time.time() - started
        if not ran and finished_wall_time is not None:
            wall_time = finished_wall_time
        return _finish(plan, pseudo_counts, wall_time)


def self_training_argument_parser() -> argparse.ArgumentParser:
    """ssdet's tool arguments (``--config``, launch, ``KEY VALUE`` opts) plus ``--rounds``."""
    parser = argument_parser(
        epilog="KEY VALUE options apply to every stage (teacher and students; the teacher's "
        "SSDET.EXPERIMENT.TEACHER_OPTS come after them). A rerun skips finished stages and "
        "continues an interrupted one by itself (--resume is implied)."
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="Noisy Student rounds (default: SSDET.EXPERIMENT.ROUNDS); each student teaches the "
        "next round",
    )
    return parser
