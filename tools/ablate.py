#!/usr/bin/env python
"""Run an ablation grid and render the paper's tables (see configs/ablations/).

python tools/ablate.py --grid configs/ablations/mini.yaml --output output/ablations/mini
python tools/ablate.py --grid GRID.yaml --output DIR --dry-run        # one command per run
python tools/ablate.py --grid GRID.yaml --output DIR --collect-only   # tables from DIR/*/

Stopping it at any point and rerunning the same command finishes the grid without redoing
finished runs. See ssdet/ablation/.
"""

import os
import sys

from detectron2.utils.logger import setup_logger

from ssdet.ablation import Interrupted
from ssdet.ablation.ablate import ablate, argument_parser
from ssdet.utils.errors import exit_on_input_error

if __name__ == "__main__":
    args = argument_parser().parse_args()
    setup_logger(name="ssdet", abbrev_name="ssdet")
    try:
        with exit_on_input_error():
            sys.exit(ablate(args, tools_dir=os.path.dirname(os.path.abspath(__file__))))
    except (KeyboardInterrupt, Interrupted):
        print(
            "ablate: stopped; the interrupted run is recorded in status.json. Rerun the same "
            "command to continue.",
            file=sys.stderr,
        )
        sys.exit(130)
