"""Linear probe of each checkpoint of a pre-training run (a session 17 record).

    python probe_checkpoints.py RUN_DIR [checkpoint names...]

Prints one line per checkpoint (model_0*.pth by default): the probe's top-1 on mini-ImageNet val,
fitted as tools/pretrain.py fits it at the end of a run.
"""

import glob
import logging
import os
import sys

import torch

from ssdet.engine.defaults import load_cfg
from ssdet.pretrain.data import load_pretrain_splits
from ssdet.pretrain.engine import PretrainTrainer, evaluate_linear_probe

logging.disable(logging.WARNING)
run = sys.argv[1]
cfg = load_cfg(os.path.join(run, "config.yaml"))
cfg.defrost()
cfg.DATALOADER.NUM_WORKERS = 0
names = sys.argv[2:] or sorted(
    os.path.basename(p) for p in glob.glob(os.path.join(run, "model_0*.pth"))
)
splits = load_pretrain_splits(cfg)
for name in names:
    model = PretrainTrainer.build_model(cfg)
    state = torch.load(os.path.join(run, name), map_location="cpu", weights_only=True)["model"]
    model.load_state_dict(state)
    print(name, evaluate_linear_probe(cfg, model, splits), flush=True)
