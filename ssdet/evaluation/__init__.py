"""ssdet's evaluation: Detectron2's ``COCOEvaluator`` with a compiled ``COCOeval``."""

from ssdet.evaluation.coco import FastCOCOEvaluator, fast_cocoeval_available

__all__ = ["FastCOCOEvaluator", "fast_cocoeval_available"]
