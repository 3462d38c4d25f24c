"""Multiply-adds of the mini detector's forward pass on one 160 x 160 image (fvcore).

    python model_flops.py [CONFIG]

fvcore counts one multiply-add as one "flop"; backbone + FPN and the RetinaNet head are reported
apart (anchors, box decoding and NMS are not counted). A session 17 record.
"""

import sys

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis

from ssdet.config import add_ssdet_config

cfg = get_cfg()
add_ssdet_config(cfg)
cfg.merge_from_file(sys.argv[1] if len(sys.argv) > 1 else "configs/mini/Base-RetinaNet-mini.yaml")
cfg.MODEL.DEVICE = "cpu"
model = build_model(cfg).eval()


class Dense(torch.nn.Module):
    """Backbone and head of the detector on a normalized batch: the dense part of a step."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, images):
        d = self.detector
        features = d.backbone((images - d.pixel_mean) / d.pixel_std)
        return d.head([features[k] for k in d.head_in_features])


flops = FlopCountAnalysis(Dense(model), torch.zeros(1, 3, 160, 160))
flops.unsupported_ops_warnings(False)
flops.uncalled_modules_warnings(False)
by_module = flops.by_module()
print(f"forward, one 160 x 160 image: {flops.total() / 1e9:.3f} GMAC")
print(
    f"  backbone + FPN {by_module['detector.backbone'] / 1e9:.3f}, head "
    f"{by_module['detector.head'] / 1e9:.3f}"
)
