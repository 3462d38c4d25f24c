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

import contextlib
import sys

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ssdet.data.pseudo_labels import verify_store
from ssdet.engine import run_tool, setup_cfg
from ssdet.engine.pseudo_labeling import (
    check_output_dir,
    label_images,
    labeling_argument_parser,
    prepare_labeling,
)
from ssdet.utils.errors import InputError
from ssdet.utils.lock import output_dir_lock

# What to do when another run holds --output's lock.
_LOCK_ADVICE = "Wait for it to finish, or choose another --output."


def main(cfg, plan):
    """One rank: set up its logging (launch's worker processes start bare), then label."""
    rank = comm.get_rank()
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="ssdet", abbrev_name="ssdet")
    return label_images(cfg, plan)


def verify(store: str) -> None:
    """``--verify STORE``: print what was checked, or exit with one error line."""
    try:
        print(verify_store(store), flush=True)
    except InputError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    parser = labeling_argument_parser()
    args = parser.parse_args()
    if args.verify:
        verify(args.verify)
        sys.exit(0)
    if not args.input or not args.output:
        parser.error("--input and --output are required to label (or pass --verify STORE)")
    with contextlib.ExitStack() as lock:
        # Input is checked here, in the launching process, before any worker starts: a worker's
        # InputError would reach the user as a traceback of torch.multiprocessing.
        try:
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
        except InputError as e:
            sys.exit(f"error: {e}")
        run_tool(main, args, main_args=(cfg, plan))
