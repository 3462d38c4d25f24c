"""Predict with a run's config_detectron2.yaml as README's "Inference with stock Detectron2" does,
in a process that never imports ssdet (run by tests/checkpoint/test_stock_config.py).

python stock_predict.py CONFIG IMAGE OUT.pt

Builds the model from a fresh ``get_cfg()`` (importing the any-width backbone module beside the
config when there is one), loads its weights strictly and writes the predicted boxes, scores and
classes of IMAGE to OUT.pt.
"""

import os
import sys

import cv2
import torch
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor

config, image, out = sys.argv[1:]
run = os.path.dirname(config)
if os.path.isfile(os.path.join(run, "any_width_resnet.py")):
    sys.path.insert(0, run)
    import any_width_resnet  # noqa: F401

cfg = get_cfg()
cfg.merge_from_file(config)
# Every top-k box, not only the confident ones, so that an instant-test model has boxes to compare.
cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
predictor = DefaultPredictor(cfg)
# DefaultPredictor's checkpointer only warns about missing or unexpected keys.
predictor.model.load_state_dict(
    torch.load(cfg.MODEL.WEIGHTS, map_location="cpu", weights_only=True)["model"], strict=True
)
instances = predictor(cv2.imread(image))["instances"].to("cpu")
imported = sorted(m for m in sys.modules if m == "ssdet" or m.startswith("ssdet."))
assert not imported, f"ssdet was imported: {imported}"
torch.save(
    {
        "boxes": instances.pred_boxes.tensor,
        "scores": instances.scores,
        "classes": instances.pred_classes,
    },
    out,
)
