"""ssdet's training engine and the setup its tools share."""

from ssdet.engine.defaults import (
    argument_parser,
    format_ap_table,
    run_tool,
    setup_cfg,
    write_final_metrics,
)
from ssdet.engine.trainer import Trainer

__all__ = [
    "Trainer",
    "argument_parser",
    "format_ap_table",
    "run_tool",
    "setup_cfg",
    "write_final_metrics",
]
