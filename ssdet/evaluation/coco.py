"""COCO box AP through Detectron2's ``COCOEvaluator``, with a compiled ``COCOeval`` when present.

Detectron2 evaluates with its C++ ``COCOeval_opt`` only when ``detectron2._C`` is built; the
registry build of Detectron2 ships without it on Python 3.11, so ``COCOEvaluator`` falls back to
pycocotools' Python loop, which is most of an evaluation's time on small models. faster-coco-eval's
``COCOeval_faster`` is the same C++ algorithm (derived from Detectron2's) packaged on its own: it
gives pycocotools' statistics (equal to 1e-12 relative: it sums the same precisions in another
order, which may change a float's last bit), 7-13x faster here (``benchmarks/bench_coco_eval.py``).
"""

import contextlib
import functools
from collections.abc import Iterator

from detectron2.evaluation import COCOEvaluator, coco_evaluation

try:
    from faster_coco_eval import COCOeval_faster
except ImportError:  # an optional speed-up: Detectron2's own choice is correct, only slower
    COCOeval_faster = None

__all__ = ["FastCOCOEvaluator", "fast_cocoeval_available"]


def fast_cocoeval_available() -> bool:
    """Whether faster-coco-eval is importable (else :class:`FastCOCOEvaluator` is Detectron2's)."""
    return COCOeval_faster is not None


@contextlib.contextmanager
def _faster_cocoeval() -> Iterator[None]:
    """Make faster-coco-eval the class that ``COCOEvaluator`` uses as its fast ``COCOeval``.

    Detectron2 looks the class up in its module's ``COCOeval_opt`` (pycocotools' ``COCOeval``
    when its extension is not built) when an evaluator is constructed and when it evaluates;
    the swap lasts only for those calls (evaluation runs in one thread of each process), so that
    stock ``COCOEvaluator``s stay Detectron2's.
    """
    saved = coco_evaluation.COCOeval_opt
    # pycocotools prints the 12-line summary to stdout; faster-coco-eval does the same with print.
    coco_evaluation.COCOeval_opt = functools.partial(COCOeval_faster, print_function=print)
    try:
        yield
    finally:
        coco_evaluation.COCOeval_opt = saved


class FastCOCOEvaluator(COCOEvaluator):
    """Detectron2's ``COCOEvaluator``, computing AP with faster-coco-eval when it is installed.

    It takes ``COCOEvaluator``'s arguments. With ``use_fast_impl=True`` (the default) and
    faster-coco-eval importable, ``COCOeval_faster`` does the work of pycocotools' ``COCOeval``
    (or of Detectron2's compiled ``COCOeval_opt``), with the same statistics (see the module).
    Otherwise it is exactly ``COCOEvaluator``: ``use_fast_impl=False`` is pycocotools,
    Detectron2's "official" path. A ``max_dets_per_image`` other than 100 is Detectron2's
    pycocotools-based ``COCOevalMaxDets`` either way.
    """

    def __init__(self, dataset_name: str, *args, use_fast_impl: bool = True, **kwargs):
        self._faster = use_fast_impl and fast_cocoeval_available()
        with self._cocoeval():
            super().__init__(dataset_name, *args, use_fast_impl=use_fast_impl, **kwargs)

    def _cocoeval(self) -> contextlib.AbstractContextManager:
        return _faster_cocoeval() if self._faster else contextlib.nullcontext()

    def evaluate(self, img_ids: list | None = None) -> dict | None:
        with self._cocoeval():
            return super().evaluate(img_ids)
