#!/usr/bin/env python
"""A whole self-training experiment: teacher, pseudo labels, student(s), teacher vs student AP.

python tools/self_train.py --config configs/mini/retinanet_R18_FPN_S4_self_train.yaml
python tools/self_train.py --config EXPERIMENT --rounds 2     # Noisy Student: 2 rounds
python tools/self_train.py --config EXPERIMENT --num-gpus 8   # Detectron2's launch, every stage
python tools/self_train.py --config EXPERIMENT SEED 3 SSDET.DATA.LABELED_FRACTION 0.2

KEY VALUE options apply to every stage. The students are reported beside an equal-compute
control, a supervised run of as many steps (SSDET.EXPERIMENT.CONTROL; the teacher when it trained
that many). Rerunning the same command skips finished stages and continues an interrupted one.
Results: OUTPUT_DIR/final_metrics.json; the last student's weights: OUTPUT_DIR/model_final.pth.
See ssdet/engine/experiment/.
"""

from ssdet.engine.experiment import run_self_training, self_training_argument_parser
from ssdet.engine.interrupt import TrainingInterrupted, exit_interrupted
from ssdet.utils.errors import exit_on_input_error

if __name__ == "__main__":
    args = self_training_argument_parser().parse_args()
    with exit_on_input_error():
        try:
            run_self_training(args)
        except TrainingInterrupted as e:
            exit_interrupted(e, "Run the same command again to continue.")
