"""Precision and the kinds of false positive of a teacher's boxes, by score threshold.

    python false_positives.py STORE_OR_RESULTS GROUND_TRUTH_JSON [thresholds...]

STORE_OR_RESULTS is a pseudo-label store (mini-ImageNet, with its ground-truth side file) or a
COCOEvaluator ``coco_instances_results.json`` of the same teacher on mini-COCO val (imported as a
store with the val annotations' images and categories), so that the teacher's precision on its
own domain and on mini-ImageNet are measured the same way (``build_report``). A session 17 record.
"""

import os
import sys
import tempfile

from ssdet.data.pseudo_labels import PseudoLabelFilter, PseudoLabelStore, import_coco_json
from ssdet.data.pseudo_labels.report import build_report

source, ground_truth = sys.argv[1], sys.argv[2]
thresholds = [float(t) for t in sys.argv[3:]] or [0.5]
with tempfile.TemporaryDirectory() as tmp:
    if os.path.isdir(source):
        store = PseudoLabelStore.open(source)
    else:
        store = import_coco_json(source, os.path.join(tmp, "store"), image_list_json=ground_truth)
    for t in thresholds:
        report = build_report(PseudoLabelFilter(score_thresh=t).apply(store), ground_truth)
        gt = report.ground_truth
        print(
            f"score >= {t}: precision {100 * gt['precision']:.1f}%, recall "
            f"{100 * gt['recall']:.1f}%, {gt['num_kept_boxes']} kept boxes"
        )
        print(report.summary().splitlines()[-1])
