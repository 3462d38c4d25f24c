"""Running a self-training experiment: its stages in order, each under Detectron2's ``launch``,
then the summary (``final_metrics.json``, the last student's weights, the AP table)."""

import argparse
import contextlib
import gc
import logging
import os
import time
from typing import Any

from detectron2.config import CfgNode
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.logger import setup_logger

import ssdet
from ssdet.checkpoint import STOCK_CONFIG, load_checkpoint_file, write_stock_config
from ssdet.data.pseudo_labels import check_pseudo_labels
from ssdet.engine.defaults import argument_parser, format_ap_table, setup_cfg
from ssdet.engine.experiment.fingerprint import check_stage, has_resumable_state
from ssdet.engine.experiment.plan import (
    ExperimentPlan,
    Stage,
    StageKind,
    plan_experiment,
    read_json,
)
from ssdet.engine.joint import detector_config, save_detector_checkpoint
from ssdet.engine.launch import (
    launch_main,
    launch_url,
    scoped_logging,
    setup_stage_logging,
    train_main,
)
from ssdet.engine.pseudo_labeling import STORE_DIR, LabelingPlan, label_images, prepare_labeling
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_open, atomic_write_json
from ssdet.utils.lock import output_dir_lock
from ssdet.utils.run_dir import CONTROL_STAGE, FINAL_METRICS, MODEL_FINAL, STAGE_FILE

__all__ = ["format_self_training_table", "run_self_training", "self_training_argument_parser"]

logger = logging.getLogger(__name__)


def _label_main(cfg: CfgNode, plan: LabelingPlan) -> None:
    """One rank of a labeling stage (``tools/pseudo_label.py``'s main)."""
    setup_stage_logging(cfg.OUTPUT_DIR, stdout=comm.get_world_size() > 1)
    label_images(cfg, plan)


def _stage_args(stage: Stage, launch_args: argparse.Namespace) -> argparse.Namespace:
    """The arguments the stage's tool would get (Detectron2's setup logs and reads them)."""
    return argparse.Namespace(
        config_file=stage.config_file,
        opts=list(stage.opts),
        eval_only=stage.kind == StageKind.EVALUATE,
        # Training always continues from the stage's last checkpoint when there is one; the
        # evaluated teacher is MODEL.WEIGHTS.
        resume=stage.kind == StageKind.TRAIN,
        num_gpus=launch_args.num_gpus,
        num_machines=launch_args.num_machines,
        machine_rank=launch_args.machine_rank,
        dist_url=launch_url(launch_args),
    )


def _run_stage(stage: Stage, plan: ExperimentPlan, launch_args: argparse.Namespace) -> None:
    args = _stage_args(stage, launch_args)
    if stage.kind == StageKind.LABEL:
        # As tools/pseudo_label.py: input checked and images listed here, once per machine.
        cfg = setup_cfg(args, echo=False)
        setup_stage_logging(cfg.OUTPUT_DIR, stdout=False)
        labeling = prepare_labeling(
            cfg, plan.unlabeled, stage.output_dir, config_path=stage.config_file, resume=True
        )
        launch_main(_label_main, launch_args, (cfg, labeling), stage.output_dir)
    else:
        launch_main(train_main, launch_args, (args,), stage.output_dir)


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
        with scoped_logging():
            _run_stage(stage, plan, args)
    except InputError:
        if spec is not None and not has_resumable_state(stage):
            os.remove(path)
        raise


def _discard_unfinished_metrics(stage: Stage) -> None:
    """Remove the ``final_metrics.json`` of a training stage whose final checkpoint does not load.

    The stage trains again from its newest checkpoint that loads (or, with nothing left to train,
    writes its final checkpoint again); until then the old record must not mark it finished.
    """
    path = os.path.join(stage.output_dir, FINAL_METRICS)
    if stage.kind == StageKind.TRAIN and os.path.isfile(path):
        os.remove(path)
        logger.warning(
            "%s: %s does not load; running the stage again from its newest checkpoint that loads",
            stage.name,
            os.path.join(stage.output_dir, MODEL_FINAL),
        )


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
    elif control.name == CONTROL_STAGE:
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
    checkpoint = load_checkpoint_file(os.path.join(student.output_dir, MODEL_FINAL))
    # Drops a joint-training head, if any: the file holds the detector of the config only.
    save_detector_checkpoint(checkpoint["model"], path)


def _finish(plan: ExperimentPlan, pseudo_counts: list[dict], wall_time: float) -> dict:
    teacher = plan.teacher.results()
    rounds = [student.results() for _, student in plan.rounds]
    control = _control_record(plan)
    last_student = plan.rounds[-1][1]
    final_checkpoint = os.path.join(plan.output_dir, MODEL_FINAL)
    _export_student(last_student, final_checkpoint)
    write_stock_config(detector_config(last_student.load_cfg()), final_checkpoint)
    stage_times = {}
    for stage in plan.stages:
        if stage.kind != StageKind.LABEL:
            record = read_json(os.path.join(stage.output_dir, FINAL_METRICS))
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
        "checkpoint": MODEL_FINAL,
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
    summary = read_json(final)
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
    with lock, scoped_logging():
        finished_wall_time = _setup_experiment(plan)
        pseudo_counts = []
        ran = False
        for stage in plan.stages:
            spec = check_stage(stage, plan)
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
            if stage.kind == StageKind.LABEL:
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
