"""Tests of COCO JSON export and import, and of tools/export_pseudo_labels.py."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssdet.data import register_coco_dataset
from ssdet.data.pseudo_labels import (
    CocoIds,
    PseudoLabelFilter,
    PseudoLabelStore,
    export_coco_annotations,
    export_coco_results,
    import_coco_json,
    merge_shards,
)
from ssdet.evaluation import FastCOCOEvaluator
from ssdet.utils.errors import InputError

from ...conftest import REPO
from .conftest import CLASSES, make_provenance, random_detections, write_shards, write_store


def test_coco_round_trip(tmp_path):
    images = random_detections(12, seed=3)
    store = merge_shards(
        write_shards(tmp_path, images, [range(12)], "coco"), tmp_path / "s", make_provenance()
    )
    everything = PseudoLabelFilter.keep_all().apply(store)
    categories = [{"id": i, "name": n} for i, n in zip([1, 3, 18], CLASSES, strict=True)]
    ids = CocoIds("test", "", CocoIds.from_store(store).images, categories)

    export_coco_annotations(everything, tmp_path / "ann.json", ids)
    export_coco_results(everything, tmp_path / "res.json", ids)
    from_ann = import_coco_json(tmp_path / "ann.json", tmp_path / "from_ann")
    from_res = import_coco_json(
        tmp_path / "res.json", tmp_path / "from_res", image_list_json=tmp_path / "ann.json"
    )
    for imported in (from_ann, from_res):
        assert imported.class_names == CLASSES
        for column in ("image_offsets", "image_ids", "heights", "widths", "boxes", "scores"):
            np.testing.assert_array_equal(getattr(imported, column), getattr(store, column))
        np.testing.assert_array_equal(imported.classes, store.classes)
        assert [imported.file_name(i) for i in range(store.num_images)] == [
            store.file_name(i) for i in range(store.num_images)
        ]

    coco = COCO(str(tmp_path / "ann.json"))
    results = coco.loadRes(str(tmp_path / "res.json"))
    assert len(results.getAnnIds()) == store.num_boxes
    with open(tmp_path / "ann.json") as f:
        assert all("score" in a for a in json.load(f)["annotations"])


def test_coco_import_maps_categories_by_name(tmp_path):
    coco = {
        "images": [{"id": 7, "file_name": "x.jpg", "height": 5, "width": 5}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 2, 2], "score": 0.5},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [1, 1, 2, 2], "score": 0.8},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    store = import_coco_json(tmp_path / "ann.json", tmp_path / "s", class_names=CLASSES)
    assert store.class_names == CLASSES
    np.testing.assert_array_equal(store.classes, [0, 2])  # person (0.8) first, then dog
    np.testing.assert_array_equal(store.boxes, [[1, 1, 3, 3], [0, 0, 2, 2]])
    with pytest.raises(InputError, match="image_list_json"):
        (tmp_path / "res.json").write_text("[]")
        import_coco_json(tmp_path / "res.json", tmp_path / "r")


# The dataset's own ids: category ids not 1..C, in another order than the teacher's classes
# (contiguous by ascending id: dog, person, car), image ids not 0..N-1 nor in listing order.
CATEGORY_IDS = {"dog": 3, "person": 7, "car": 11}


@pytest.fixture
def coco_dataset(tmp_path):
    """A registered COCO-format dataset of 12 images, and a store of detections on it: its ground
    truth moved by up to 3 px, with random scores, plus false positives."""
    rng = np.random.default_rng(0)
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    coco = {"images": [], "annotations": [], "categories": []}
    coco["categories"] = [{"id": i, "name": n} for n, i in CATEGORY_IDS.items()]
    images = []
    for k in range(12):
        file_name = f"{k:02d}.jpg"
        (image_dir / file_name).touch()  # the loader checks the files exist, never reads them
        image_id = 1000 - 17 * k
        coco["images"].append({"id": image_id, "file_name": file_name, "height": 64, "width": 80})
        dets = []
        for _ in range(int(rng.integers(1, 5))):
            cls = int(rng.integers(0, len(CLASSES)))
            x, y = rng.uniform(0, 40, 2)
            w, h = rng.uniform(8, 30, 2)
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[CLASSES[cls]],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            dx = rng.uniform(-3, 3, 4)
            dets.append((x + dx[0], y + dx[1], x + w + dx[2], y + h + dx[3], rng.uniform(), cls))
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.uniform(0, 40, 2)
            dets.append((x, y, x + 20, y + 20, rng.uniform(0, 0.6), int(rng.integers(0, 3))))
        dets.sort(key=lambda d: -d[4])
        images.append((file_name, 64, 80, dets))
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(coco))
    register_coco_dataset("t_coco_ids", str(json_file), str(image_dir))
    store = write_store(tmp_path, images, image_root=str(image_dir))
    yield "t_coco_ids", str(json_file), store
    DatasetCatalog.remove("t_coco_ids")
    MetadataCatalog.remove("t_coco_ids")


def pycocotools_ap(json_file, results_file) -> float:
    ground_truth = COCO(json_file)
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(results_file), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation.stats[0] * 100


def evaluator_ap(name: str, store: PseudoLabelStore) -> float:
    """Detectron2's COCOEvaluator (faster-coco-eval inside) on the store's boxes as predictions."""
    dicts = {os.path.basename(d["file_name"]): d for d in DatasetCatalog.get(name)}
    contiguous = {c: k for k, c in enumerate(MetadataCatalog.get(name).thing_classes)}
    evaluator = FastCOCOEvaluator(name, output_dir=None)
    evaluator.reset()
    for i in range(store.num_images):
        rows = slice(store.image_offsets[i], store.image_offsets[i + 1])
        instances = Instances((64, 80))
        instances.pred_boxes = Boxes(torch.as_tensor(np.asarray(store.boxes[rows])))
        instances.scores = torch.as_tensor(np.asarray(store.scores[rows]))
        instances.pred_classes = torch.as_tensor(
            [contiguous[store.class_names[c]] for c in store.classes[rows]], dtype=torch.int64
        )
        image = dicts[store.stored_file_name(i)]
        evaluator.process([{"image_id": image["image_id"]}], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]["AP"]


def load_tool():
    """tools/export_pseudo_labels.py as a module (tools/ is not a package)."""
    path = os.path.join(REPO, "tools", "export_pseudo_labels.py")
    spec = importlib.util.spec_from_file_location("export_pseudo_labels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_keeps_the_dataset_ids_and_evaluates_as_coco_evaluator(coco_dataset, tmp_path):
    name, json_file, store = coco_dataset
    tool = load_tool()
    results = tmp_path / "pseudo.json"
    tool.main(
        tool.parse_args(
            ["export", "--store", store.path, "--output", str(results), "--dataset", name]
        )
    )
    exported = json.loads(results.read_text())
    assert {r["image_id"] for r in exported} <= {1000 - 17 * k for k in range(12)}
    assert {r["category_id"] for r in exported} == set(CATEGORY_IDS.values())
    assert not os.path.exists(tmp_path / "pseudo.images.json")  # the dataset has the ids

    ap = pycocotools_ap(json_file, str(results))
    assert 20 < ap < 95  # neither trivial nor broken: the check below compares real numbers
    assert ap == pytest.approx(evaluator_ap(name, store), abs=1e-9)

    # Import with the dataset's ids: the same boxes and classes of the same images.
    imported = tmp_path / "imported"
    tool.main(
        tool.parse_args(
            ["import", "--json", str(results), "--output", str(imported), "--dataset", name]
        )
    )
    back = PseudoLabelStore.open(imported)
    assert back.class_names == MetadataCatalog.get(name).thing_classes
    assert sorted(back.image_ids.tolist()) == back.image_ids.tolist()
    by_file = {back.file_name(i): i for i in range(back.num_images)}
    for i in range(store.num_images):
        j = by_file[store.file_name(i)]
        mine = slice(store.image_offsets[i], store.image_offsets[i + 1])
        theirs = slice(back.image_offsets[j], back.image_offsets[j + 1])
        np.testing.assert_array_equal(back.boxes[theirs], store.boxes[mine])
        assert [back.class_names[c] for c in back.classes[theirs]] == [
            store.class_names[c] for c in store.classes[mine]
        ]


def test_folder_export_records_its_ids(tmp_path):
    images = [(f"n0{k % 3}/{k}.jpg", 40, 50, [(1, 2, 20, 30, 0.9, k % 3)]) for k in range(5)]
    store = write_store(tmp_path, images, image_root=str(tmp_path / "folder"))
    out = tmp_path / "export" / "pseudo.json"
    os.makedirs(out.parent)
    tool = load_tool()
    tool.main(tool.parse_args(["export", "--store", store.path, "--output", str(out)]))
    image_list = json.loads((tmp_path / "export" / "pseudo.images.json").read_text())
    assert [(im["id"], im["file_name"]) for im in image_list["images"]] == [
        (k, name) for k, (name, *_) in enumerate(images)
    ]
    assert [c["id"] for c in image_list["categories"]] == [1, 2, 3]
    # The recorded ids give the same export again, and import back to the same store.
    again = tmp_path / "again.json"
    image_ids = ["--image-ids", str(tmp_path / "export" / "pseudo.images.json")]
    tool.main(
        tool.parse_args(["export", "--store", store.path, "--output", str(again), *image_ids])
    )
    assert again.read_text() == out.read_text()
    images_arg = ["--images", image_ids[1]]
    tool.main(
        tool.parse_args(
            ["import", "--json", str(out), "--output", str(tmp_path / "s2"), *images_arg]
        )
    )
    back = PseudoLabelStore.open(tmp_path / "s2")
    assert [back.file_name(i) for i in range(5)] == [store.file_name(i) for i in range(5)]
    np.testing.assert_array_equal(back.boxes, store.boxes)
    np.testing.assert_array_equal(back.classes, store.classes)


def test_export_refuses_images_of_another_dataset(coco_dataset, tmp_path):
    name, _, _ = coco_dataset
    other = write_store(tmp_path, [("elsewhere.jpg", 9, 9, [])], name="other", image_root="/x")
    with pytest.raises(InputError, match="1 of the 1 images of .* are not images of 't_coco_ids'"):
        export_coco_results(
            PseudoLabelFilter.keep_all().apply(other),
            tmp_path / "r.json",
            CocoIds.from_dataset(name),
        )
