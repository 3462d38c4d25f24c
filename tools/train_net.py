#!/usr/bin/env python
"""Train or evaluate an ssdet detector.

python tools/train_net.py --config configs/mini/retinanet_R18_FPN_S1_supervised.yaml
python tools/train_net.py --config CFG --eval-only MODEL.WEIGHTS output/model_final.pth
python tools/train_net.py --config CFG --resume            # continue an interrupted run
python tools/train_net.py --config CFG --num-gpus 8         # Detectron2's launch
"""

import time

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ssdet.engine import argument_parser, run_tool, setup_cfg, train_or_evaluate


def main(args):
    started = time.time()
    cfg = setup_cfg(args)
    # default_setup configures Detectron2's loggers only; ssdet's own lines (the backbone init,
    # the pseudo-label filter) belong in log.txt too.
    setup_logger(cfg.OUTPUT_DIR, comm.get_rank(), name="ssdet", abbrev_name="ssdet")
    return train_or_evaluate(cfg, args, started)


if __name__ == "__main__":
    args = argument_parser().parse_args()
    run_tool(main, args, lock_output_dir=True)
