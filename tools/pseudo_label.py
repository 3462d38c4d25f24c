#!/usr/bin/env python
"""The teacher pseudo-labels unlabeled images into a pseudo-label store.

    python tools/pseudo_label.py --config TEACHER_CFG --input DATASET_OR_FOLDER --output DIR \\
        MODEL.WEIGHTS path/to/teacher/model_final.pth
    python tools/pseudo_label.py ... --resume              # continue an interrupted run in DIR
    python tools/pseudo_label.py ... --num-gpus 8          # Detectron2's launch (gloo on the CPU)
    python tools/pseudo_label.py --verify DIR/store        # check a store's values and checksums

The store is DIR/store (train a student with SSDET.PSEUDO_LABELS.STORE DIR/store); the report of
the student's filter is DIR/report.{json,png}. See ssdet/engine/pseudo_labeling.py.
"""

import argparse
import contextlib
import sys

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ssdet.data.pseudo_labels import verify_store
from ssdet.engine import argument_parser, run_tool, setup_cfg
from ssdet.engine.pseudo_labeling import (
    DEFAULT_CHUNK_SIZE,
    check_output_dir,
    label_images,
    prepare_labeling,
)
from ssdet.utils.errors import InputError, exit_on_input_error
from ssdet.utils.lock import output_dir_lock

# What to do when another run holds --output's lock.
_LOCK_ADVICE = "Wait for it to finish, or choose another --output."


def parse_args() -> argparse.Namespace:
    """Detectron2's tool arguments (:func:`ssdet.engine.argument_parser`) and labeling's own."""
    parser = argument_parser(
        epilog="The teacher's weights are MODEL.WEIGHTS (config or trailing KEY VALUE options). "
        "--resume continues an interrupted run in --output: only chunks without a shard are "
        "labeled. --verify STORE labels nothing: it checks a store's values and checksums."
    )
    # Not required=True: --verify needs neither (checked below).
    parser.add_argument(
        "--input",
        help="registered dataset name (e.g. mini_imagenet_train, imagenet_train) or image folder "
        "(<class>/<image> or flat); required to label",
    )
    parser.add_argument("--output", help="output directory of shards and store; required to label")
    parser.add_argument(
        "--verify",
        metavar="STORE",
        help="check the store STORE (its values, and every column against the SHA-256 recorded "
        "when it was built), print a summary and exit",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per forward pass and rank (default: 8 on the CPU, 16 on a GPU)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help="images per shard file: the unit of work distribution and of --resume",
    )
    parser.add_argument(
        "--no-amp", action="store_true", help="float32 inference on a GPU (default: autocast)"
    )
    args = parser.parse_args()
    if not args.verify and not (args.input and args.output):
        parser.error("--input and --output are required to label (or pass --verify STORE)")
    return args


def main(cfg, plan):
    """One rank: set up its logging (launch's worker processes start bare), then label."""
    rank = comm.get_rank()
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="ssdet", abbrev_name="ssdet")
    return label_images(cfg, plan)


def verify(store: str) -> None:
    """``--verify STORE``: print what was checked, or exit with one error line."""
    with exit_on_input_error():
        print(verify_store(store), flush=True)


if __name__ == "__main__":
    args = parse_args()
    if args.verify:
        verify(args.verify)
        sys.exit(0)
    with contextlib.ExitStack() as lock:
        # Input is checked here, in the launching process, before any worker starts: a worker's
        # InputError would reach the user as a traceback of torch.multiprocessing.
        with exit_on_input_error():
            if args.eval_only:  # Detectron2's common flag: labeling has nothing to evaluate
                raise InputError(
                    "--eval-only does not apply to pseudo-labeling: evaluate the teacher with "
                    "tools/train_net.py --config CFG --eval-only MODEL.WEIGHTS FILE."
                )
            if args.machine_rank == 0:
                # One labeling run per --output: two --resume runs would label every chunk twice.
                lock.enter_context(output_dir_lock(args.output, _LOCK_ADVICE))
            check_output_dir(args.output, args.resume)  # before setup_cfg writes config.yaml
            args.opts = [*args.opts, "OUTPUT_DIR", args.output]
            cfg = setup_cfg(args)
            plan = prepare_labeling(
                cfg,
                args.input,
                args.output,
                config_path=args.config_file,
                resume=args.resume,
                chunk_size=args.chunk_size,
                batch_size=args.batch_size,
                amp=not args.no_amp,
            )
        run_tool(main, args, main_args=(cfg, plan))
