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

from ssdet.engine.experiment.plan import (
    CONTROLS,
    STUDENT_INITS,
    ExperimentPlan,
    Stage,
    StageKind,
    plan_experiment,
)
from ssdet.engine.experiment.run import (
    format_self_training_table,
    run_self_training,
    self_training_argument_parser,
)

__all__ = [
    "CONTROLS",
    "STUDENT_INITS",
    "ExperimentPlan",
    "Stage",
    "StageKind",
    "format_self_training_table",
    "plan_experiment",
    "run_self_training",
    "self_training_argument_parser",
]
