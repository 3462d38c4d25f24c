"""The teacher labels unlabeled images: batched, parallel, sharded, resumable inference.

``tools/pseudo_label.py`` runs it. The life cycle:

1. :func:`prepare_labeling` (once per machine, before Detectron2's ``launch``) checks the input and
   the output directory, lists the images (:class:`ImageListing`: the listing index is the store's
   image id) and cuts the listing into fixed-size chunks. Bad input raises :class:`InputError` here,
   so even a multi-process run fails with one error line.
2. :func:`label_images` (on every rank) labels the chunks ``pending[rank::world_size]``; each chunk
   becomes one shard file written atomically by :class:`PseudoLabelShardWriter`. With ``resume``,
   chunks whose shard exists are not pending, so a killed run loses at most its chunks in flight.
3. After a barrier, rank 0 merges the shards (:func:`merge_shards`: canonical order, so the store is
   the same for any number of ranks and any interruption), writes the report next to the store
   and prints its summary.

Output directory: ``labeling.json`` (the settings a resume must match), ``listing.txt`` (one image
path per line, relative to the image root; line i is image id i), ``shards/chunk-*.npz``,
``store/`` (the pseudo-label store), ``report.json`` and ``report.png``, plus Detectron2's
``config.yaml`` and ``log.txt``.

Batching is exact: every image's boxes equal those of Detectron2's ``DefaultPredictor`` on it (up
to float rounding), because a batch only holds images that the model pads to the same shape (see
:class:`ShapeBatcher`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils import comm
from tqdm import tqdm

from ssdet.checkpoint import SsdetCheckpointer, fetch_checkpoint
from ssdet.data.build import check_num_classes, check_registered
from ssdet.data.datasets import register_config_datasets
from ssdet.data.ground_truth import find_ground_truth
from ssdet.data.labeling import ImageListing, ShapeBatcher, build_labeling_loader
from ssdet.data.pseudo_labels import (
    LabelingProvenance,
    PseudoLabelFilter,
    PseudoLabelShardWriter,
    PseudoLabelStore,
    check_shard,
    file_sha256,
    merge_shards,
)
from ssdet.data.pseudo_labels.report import build_report, write_report
from ssdet.engine.defaults import share_cpu_cores
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_open, atomic_write_json

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "LabelingPlan",
    "build_teacher",
    "check_output_dir",
    "label_chunks",
    "label_images",
    "merge_and_report",
    "prepare_labeling",
]

logger = logging.getLogger(__name__)

# Images per chunk (= per shard file, per resume unit). At ImageNet scale 10k images is a few
# minutes of one GPU: a kill loses little, and 128 shards merge in seconds.
DEFAULT_CHUNK_SIZE = 10_000
# Teacher batch size when --batch-size is not given.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 16}

RUN_FILE = "labeling.json"
LISTING_FILE = "listing.txt"
SHARD_DIR = "shards"
STORE_DIR = "store"
REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
_RUN_FORMAT = "ssdet.pseudo_labeling_run"
# The settings of labeling.json that a resumed run must match to produce the same store, and how
# to name them to the user.
_RESUME_KEYS = {
    "listing_sha256": "the input images",
    "chunk_size": "--chunk-size",
    "batch_size": "--batch-size",
    "amp": "AMP (--no-amp)",
    "score_floor": "SSDET.LABELING.SCORE_FLOOR",
    "teacher_weights_sha256": "the teacher weights",
    "teacher_model_sha256": "the teacher config (MODEL or INPUT keys)",
}


# -------------------------------------------------------------------------------------------------
# What to label
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelingPlan:
    """Everything every rank needs, computed once by :func:`prepare_labeling`.

    Attributes:
        listing: the images.
        listing_sha256: :meth:`ImageListing.sha256` of ``listing``.
        output_dir: absolute output directory.
        config_path: the teacher's config file.
        class_names: the teacher's classes (its training set's ``thing_classes``).
        weights_path: the teacher's checkpoint (local path).
        weights_sha256: its SHA-256.
        chunk_size: images per chunk / shard.
        batch_size: images per teacher forward pass.
        amp: whether CUDA inference runs under ``torch.autocast`` (float16).
        score_floor: the lowest score stored.
        pending: ids of the chunks still to label, ascending; chunk k holds listing indices
            ``[k * chunk_size, (k + 1) * chunk_size)``.
    """

    listing: ImageListing
    listing_sha256: str
    output_dir: str
    config_path: str
    class_names: list[str]
    weights_path: str
    weights_sha256: str
    chunk_size: int
    batch_size: int
    amp: bool
    score_floor: float
    pending: tuple[int, ...]

    @property
    def num_chunks(self) -> int:
        return -(-len(self.listing) // self.chunk_size)

    def chunk_range(self, chunk: int) -> range:
        """Listing indices of a chunk."""
        return range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, len(self.listing)))

    def shard_path(self, chunk: int) -> str:
        return os.path.join(self.output_dir, SHARD_DIR, f"chunk-{chunk:06d}.npz")

    @property
    def store_dir(self) -> str:
        return os.path.join(self.output_dir, STORE_DIR)


# -------------------------------------------------------------------------------------------------
# Preparing a run (launching process)
# -------------------------------------------------------------------------------------------------


def _has_shards(output_dir: str) -> bool:
    shard_dir = os.path.join(output_dir, SHARD_DIR)
    return os.path.isdir(shard_dir) and any(n.endswith(".npz") for n in os.listdir(shard_dir))


def check_output_dir(output_dir: str, resume: bool) -> None:
    """Refuse to start a fresh run over the shards or store of another.

    Call it before anything writes into ``output_dir`` (Detectron2's setup writes config.yaml).

    Raises:
        InputError: ``output_dir`` holds shards or a store and ``resume`` is False.
    """
    if not resume and (
        _has_shards(output_dir) or os.path.exists(os.path.join(output_dir, STORE_DIR))
    ):
        raise InputError(
            f"Output {output_dir!r} already holds pseudo-label shards or a store. Pass --resume to "
            "continue that run (it labels only the missing chunks), or choose another --output."
        )


def _teacher_cfg(cfg: CfgNode) -> CfgNode:
    """The config the teacher runs with: its test score thresholds lowered to the labeling floor.

    The store must hold every box down to ``SSDET.LABELING.SCORE_FLOOR`` (the student's thresholds
    act above it). Detectors drop boxes below their test threshold, and any threshold up to the
    floor yields the same boxes above the floor, so the floor itself is used.
    """
    floor = cfg.SSDET.LABELING.SCORE_FLOOR
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = floor
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = floor
    cfg.freeze()
    return cfg


def _teacher_model_sha256(cfg: CfgNode) -> str:
    """Hash of what decides the teacher's outputs besides its weights: MODEL and INPUT keys."""
    c = cfg.clone()
    c.defrost()
    # Where the model runs and where its weights lie do not change the labels.
    c.MODEL.DEVICE = ""
    c.MODEL.WEIGHTS = ""
    return hashlib.sha256((c.MODEL.dump() + c.INPUT.dump()).encode("utf-8")).hexdigest()


def _teacher_class_names(cfg: CfgNode) -> list[str]:
    if not cfg.DATASETS.TRAIN:
        raise InputError(
            "The teacher config names no training dataset (DATASETS.TRAIN), whose thing_classes "
            "are the pseudo labels' class names."
        )
    name = cfg.DATASETS.TRAIN[0]
    check_registered([name])
    metadata = MetadataCatalog.get(name)
    if metadata.get("thing_classes") is None:
        DatasetCatalog.get(name)  # COCO-format loaders set thing_classes when they load
    classes = metadata.get("thing_classes")
    if classes is None:
        raise InputError(f"The teacher's training dataset {name!r} has no thing_classes metadata.")
    check_num_classes(cfg, name)
    return list(classes)


def _local_weights(cfg: CfgNode) -> str:
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise InputError(
            "MODEL.WEIGHTS is empty: a randomly initialized teacher would label nothing useful. "
            "Pass the teacher's checkpoint, e.g. MODEL.WEIGHTS output/teacher/model_final.pth."
        )
    # Read once here, in the launching process, so that an unreadable or refused file is one error
    # line before any worker starts (each worker reads it again into its teacher).
    return fetch_checkpoint(weights, "teacher weights MODEL.WEIGHTS")


def prepare_labeling(
    cfg: CfgNode,
    source: str,
    output_dir: str,
    *,
    config_path: str = "",
    resume: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    batch_size: int | None = None,
    amp: bool = True,
) -> LabelingPlan:
    """Check a labeling run's input, list its images and record its settings in ``output_dir``.

    Runs once per machine, in the launching process. Writes ``labeling.json`` and ``listing.txt``
    into ``output_dir``; a resumed run must match the recorded settings (else its store would mix
    two labelings).

    Args:
        cfg: the teacher's config (``setup_cfg``); ``MODEL.WEIGHTS`` is the teacher checkpoint.
        source: ``--input``, see :meth:`ImageListing.from_input`.
        output_dir: ``--output``.
        config_path: the teacher config file, for the provenance.
        resume: continue the run in ``output_dir``: only chunks without a shard are pending.
        chunk_size: images per chunk / shard.
        batch_size: images per forward pass; None for :data:`DEFAULT_BATCH_SIZE` of the device.
        amp: float16 autocast on CUDA (ignored on the CPU).

    Returns:
        The plan, to pass to :func:`label_images` on every rank.

    Raises:
        InputError: missing weights, unknown input, bad sizes, an output directory of another run,
            or (``resume``) a damaged shard, named with the fix.
    """
    if chunk_size < 1:
        raise InputError(f"--chunk-size must be >= 1, got {chunk_size}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    output_dir = os.path.abspath(output_dir)
    check_output_dir(output_dir, resume)
    weights = _local_weights(cfg)
    class_names = _teacher_class_names(cfg)
    listing = ImageListing.from_input(source)
    device = torch.device(cfg.MODEL.DEVICE).type
    on_cuda = device == "cuda"
    settings = {
        "format": _RUN_FORMAT,
        "input": source,
        "image_root": listing.root,
        "listing_size": len(listing),
        "listing_sha256": listing.sha256(),
        "chunk_size": chunk_size,
        "batch_size": batch_size or DEFAULT_BATCH_SIZE.get(device, DEFAULT_BATCH_SIZE["cpu"]),
        "amp": bool(amp and on_cuda),
        "score_floor": float(cfg.SSDET.LABELING.SCORE_FLOOR),
        "teacher_weights_sha256": file_sha256(weights),
        "teacher_model_sha256": _teacher_model_sha256(_teacher_cfg(cfg)),
    }
    run_file = os.path.join(output_dir, RUN_FILE)
    if resume and not os.path.isfile(run_file) and _has_shards(output_dir):
        raise InputError(
            f"Cannot resume {output_dir!r}: it has shards but no {RUN_FILE} recording their "
            "settings. Choose another --output."
        )
    if resume and os.path.isfile(run_file):
        with open(run_file) as f:
            recorded = json.load(f)
        changed = [
            what if key.endswith("sha256") else f"{what} {recorded.get(key)} (now {settings[key]})"
            for key, what in _RESUME_KEYS.items()
            if recorded.get(key) != settings[key]
        ]
        if changed:
            raise InputError(
                f"Cannot resume {output_dir!r}: settings differ from those of its shards: "
                + ", ".join(changed)
                + ". Resume with the same input, teacher, --chunk-size and --batch-size, or "
                "choose another --output."
            )
    atomic_write_json(run_file, settings)
    with atomic_open(os.path.join(output_dir, LISTING_FILE)) as f:
        f.write(listing.text())

    plan = LabelingPlan(
        listing=listing,
        listing_sha256=settings["listing_sha256"],
        output_dir=output_dir,
        config_path=os.path.abspath(config_path) if config_path else "",
        class_names=class_names,
        weights_path=os.path.abspath(weights),
        weights_sha256=settings["teacher_weights_sha256"],
        chunk_size=chunk_size,
        batch_size=settings["batch_size"],
        amp=settings["amp"],
        score_floor=settings["score_floor"],
        pending=(),
    )
    pending = tuple(k for k in range(plan.num_chunks) if not os.path.isfile(plan.shard_path(k)))
    if resume:
        # Read whole here (CRC-32s included): a damaged shard would otherwise fail the merge,
        # after every other chunk is labeled, and on every rerun.
        for chunk in sorted(set(range(plan.num_chunks)) - set(pending)):
            check_shard(plan.shard_path(chunk))
    logger.info(
        "Labeling %d images of %r in %d chunks of %d (%d pending) into %s",
        len(listing),
        source,
        plan.num_chunks,
        chunk_size,
        len(pending),
        output_dir,
    )
    return dataclasses.replace(plan, pending=pending)


# -------------------------------------------------------------------------------------------------
# Batched inference (each rank)
# -------------------------------------------------------------------------------------------------


class _TeacherCheckpointer(SsdetCheckpointer):
    """Refuses a checkpoint that leaves part of the teacher randomly initialized.

    Detectron2 only warns about missing keys (a backbone-only checkpoint, a class-count mismatch);
    a partly random teacher silently produces garbage pseudo labels.
    """

    def _load_model(self, checkpoint: Any) -> Any:
        incompatible = super()._load_model(checkpoint)
        if incompatible.missing_keys:
            missing = incompatible.missing_keys
            raise InputError(
                f"The teacher weights do not fit the teacher config: {len(missing)} parameters are "
                f"missing or of another shape (first: {', '.join(missing[:5])}). Pass a checkpoint "
                "trained with this config."
            )
        return incompatible


def build_teacher(cfg: CfgNode, weights: str | None = None) -> torch.nn.Module:
    """Build the teacher in eval mode with its test thresholds at the labeling floor, and load it.

    Args:
        cfg: the teacher config.
        weights: the checkpoint; default ``cfg.MODEL.WEIGHTS``.

    Raises:
        InputError: the checkpoint leaves parameters uninitialized.
    """
    model = build_model(_teacher_cfg(cfg))
    model.eval()
    _TeacherCheckpointer(model).load(weights or cfg.MODEL.WEIGHTS)
    return model


def _predict(
    model: torch.nn.Module, batch: list[dict[str, Any]], amp: bool
) -> Iterator[tuple[dict[str, Any], Any]]:
    inputs = [{"image": r["image"], "height": r["height"], "width": r["width"]} for r in batch]
    with torch.inference_mode(), torch.autocast("cuda", enabled=amp):
        outputs = model(inputs)
    for record, output in zip(batch, outputs, strict=True):
        yield record, output["instances"].to("cpu")


def label_chunks(
    cfg: CfgNode,
    model: torch.nn.Module,
    plan: LabelingPlan,
    chunks: Iterable[int],
    progress: tqdm | None = None,
) -> list[str]:
    """Label chunks with the teacher and write one shard per chunk, atomically.

    The chunks' images stream through one DataLoader (no pause between chunks); a chunk's shard
    is written as soon as its last image is labeled, with the images that failed to load listed
    with their reasons.

    Args:
        cfg: the teacher config (INPUT, DATALOADER, MODEL.DEVICE).
        model: from :func:`build_teacher`.
        plan: from :func:`prepare_labeling`.
        chunks: the chunk ids to label.
        progress: a progress bar to advance by the number of images loaded.

    Returns:
        The shard files written, in chunk order.
    """
    chunks = list(chunks)
    if not chunks:
        return []
    indices = np.concatenate([np.arange(r.start, r.stop) for r in map(plan.chunk_range, chunks)])
    loader = build_labeling_loader(cfg, plan.listing, indices, plan.batch_size)
    backbone = model.backbone
    batcher = ShapeBatcher(
        plan.batch_size, backbone.size_divisibility, backbone.padding_constraints
    )
    num_classes = len(plan.class_names)
    written: list[str] = []

    def label(batches: list[list[dict[str, Any]]], shard: PseudoLabelShardWriter) -> None:
        for batch in batches:
            for record, instances in _predict(model, batch, plan.amp):
                shard.add_instances(record["index"], record["file_name"], instances)

    def finish(shard: PseudoLabelShardWriter) -> None:
        label(batcher.flush(), shard)
        written.append(shard.write())

    shard, current = None, -1
    for loaded in loader:
        for record in loaded:
            chunk = record["index"] // plan.chunk_size
            if chunk != current:
                if shard is not None:
                    finish(shard)
                shard = PseudoLabelShardWriter(
                    plan.shard_path(chunk), num_classes, plan.score_floor
                )
                current = chunk
            if "error" in record:
                logger.warning("Skipping %s: %s", record["file_name"], record["error"])
                shard.add_failure(record["index"], record["file_name"], record["error"])
            else:
                label(batcher.add(record), shard)
        if progress is not None:
            progress.update(len(loaded))
    finish(shard)
    return written


def _provenance(cfg: CfgNode, plan: LabelingPlan) -> LabelingProvenance:
    return LabelingProvenance(
        class_names=list(plan.class_names),
        teacher_config_path=plan.config_path,
        teacher_config_text=_teacher_cfg(cfg).dump(),
        teacher_weights_path=plan.weights_path,
        teacher_weights_sha256=plan.weights_sha256,
        listing_path=os.path.join(plan.output_dir, LISTING_FILE),
        listing_sha256=file_sha256(os.path.join(plan.output_dir, LISTING_FILE)),
        listing_size=len(plan.listing),
        image_root=plan.listing.root,
    )


def merge_and_report(cfg: CfgNode, plan: LabelingPlan) -> PseudoLabelStore:
    """Merge every chunk's shard into ``<output>/store`` and write the report next to it.

    The report applies the student's filter of ``cfg`` (``SSDET.PSEUDO_LABELS``) and, when a
    registered dataset has ground truth of the labeled images (the mini world's mini-ImageNet; see
    :func:`find_ground_truth`), measures the kept boxes' precision and recall; its summary is
    printed.

    Returns:
        The merged store.
    """
    shards = [plan.shard_path(k) for k in range(plan.num_chunks)]
    missing = [path for path in shards if not os.path.isfile(path)]
    if missing:
        raise RuntimeError(f"{len(missing)} shards are missing after labeling, e.g. {missing[0]}")
    # The output was checked by prepare_labeling: an existing store is this run's, re-merged.
    store = merge_shards(shards, plan.store_dir, _provenance(cfg, plan), overwrite=True)
    selection = PseudoLabelFilter.from_config(cfg).apply(store)
    report = build_report(selection, ground_truth=find_ground_truth(store))
    write_report(
        report,
        os.path.join(plan.output_dir, REPORT_JSON),
        os.path.join(plan.output_dir, REPORT_PNG),
    )
    print(report.summary(), flush=True)
    print(f"Train a student on it with SSDET.PSEUDO_LABELS.STORE {plan.store_dir}", flush=True)
    return store


def label_images(cfg: CfgNode, plan: LabelingPlan) -> PseudoLabelStore | None:
    """One rank's labeling run; the function that Detectron2's ``launch`` starts on every rank.

    Rank r labels ``plan.pending[r::world_size]`` (on a fresh run chunk k goes to rank
    k % world_size; on a resumed run the remaining chunks are dealt out evenly). After a barrier,
    rank 0 merges every shard and writes the report.

    Args:
        cfg: the teacher config.
        plan: from :func:`prepare_labeling`, identical on every rank.

    Returns:
        The store on rank 0, None on the other ranks.
    """
    rank, world_size = comm.get_rank(), comm.get_world_size()
    if world_size > 1:
        # Each machine's launching process made its own plan: they must agree on the work.
        fingerprint = (plan.listing_sha256, plan.pending, plan.chunk_size)
        if len(set(comm.all_gather(fingerprint))) != 1:
            raise RuntimeError(
                "Ranks disagree on the listing or the pending chunks: do all machines see the "
                "same --input and --output (a shared filesystem)?"
            )
    share_cpu_cores(cfg.MODEL.DEVICE)
    # A worker that launch spawned has only the import-time datasets; the config's own ones
    # hold the ground truth that the report looks up.
    register_config_datasets(cfg)

    chunks = plan.pending[rank::world_size]
    num_images = sum(len(plan.chunk_range(k)) for k in chunks)
    if chunks:
        model = build_teacher(cfg, plan.weights_path)
        # Rank 0 counts its own images; unit_scale shows the estimate for all ranks.
        with tqdm(
            total=num_images,
            unit="img",
            unit_scale=world_size if world_size > 1 else False,
            desc="pseudo-labeling" + (f" (rank 0 x {world_size})" if world_size > 1 else ""),
            disable=not comm.is_main_process(),
            mininterval=1.0,
        ) as progress:
            label_chunks(cfg, model, plan, chunks, progress)
        logger.info("Rank %d labeled %d images in %d chunks", rank, num_images, len(chunks))
    comm.synchronize()
    if not comm.is_main_process():
        return None
    return merge_and_report(cfg, plan)
