#!/usr/bin/env python
"""Train or evaluate an ssdet detector.

python tools/train_net.py --config configs/mini/retinanet_R18_FPN_S1_supervised.yaml
python tools/train_net.py --config CFG --eval-only MODEL.WEIGHTS output/model_final.pth
python tools/train_net.py --config CFG --resume            # continue an interrupted run
python tools/train_net.py --config CFG --num-gpus 8         # Detectron2's launch
"""

import time

from ssdet.engine import argument_parser, run_tool, setup_cfg, train_or_evaluate


def main(args):
    started = time.time()
    return train_or_evaluate(setup_cfg(args), args, started)


if __name__ == "__main__":
    args = argument_parser().parse_args()
    run_tool(main, args)
