"""Pseudo labels: the teacher's boxes on unlabeled images, stored for the student.

The paper's teacher labels 1.28M ImageNet images once; the student then trains on COCO plus these
pseudo boxes. The life cycle here:

1. Labeling (``tools/pseudo_label.py``): each rank fills a :class:`PseudoLabelShardWriter` with
   every detection above a low score floor (``SSDET.LABELING.SCORE_FLOOR``) and writes
   one shard file; :func:`merge_shards` joins the shards into a store, in the listing's order.
2. Training: :meth:`PseudoLabelStore.open` memory-maps the store, :class:`PseudoLabelFilter` picks
   boxes and images (score threshold, class balancing) as index arrays, so a threshold sweep needs
   no second teacher pass, and :class:`PseudoLabelDataset` builds Detectron2 dataset dicts on
   demand.

The modules, one concern each:

- ``store``: the on-disk format (documented there), provenance and metadata, the atomic store
  builder, the reader :class:`PseudoLabelStore`, and :func:`verify_store`;
- ``columns``: the column files' array helpers, their ``pread`` reader :class:`ColumnReader`,
  and :class:`PseudoLabelStoreError`;
- ``integrity``: the value checks every store passes when it opens and before it is published;
- ``shards``: labeling's shard files and :func:`merge_shards`;
- ``filter``: the student's filter and its :class:`PseudoLabelSelection`, the "no pseudo boxes"
  checks;
- ``dataset``: the Detectron2 dataset of a selection, its registration, and the student's dataset
  from the config;
- ``coco``: COCO JSON export and import, with the ids of the images' own dataset;
- ``report``: statistics of a selection (JSON, plot, summary, precision against ground truth).
  Not imported here (it needs matplotlib): import ``ssdet.data.pseudo_labels.report``.
- ``visualize``: one image's stored boxes drawn as the filter keeps or drops them, with its
  ground truth (``tools/visualize_pseudo_labels.py``). Not imported here either (matplotlib).
"""

from ssdet.data.pseudo_labels.coco import (
    CocoIds,
    export_coco_annotations,
    export_coco_results,
    import_coco_json,
)
from ssdet.data.pseudo_labels.dataset import (
    PseudoLabelDataset,
    load_pseudo_label_dataset,
    register_pseudo_label_dataset,
)
from ssdet.data.pseudo_labels.filter import (
    ALMOST_EMPTY_FRACTION,
    BALANCE_SUBSAMPLE_RULES,
    PseudoLabelFilter,
    PseudoLabelSelection,
    check_pseudo_labels,
    is_almost_empty,
    warn_if_almost_empty,
)
from ssdet.data.pseudo_labels.shards import (
    SHARD_FORMAT_VERSION,
    PseudoLabelShardWriter,
    check_shard,
    merge_shards,
)
from ssdet.data.pseudo_labels.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_FILE,
    ColumnReader,
    LabelingProvenance,
    PseudoLabelStore,
    PseudoLabelStoreError,
    read_metadata,
    verify_store,
)
from ssdet.utils.io import file_sha256

__all__ = [
    "ALMOST_EMPTY_FRACTION",
    "BALANCE_SUBSAMPLE_RULES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "SHARD_FORMAT_VERSION",
    "CocoIds",
    "ColumnReader",
    "LabelingProvenance",
    "PseudoLabelDataset",
    "PseudoLabelFilter",
    "PseudoLabelSelection",
    "PseudoLabelShardWriter",
    "PseudoLabelStore",
    "PseudoLabelStoreError",
    "check_pseudo_labels",
    "check_shard",
    "export_coco_annotations",
    "export_coco_results",
    "file_sha256",
    "import_coco_json",
    "is_almost_empty",
    "load_pseudo_label_dataset",
    "merge_shards",
    "read_metadata",
    "register_pseudo_label_dataset",
    "verify_store",
    "warn_if_almost_empty",
]
