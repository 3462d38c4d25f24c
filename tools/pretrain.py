#!/usr/bin/env python
"""Pre-train the detector's ResNet on an ImageNet-layout folder, supervised or with SimCLR.

python tools/pretrain.py --config configs/pretrain/mini_supervised.yaml
python tools/pretrain.py --config configs/pretrain/mini_simclr.yaml --dataset mini_imagenet
python tools/pretrain.py --config CFG --method simclr --dataset /data/imagenet --num-gpus 8
python tools/pretrain.py --config CFG --resume             # continue an interrupted run
"""

import time

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ssdet.engine import argument_parser, run_tool, setup_cfg
from ssdet.pretrain import PretrainTrainer, write_pretrain_metrics
from ssdet.utils.errors import InputError


def main(args):
    started = time.time()
    if args.eval_only:
        raise InputError(
            "tools/pretrain.py has no --eval-only: every run evaluates when training ends, and "
            "--resume of a finished run evaluates it again."
        )
    cfg = setup_cfg(args)
    # ssdet's own loggers (the linear probe, the export) write to the run's log too.
    setup_logger(cfg.OUTPUT_DIR, comm.get_rank(), name="ssdet", abbrev_name="ssdet")
    trainer = PretrainTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    record = write_pretrain_metrics(trainer.cfg, results, started, args.config_file)
    if record is not None:
        scores = ", ".join(f"{k} {v:.2f}" for k, v in results.items())
        print(
            f"\n{record['method']} pre-training on {record['dataset']}: {scores} "
            f"(percent; chance {record['chance_top1']:.2f}); backbone: "
            f"{record['backbone_checkpoint']}\n",
            flush=True,
        )
    return results


def parse_args(argv: list[str] | None = None):
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--method", help="supervised or simclr (sets SSDET.PRETRAIN.METHOD; default: the config's)"
    )
    parser.add_argument(
        "--dataset",
        metavar="FOLDER_OR_NAME",
        help="folder with train/<class>/ and val/<class>/, or a registered ImageNet-layout "
        "dataset such as mini_imagenet (sets SSDET.PRETRAIN.DATASET; default: the config's)",
    )
    args = parser.parse_args(argv)
    # Command-line flags win over the config file, like trailing KEY VALUE overrides.
    for key, value in (("METHOD", args.method), ("DATASET", args.dataset)):
        if value is not None:
            args.opts = [*args.opts, f"SSDET.PRETRAIN.{key}", value]
    return args


if __name__ == "__main__":
    args = parse_args()
    run_tool(main, args, lock_output_dir=True)
