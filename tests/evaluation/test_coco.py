"""FastCOCOEvaluator: faster-coco-eval's statistics are pycocotools', and without faster-coco-eval
the evaluator is Detectron2's COCOEvaluator."""

import contextlib
import importlib.util
import io
import json
import sys

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator, coco_evaluation
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import ssdet.evaluation.coco as coco_module
from ssdet.evaluation import FastCOCOEvaluator, fast_cocoeval_available

# Non-contiguous like COCO's (1..90 with gaps), so that the evaluator's id mapping is exercised.
CATEGORY_IDS = (1, 3, 4, 7, 9)
NUM_IMAGES = 60
SIZE = (240, 320)  # height, width


def _write_dataset(path: str, seed: int = 0) -> None:
    """A COCO json with boxes of every area range (APs/APm/APl are all defined) and crowds."""
    rng = np.random.RandomState(seed)
    height, width = SIZE
    images, annotations = [], []
    for image_id in range(1, NUM_IMAGES + 1):
        images.append(
            {"id": image_id, "file_name": f"{image_id}.jpg", "height": height, "width": width}
        )
        for _ in range(rng.randint(0, 7)):
            w, h = rng.uniform(6, 200, size=2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.rand() < 0.05),
                }
            )
    categories = [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def _predictions(json_file: str, seed: int = 1) -> tuple[list[dict], list[dict]]:
    """Detector-like outputs: jittered ground truth (some with a wrong class) plus background."""
    rng = np.random.RandomState(seed)
    dataset = json.load(open(json_file))
    contiguous = {c: i for i, c in enumerate(CATEGORY_IDS)}
    height, width = SIZE
    inputs, outputs = [], []
    for image in dataset["images"]:
        boxes, classes = [], []
        for ann in dataset["annotations"]:
            if ann["image_id"] != image["id"]:
                continue
            x, y, w, h = ann["bbox"]
            for _ in range(rng.randint(0, 3)):
                dx, dy, dw, dh = rng.normal(0, 0.1, size=4) * [w, h, w, h]
                boxes.append([x + dx, y + dy, x + dx + w + dw, y + dy + h + dh])
                right = rng.rand() < 0.8
                classes.append(contiguous[ann["category_id"]] if right else rng.randint(5))
        for _ in range(rng.randint(0, 10)):
            x, y = rng.uniform(0, width - 20), rng.uniform(0, height - 20)
            boxes.append([x, y, x + rng.uniform(5, 100), y + rng.uniform(5, 100)])
            classes.append(rng.randint(len(CATEGORY_IDS)))
        instances = Instances(SIZE)
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.tensor(rng.uniform(0.05, 1.0, len(boxes)), dtype=torch.float32)
        instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
        inputs.append({"image_id": image["id"]})
        outputs.append({"instances": instances})
    return inputs, outputs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[str, str]:
    """A registered COCO-format dataset (name, json file)."""
    root = tmp_path_factory.mktemp("coco_eval")
    json_file = str(root / "instances.json")
    _write_dataset(json_file)
    name = "ssdet_test_coco_eval"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, json_file, str(root))
    DatasetCatalog.get(name)  # sets the metadata's dataset id -> contiguous id mapping
    return name, json_file


@pytest.fixture
def pycocotools_runs(monkeypatch) -> list:
    """The evaluations pycocotools' ``COCOeval`` runs (faster-coco-eval does not subclass it)."""
    runs = []
    evaluate = COCOeval.evaluate

    def counting_evaluate(self):
        runs.append(self)
        return evaluate(self)

    monkeypatch.setattr(COCOeval, "evaluate", counting_evaluate)
    return runs


def _evaluate(evaluator, dataset) -> dict:
    evaluator.reset()
    evaluator.process(*_predictions(dataset[1]))
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluator.evaluate()["bbox"]


def _assert_same_results(results: dict, expected: dict) -> None:
    assert results.keys() == expected.keys()
    for key, value in expected.items():
        # faster-coco-eval sums the same precisions in another order: a float's last bit may differ.
        assert results[key] == pytest.approx(value, rel=1e-12, abs=0), key


@pytest.mark.skipif(not fast_cocoeval_available(), reason="faster-coco-eval is not installed")
def test_both_backends_give_identical_stats(dataset, tmp_path):
    name, json_file = dataset
    # The evaluator writes the detections in COCO's results format: evaluate them with each class.
    _evaluate(FastCOCOEvaluator(name, output_dir=str(tmp_path)), dataset)
    results = json.load(open(tmp_path / "coco_instances_results.json"))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
    evals = {}
    for cocoeval in (COCOeval, coco_module.COCOeval_faster):
        with contextlib.redirect_stdout(io.StringIO()):
            evals[cocoeval] = cocoeval(gt, gt.loadRes(results), "bbox")
            evals[cocoeval].evaluate()
            evals[cocoeval].accumulate()
            evals[cocoeval].summarize()
    official, faster = (np.asarray(e.stats) for e in evals.values())
    assert official.shape == (12,) and np.all(official > 0), "every statistic should be defined"
    # Equal but for the last bit a summation order may change (bitwise equal on this dataset).
    np.testing.assert_allclose(faster, official, rtol=1e-12, atol=0)
    precision = [e.eval["precision"] for e in evals.values()]
    np.testing.assert_allclose(precision[1], precision[0], rtol=0, atol=1e-12)


@pytest.mark.skipif(not fast_cocoeval_available(), reason="faster-coco-eval is not installed")
def test_evaluator_uses_faster_coco_eval_with_pycocotools_results(
    dataset, tmp_path, monkeypatch, pycocotools_runs
):
    built = []

    class CountingCOCOeval(coco_module.COCOeval_faster):
        def __init__(self, *args, **kwargs):
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(coco_module, "COCOeval_faster", CountingCOCOeval)
    before = coco_evaluation.COCOeval_opt
    results = _evaluate(FastCOCOEvaluator(dataset[0], output_dir=str(tmp_path)), dataset)
    assert len(built) == 1 and not pycocotools_runs
    # The swap lasts for the evaluator's own calls: stock evaluators stay Detectron2's.
    assert coco_evaluation.COCOeval_opt is before
    official = _evaluate(COCOEvaluator(dataset[0], use_fast_impl=False), dataset)
    _assert_same_results(results, official)
    assert len(built) == 1 and len(pycocotools_runs) == 1


def test_without_faster_coco_eval_it_is_detectron2s_evaluator(
    dataset, tmp_path, monkeypatch, pycocotools_runs
):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # makes the import fail
    spec = importlib.util.spec_from_file_location("_coco_without_faster", coco_module.__file__)
    without = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(without)
    assert not without.fast_cocoeval_available()
    before = coco_evaluation.COCOeval_opt
    results = _evaluate(without.FastCOCOEvaluator(dataset[0], output_dir=str(tmp_path)), dataset)
    assert coco_evaluation.COCOeval_opt is before
    # Detectron2's choice: its compiled COCOeval_opt when built, else pycocotools'.
    assert len(pycocotools_runs) == (1 if before is COCOeval else 0)
    official = _evaluate(COCOEvaluator(dataset[0], use_fast_impl=False), dataset)
    _assert_same_results(results, official)


def test_trainer_evaluates_with_it(dataset, tmp_path):
    from ssdet.config import add_ssdet_config
    from ssdet.engine import Trainer

    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    assert isinstance(Trainer.build_evaluator(cfg, dataset[0]), FastCOCOEvaluator)
