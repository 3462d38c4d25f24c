"""Tests of the joint model: the classification head, its loss, and the plain-detector export."""

import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ssdet.config import add_ssdet_config
from ssdet.data.joint import ClassificationBatch, JointBatch
from ssdet.engine.joint import with_joint_num_classes
from ssdet.modeling.joint import (
    JOINT_HEAD_PREFIX,
    JointClassificationHead,
    JointRetinaNet,
    detector_state_dict,
)
from ssdet.utils.errors import InputError

from ..conftest import REPO

JOINT_CONFIG = os.path.join(REPO, "configs", "mini", "retinanet_R18_FPN_S1_joint_instant_test.yaml")


def joint_cfg(**joint):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(JOINT_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    # An explicit class count: the model is built without listing any data.
    cfg.SSDET.JOINT.NUM_CLASSES = 5
    for key, value in joint.items():
        setattr(cfg.SSDET.JOINT, key, value)
    return cfg


def build_joint(cfg) -> JointRetinaNet:
    torch.manual_seed(0)
    return build_model(with_joint_num_classes(cfg))


def classification_batch(n: int = 4, size: int = 40, num_classes: int = 5) -> ClassificationBatch:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return ClassificationBatch(images, torch.arange(n) % num_classes)


def detection_batch(n: int = 2) -> list[dict]:
    images = []
    for i in range(n):
        instances = Instances((64, 64))
        instances.gt_boxes = Boxes(torch.tensor([[8.0 + i, 8.0, 40.0, 44.0]]))
        instances.gt_classes = torch.tensor([i % 3])
        images.append(
            {"image": torch.full((3, 64, 64), 100, dtype=torch.uint8), "instances": instances}
        )
    return images


def test_head_pools_and_projects():
    head = JointClassificationHead(8, 5)
    features = torch.randn(3, 8, 4, 6)
    logits = head(features)
    assert logits.shape == (3, 5)
    expected = features.mean(dim=(2, 3)) @ head.linear.weight.T + head.linear.bias
    assert torch.allclose(logits, expected, atol=1e-6)
    with pytest.raises(InputError, match=">= 1 class"):
        JointClassificationHead(8, 0)


def test_joint_model_is_a_retinanet_with_a_head_on_the_bottom_up_feature():
    model = build_joint(joint_cfg())
    assert isinstance(model, JointRetinaNet)
    res5 = model.backbone.bottom_up.output_shape()["res5"].channels
    assert model.joint_head.linear.weight.shape == (5, res5)
    model = build_joint(joint_cfg(FEATURE="res4"))
    res4 = model.backbone.bottom_up.output_shape()["res4"].channels
    assert model.joint_head.linear.weight.shape == (5, res4)


def test_classification_loss_accuracy_and_gradients():
    model = build_joint(joint_cfg(LOSS_WEIGHT=0.5))
    model.train()
    batch = classification_batch()
    with EventStorage() as storage:
        losses = model(batch)
        logits = model.classification_logits(batch.images)
    assert set(losses) == {"loss_joint_cls"}
    assert logits.shape == (4, 5)
    # Same batch in training mode (no noise): the same logits, so the loss is exactly 0.5 * CE.
    expected = 0.5 * F.cross_entropy(logits, batch.labels)
    assert losses["loss_joint_cls"].item() == pytest.approx(expected.item(), rel=1e-5)
    accuracy = (logits.argmax(1) == batch.labels).float().mean().item()
    assert storage.latest()["joint/cls_accuracy"][0] == pytest.approx(accuracy)

    losses["loss_joint_cls"].backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["joint_head.linear.weight"].abs().sum() > 0
    assert grads["backbone.bottom_up.stem.conv1.weight"].abs().sum() > 0
    # The FPN and the detection head do not see classification images.
    assert all(g is None for n, g in grads.items() if n.startswith(("head.", "backbone.fpn_")))


def test_joint_batch_gives_detection_and_classification_losses():
    model = build_joint(joint_cfg())
    model.train()
    with EventStorage():
        losses = model(JointBatch(detection_batch(), classification_batch()))
        detection_only = model(detection_batch())
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_joint_cls"}
    assert set(detection_only) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_classification_losses_need_training_mode():
    model = build_joint(joint_cfg()).eval()
    with pytest.raises(ValueError, match="training mode"):
        model(classification_batch())


def test_exported_detector_loads_strict_and_predicts_as_the_joint_model():
    cfg = joint_cfg()
    model = build_joint(cfg).eval()
    state = detector_state_dict(model.state_dict())
    assert not any(k.startswith(JOINT_HEAD_PREFIX) for k in state)
    assert set(model.state_dict()) - set(state) == {
        "joint_head.linear.weight",
        "joint_head.linear.bias",
    }
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    plain = build_model(cfg).eval()
    assert type(plain).__name__ == "RetinaNet"
    plain.load_state_dict(state, strict=True)
    image = [{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)}]
    with torch.no_grad():
        joint_out, plain_out = model(image)[0]["instances"], plain(image)[0]["instances"]
    assert torch.equal(joint_out.pred_boxes.tensor, plain_out.pred_boxes.tensor)
    assert torch.equal(joint_out.scores, plain_out.scores)


def test_bad_feature_and_weight_are_input_errors():
    with pytest.raises(InputError, match=r"'res9'.*\['res3', 'res4', 'res5'\]"):
        build_joint(joint_cfg(FEATURE="res9"))
    with pytest.raises(InputError, match="LOSS_WEIGHT must be >= 0"):
        build_joint(joint_cfg(LOSS_WEIGHT=-1.0))


def test_num_classes_from_the_dataset(tiny_world):
    model = build_joint(joint_cfg(NUM_CLASSES=0))
    # The tiny world's mini-ImageNet has the 14 class folders of the full one.
    assert model.joint_head.linear.out_features == 14
