#!/usr/bin/env python
"""Train or evaluate an ssdet detector.

python tools/train_net.py --config configs/mini/retinanet_R18_FPN_S1_supervised.yaml
python tools/train_net.py --config CFG --eval-only MODEL.WEIGHTS output/model_final.pth
python tools/train_net.py --config CFG --resume            # continue an interrupted run
python tools/train_net.py --config CFG --num-gpus 8         # Detectron2's launch
"""

import time

from detectron2.checkpoint import DetectionCheckpointer

from ssdet.engine import (
    StudentTrainer,
    Trainer,
    argument_parser,
    run_tool,
    setup_cfg,
    write_final_metrics,
)


def main(args):
    started = time.time()
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
    else:
        trainer = StudentTrainer(cfg) if cfg.SSDET.PSEUDO_LABELS.STORE else Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    write_final_metrics(cfg, results, started, args.config_file)
    return results


if __name__ == "__main__":
    args = argument_parser().parse_args()
    run_tool(main, args)
