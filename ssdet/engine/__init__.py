"""ssdet's training engine and the setup its tools share."""

from ssdet.engine.accumulation import (
    AMPGradientAccumulationTrainer,
    CPUAutocastGradientAccumulationTrainer,
    GradientAccumulationTrainer,
)
from ssdet.engine.defaults import (
    argument_parser,
    format_ap_table,
    setup_cfg,
    write_final_metrics,
)
from ssdet.engine.experiment import run_self_training
from ssdet.engine.launch import run_tool, train_or_evaluate
from ssdet.engine.pseudo_loss import PseudoLossWeighting
from ssdet.engine.student import (
    AMPStudentTrainer,
    CPUAutocastStudentTrainer,
    SimpleStudentTrainer,
    StudentTrainer,
)
from ssdet.engine.trainer import CPUAutocastTrainer, Trainer

__all__ = [
    "AMPGradientAccumulationTrainer",
    "AMPStudentTrainer",
    "CPUAutocastGradientAccumulationTrainer",
    "CPUAutocastStudentTrainer",
    "CPUAutocastTrainer",
    "GradientAccumulationTrainer",
    "PseudoLossWeighting",
    "SimpleStudentTrainer",
    "StudentTrainer",
    "Trainer",
    "argument_parser",
    "format_ap_table",
    "run_self_training",
    "run_tool",
    "setup_cfg",
    "train_or_evaluate",
    "write_final_metrics",
]
