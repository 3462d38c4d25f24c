#!/usr/bin/env python
"""Pseudo-label store at ImageNet scale versus the same boxes as a COCO JSON dataset.

    python benchmarks/bench_pseudo_store.py [--num-images 1280000] [--boxes-per-image 8]
        [--json-num-images 100000] [--output benchmarks/results/pseudo_store.json] [--quick]

Builds a synthetic store (the teacher's labels of N images, B boxes each, scores uniform in
[0.05, 1)) with the shard writer and merge_shards, as 8 labeling ranks would, then measures in fresh
processes:

- store: time to open it, to filter it (the paper's score >= 0.5; with class balancing),
  ``dataset[i]`` at random indices (cold: pages faulted in on first touch; warm: steady state),
  and the memory of the main process plus 2 DataLoader workers iterating random indices: PSS from
  /proc/<pid>/smaps_rollup (shared pages counted once, where RSS counts them once per process),
  split into anonymous memory (the filter's index arrays, shared copy-on-write by the workers) and
  file-backed pages of the store mapped into the processes (only its per-image columns: the
  dataset reads boxes, scores, classes and file names with pread, which leaves them in the page
  cache, counted in no process).
- COCO JSON baseline: the same boxes (every box, no filter) exported as a COCO annotation file,
  loaded with Detectron2's ``load_coco_json`` + ``DatasetFromList`` (serialized, as Detectron2's
  train loader does). Loading 1.28M images x 8 boxes of JSON needs more than 20 GB and minutes on a
  small machine, so the JSON side uses ``--json-num-images`` (default 100k) and its time and memory
  are also reported per image and projected linearly to N.

The store side's dataset keeps every box too, so both sides serve identical dicts. Results are
written atomically as JSON, and a table is printed.

The store's checks (``--validation-only`` runs only these, into
benchmarks/results/pseudo_store_validation.json; default 1.28M images x 10 boxes): a store written
column by column (no shard writers, so it builds in seconds), then, in a fresh process, the time
to map it without checks, to open it (mapping + the value checks of
``ssdet.data.pseudo_labels.integrity``) from the page cache (warm: best of 3) and after its files
were dropped from the page cache (cold, ``posix_fadvise(DONTNEED)``), the memory the check adds,
and ``verify_store`` (the checks plus every column's SHA-256).
"""

import argparse
import dataclasses
import gc
import glob
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 80
NUM_RANKS = 8
LOADER_BATCH = 32
LOADER_BATCHES = 1000
ACCESS_SAMPLES = 100_000
# The brief's targets for the store side.
TARGETS = {"open_s": 2.0, "access_us": 50.0, "loader_total_pss_mb": 300.0}
VALIDATION_BOXES_PER_IMAGE = 10


# -------------------------------------------------------------------------------------------------
# Memory of this process and its DataLoader workers
# -------------------------------------------------------------------------------------------------


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _smaps_rollup_kb(pid: int) -> dict[str, int] | None:
    """Pss, Pss_Anon and Pss_File of a process, in kB; None where the kernel lacks smaps_rollup."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split()[:2] for line in f if line.startswith("Pss"))
    except OSError:
        return None
    return {k.rstrip(":"): int(v) for k, v in fields.items()}


def _children(pid: int) -> list[int]:
    children = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(path) as f:
            children += [int(c) for c in f.read().split()]
    return children


def _memory_mb(pids: list[int]) -> dict[str, float | None]:
    """Summed memory of processes, MB. PSS splits into anonymous memory (the real cost) and
    file-backed pages (memory-mapped store columns: shared, and reclaimable page cache)."""
    memory: dict[str, float | None] = {
        "rss_mb": sum(_status_kb(p, "VmRSS") for p in pids) / 1024,
        "rss_anon_mb": sum(_status_kb(p, "RssAnon") for p in pids) / 1024,
    }
    rollups = [_smaps_rollup_kb(p) for p in pids]
    for key, name in (("Pss", "pss_mb"), ("Pss_Anon", "pss_anon_mb"), ("Pss_File", "pss_file_mb")):
        values = [r.get(key) if r else None for r in rollups]
        memory[name] = sum(values) / 1024 if None not in values else None
    return memory


def _identity(batch):
    return batch


def _loader_memory(dataset, seed: int = 0) -> dict[str, float | None]:
    """Main + 2 workers iterating random indices; memory measured while the workers live."""
    import torch

    sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=LOADER_BATCH, sampler=sampler, num_workers=2, collate_fn=_identity
    )
    iterator = iter(loader)
    for _ in range(min(LOADER_BATCHES, len(loader))):
        next(iterator)
    pids = [os.getpid()] + _children(os.getpid())
    memory = _memory_mb(pids)
    memory["num_processes"] = len(pids)
    del iterator
    return memory


def _access_us(dataset, samples: int) -> dict[str, float]:
    """Microseconds per ``dataset[i]`` over random indices: the first pass ("cold": memory-mapped
    pages are faulted into this process on first touch) and the best of 3 more passes over the
    same indices ("warm": the steady state of a long training run; the best pass is the one least
    disturbed by other processes)."""
    indices = np.random.default_rng(0).integers(0, len(dataset), size=samples).tolist()
    times = []
    for _ in range(4):
        start = time.perf_counter()
        for i in indices:
            dataset[i]
        times.append((time.perf_counter() - start) / samples * 1e6)
    return {"cold_us": times[0], "warm_us": min(times[1:])}


# -------------------------------------------------------------------------------------------------
# Measurements, each in a fresh interpreter (so build-time memory does not count)
# -------------------------------------------------------------------------------------------------


def measure_store(store_dir: str, samples: int) -> dict:
    """What a student's loader does: open, filter (keep every box, as the JSON side), iterate."""
    from ssdet.data.pseudo_labels import PseudoLabelDataset, PseudoLabelFilter, PseudoLabelStore

    result = {"baseline_loader": _loader_memory(list(range(LOADER_BATCH * LOADER_BATCHES)))}
    gc.collect()
    result["main_rss_before_mb"] = _status_kb(os.getpid(), "VmRSS") / 1024
    start = time.perf_counter()
    store = PseudoLabelStore.open(store_dir)
    result["open_s"] = time.perf_counter() - start
    start = time.perf_counter()
    dataset = PseudoLabelDataset(PseudoLabelFilter.keep_all().apply(store))
    result["keep_all_dataset_s"] = time.perf_counter() - start
    result["num_images"] = len(dataset)
    result["loader"] = _loader_memory(dataset)
    result["main_peak_rss_mb"] = _status_kb(os.getpid(), "VmHWM") / 1024
    result["access_us"] = _access_us(dataset, samples)
    return result


def measure_filters(store_dir: str, samples: int) -> dict:
    """Time the student's filter settings on the store (``samples`` is unused)."""
    from ssdet.data.pseudo_labels import PseudoLabelFilter, PseudoLabelStore

    store = PseudoLabelStore.open(store_dir)
    filters = {
        "score_0.5": PseudoLabelFilter(),
        "score_0.5_balanced_top_score": PseudoLabelFilter(balance_classes=True),
        "score_0.5_balanced_random": PseudoLabelFilter(
            balance_classes=True, balance_subsample="random"
        ),
        "score_0.5_max20_min8px": PseudoLabelFilter(max_boxes_per_image=20, min_box_size=8),
    }
    result = {}
    for name, pseudo_filter in filters.items():
        start = time.perf_counter()
        selection = pseudo_filter.apply(store)
        result[name] = {
            "seconds": time.perf_counter() - start,
            "boxes": selection.num_kept_boxes,
            "dataset_images": len(selection.image_index),
        }
    return result


def measure_json(json_file: str, samples: int) -> dict:
    from detectron2.data.common import DatasetFromList
    from detectron2.data.datasets import load_coco_json

    result = {"baseline_loader": _loader_memory(list(range(LOADER_BATCH * LOADER_BATCHES)))}
    gc.collect()
    result["main_rss_before_mb"] = _status_kb(os.getpid(), "VmRSS") / 1024
    start = time.perf_counter()
    dicts = load_coco_json(json_file, "", dataset_name="bench_pseudo_json")
    result["load_coco_json_s"] = time.perf_counter() - start
    dataset = DatasetFromList(dicts, copy=False)  # serialize=True: Detectron2's default
    del dicts
    gc.collect()
    result["open_s"] = time.perf_counter() - start
    result["num_images"] = len(dataset)
    result["loader"] = _loader_memory(dataset)
    result["main_peak_rss_mb"] = _status_kb(os.getpid(), "VmHWM") / 1024
    result["access_us"] = _access_us(dataset, samples)
    return result


def _drop_from_page_cache(directory: str) -> None:
    """Evict a store's files from the page cache (clean pages only: the builder fsyncs them)."""
    for name in os.listdir(directory):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure_validation(store_dir: str, samples: int) -> dict:
    """Open a store with and without its value checks, warm and cold (``samples`` is unused)."""
    from ssdet.data.pseudo_labels import PseudoLabelStore, verify_store

    def timed(function) -> float:
        start = time.perf_counter()
        function()
        return time.perf_counter() - start

    # _reopen maps and checks the shapes only: what opening cost before the value checks.
    map_s = min(timed(lambda: PseudoLabelStore._reopen(store_dir)) for _ in range(3))
    rss_before = _status_kb(os.getpid(), "VmRSS") / 1024
    hwm_before = _status_kb(os.getpid(), "VmHWM") / 1024
    _drop_from_page_cache(store_dir)
    cold_s = timed(lambda: PseudoLabelStore.open(store_dir))
    warm = [timed(lambda: PseudoLabelStore.open(store_dir)) for _ in range(3)]
    return {
        "map_only_s": map_s,
        "open_cold_s": cold_s,
        "open_warm_s": min(warm),
        "open_warm_all_s": warm,
        # The check streams the box columns through a few chunk buffers: the process keeps no
        # store pages, and its peak grows by about one chunk's arrays.
        "open_rss_added_mb": _status_kb(os.getpid(), "VmRSS") / 1024 - rss_before,
        "open_peak_rss_added_mb": _status_kb(os.getpid(), "VmHWM") / 1024 - hwm_before,
        "verify_warm_s": timed(lambda: verify_store(store_dir)),
    }


def _run_measurement(kind: str, path: str, samples: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--measure",
            kind,
            path,
            "--samples",
            str(samples),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------------
# Building the synthetic store and the JSON baseline
# -------------------------------------------------------------------------------------------------


def build_store(workdir: str, num_images: int, boxes_per_image: int) -> dict:
    """Label ``num_images`` synthetic images with 8 shard writers and merge them."""
    from ssdet.data.pseudo_labels import LabelingProvenance, PseudoLabelShardWriter, merge_shards

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    shard_paths = []
    for rank in range(NUM_RANKS):
        indices = np.arange(rank, num_images, NUM_RANKS)  # ranks take strided listing entries
        k = len(indices) * boxes_per_image
        xy = rng.uniform(0, 500, size=(k, 2)).astype(np.float32)
        wh = rng.uniform(4, 140, size=(k, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + wh], axis=1).reshape(-1, boxes_per_image, 4)
        scores = rng.uniform(0.05, 1.0, size=k).astype(np.float32).reshape(-1, boxes_per_image)
        classes = rng.integers(0, NUM_CLASSES, size=k).reshape(-1, boxes_per_image)
        writer = PseudoLabelShardWriter(
            os.path.join(workdir, f"shard-{rank}.npz"), NUM_CLASSES, score_floor=0.05
        )
        for j, index in enumerate(indices.tolist()):
            writer.add(
                index,
                f"train/n{index % 1000:08d}/n{index % 1000:08d}_{index}.JPEG",
                480,
                640,
                boxes[j],
                scores[j],
                classes[j],
            )
        shard_paths.append(writer.write())
        del writer
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    store = merge_shards(
        shard_paths,
        os.path.join(workdir, "store"),
        LabelingProvenance(
            class_names=[f"class_{c}" for c in range(NUM_CLASSES)], listing_size=num_images
        ),
    )
    merge_s = time.perf_counter() - start
    for path in shard_paths:
        os.remove(path)
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(store.path, "*")))
    return {
        "shard_write_s": write_s,
        "shard_write_us_per_image": write_s / num_images * 1e6,
        "merge_s": merge_s,
        "store_mb": size / 2**20,
        "path": store.path,
    }


def build_store_columns(workdir: str, num_images: int, boxes_per_image: int) -> dict:
    """A synthetic store of ``num_images`` x ``boxes_per_image`` boxes, written column by column."""
    from ssdet.data.pseudo_labels import LabelingProvenance
    from ssdet.data.pseudo_labels.store import (
        StoreBuilder,
        build_metadata,
        class_dtype,
        encode_strings,
        offsets_from_counts,
    )

    rng = np.random.default_rng(0)
    m = num_images * boxes_per_image
    xy = rng.uniform(0, 500, size=(m, 2)).astype(np.float32)
    wh = rng.uniform(4, 140, size=(m, 2)).astype(np.float32)
    scores = rng.uniform(0.05, 1.0, size=(num_images, boxes_per_image)).astype(np.float32)
    names = [f"train/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG" for i in range(num_images)]
    name_bytes, name_offsets = encode_strings(names)
    path = os.path.join(workdir, "checked_store")
    with StoreBuilder(path, overwrite=True) as builder:
        builder.save("image_offsets", offsets_from_counts(np.full(num_images, boxes_per_image)))
        builder.save("image_ids", np.arange(num_images, dtype=np.int64))
        builder.save("heights", np.full(num_images, 480, np.int32))
        builder.save("widths", np.full(num_images, 640, np.int32))
        builder.save("file_name_offsets", name_offsets)
        builder.save("file_name_bytes", name_bytes)
        builder.save("boxes", np.concatenate([xy, xy + wh], axis=1))
        builder.save("scores", -np.sort(-scores, axis=1).reshape(-1))
        builder.save("classes", rng.integers(0, NUM_CLASSES, m).astype(class_dtype(NUM_CLASSES)))
        metadata = build_metadata(
            LabelingProvenance(class_names=[f"class_{c}" for c in range(NUM_CLASSES)]),
            source="bench_pseudo_store",
            score_floor=0.05,
            num_images=num_images,
            num_boxes=m,
            failed_images=[],
        )
        # Commit checks the values, fsyncs and checksums the columns, then renames.
        start = time.perf_counter()
        builder.commit(metadata)
        commit_s = time.perf_counter() - start
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(path, "*")))
    return {"commit_s": commit_s, "store_mb": size / 2**20, "path": path}


def run_validation(workdir: str, num_images: int, boxes_per_image: int) -> dict:
    print(f"building {num_images:,} images x {boxes_per_image} boxes for the store's checks")
    build = build_store_columns(workdir, num_images, boxes_per_image)
    result = _run_measurement("validation", build.pop("path"), 0)
    result["build"] = build
    result["config"] = {"num_images": num_images, "boxes_per_image": boxes_per_image}
    result["target_met"] = result["open_warm_s"] < TARGETS["open_s"]
    return result


def print_validation(v: dict) -> None:
    c = v["config"]
    print(
        f"store checks at {c['num_images']:,} images x {c['boxes_per_image']} boxes "
        f"({v['build']['store_mb']:.0f} MB): open {v['open_warm_s']:.2f} s warm, "
        f"{v['open_cold_s']:.2f} s cold (map only {v['map_only_s'] * 1e3:.1f} ms); verify "
        f"(+ SHA-256) {v['verify_warm_s']:.2f} s; commit {v['build']['commit_s']:.2f} s; "
        f"peak RSS +{v['open_peak_rss_added_mb']:.0f} MB; open < {TARGETS['open_s']} s: "
        f"{v['target_met']}"
    )


def build_json(workdir: str, store_dir: str, num_images: int) -> dict:
    """Export the first ``num_images`` images of the store, every box, as COCO annotations."""
    from ssdet.data.pseudo_labels import (
        PseudoLabelFilter,
        PseudoLabelStore,
        export_coco_annotations,
    )

    store = PseudoLabelStore.open(store_dir)
    selection = PseudoLabelFilter.keep_all().apply(store)
    selection = dataclasses.replace(selection, image_index=np.arange(num_images, dtype=np.int64))
    path = os.path.join(workdir, "pseudo_labels_coco.json")
    start = time.perf_counter()
    export_coco_annotations(selection, path)
    return {
        "export_s": time.perf_counter() - start,
        "json_mb": os.path.getsize(path) / 2**20,
        "path": path,
    }


# -------------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------------


def _data_mb(side: dict, key: str) -> float | None:
    """Memory of main + workers attributable to the data: the loader over the dataset minus the
    same loader over ``range(n)`` in the same process (the import baseline: torch, Detectron2)."""
    total, base = side["loader"][key], side["baseline_loader"][key]
    return None if total is None or base is None else total - base


def _memory_ratio(a: float | None, b: float | None) -> float | None:
    # Memory differences of a few MB are noise (page cache, allocator); no ratio of those.
    return a / b if a is not None and b is not None and a > 1 and b > 1 else None


def summarize(store: dict, js: dict, num_images: int) -> dict:
    """Project the JSON side linearly to the store's N and compare."""
    scale = num_images / js["num_images"]
    projected = {
        "open_s": js["open_s"] * scale,
        "loader_data_pss_mb": (_data_mb(js, "pss_mb") or 0.0) * scale,
        "loader_data_pss_anon_mb": (_data_mb(js, "pss_anon_mb") or 0.0) * scale,
        "main_peak_rss_mb": js["main_rss_before_mb"]
        + (js["main_peak_rss_mb"] - js["main_rss_before_mb"]) * scale,
    }
    store_peak_data = store["main_peak_rss_mb"] - store["main_rss_before_mb"]
    ratios = {
        "open_time_json_projected_over_store": projected["open_s"] / store["open_s"],
        "access_time_warm_json_over_store": js["access_us"]["warm_us"]
        / store["access_us"]["warm_us"],
        "access_time_cold_json_over_store": js["access_us"]["cold_us"]
        / store["access_us"]["cold_us"],
        "loader_data_pss_json_projected_over_store": _memory_ratio(
            projected["loader_data_pss_mb"], _data_mb(store, "pss_mb")
        ),
        "loader_data_pss_anon_json_projected_over_store": _memory_ratio(
            projected["loader_data_pss_anon_mb"], _data_mb(store, "pss_anon_mb")
        ),
        "main_peak_data_rss_json_projected_over_store": _memory_ratio(
            projected["main_peak_rss_mb"] - js["main_rss_before_mb"], store_peak_data
        ),
    }
    checks = {
        "open_s": store["open_s"] < TARGETS["open_s"],
        "access_us (warm)": store["access_us"]["warm_us"] < TARGETS["access_us"],
        # The import baseline alone (three processes with torch and Detectron2) exceeds 300 MB, so
        # the target is checked on what the data adds; the absolute PSS is in the results.
        "loader_total_pss_mb (data part)": (_data_mb(store, "pss_mb") or math.inf)
        < TARGETS["loader_total_pss_mb"],
    }
    return {"json_projected_to_num_images": projected, "ratios": ratios, "targets_met": checks}


def print_table(results: dict) -> None:
    s, j = results["store"], results["json"]
    n, nj = s["num_images"], j["num_images"]
    proj = results["summary"]["json_projected_to_num_images"]

    def mb(x):
        return "n/a" if x is None else f"{x:,.0f}"

    rows = [
        ("images", f"{n:,}", f"{nj:,}", f"{n:,} (projected)"),
        ("open (s)", f"{s['open_s']:.3f}", f"{j['open_s']:.1f}", f"{proj['open_s']:.0f}"),
        (
            "dataset[i] warm (us)",
            f"{s['access_us']['warm_us']:.1f}",
            f"{j['access_us']['warm_us']:.1f}",
            "",
        ),
        (
            "dataset[i] cold (us)",
            f"{s['access_us']['cold_us']:.1f}",
            f"{j['access_us']['cold_us']:.1f}",
            "",
        ),
        (
            "loader main+2 workers PSS (MB)",
            mb(s["loader"]["pss_mb"]),
            mb(j["loader"]["pss_mb"]),
            "",
        ),
        (
            "  import baseline (MB)",
            mb(s["baseline_loader"]["pss_mb"]),
            mb(j["baseline_loader"]["pss_mb"]),
            "",
        ),
        (
            "  data (MB)",
            mb(_data_mb(s, "pss_mb")),
            mb(_data_mb(j, "pss_mb")),
            mb(proj["loader_data_pss_mb"]),
        ),
        (
            "    anonymous (MB)",
            mb(_data_mb(s, "pss_anon_mb")),
            mb(_data_mb(j, "pss_anon_mb")),
            mb(proj["loader_data_pss_anon_mb"]),
        ),
        (
            "    file-backed mmap (MB)",
            mb(_data_mb(s, "pss_file_mb")),
            mb(_data_mb(j, "pss_file_mb")),
            "",
        ),
        (
            "loader main+2 workers RSS (MB)",
            mb(s["loader"]["rss_mb"]),
            mb(j["loader"]["rss_mb"]),
            "",
        ),
        (
            "main peak RSS (MB)",
            mb(s["main_peak_rss_mb"]),
            mb(j["main_peak_rss_mb"]),
            mb(proj["main_peak_rss_mb"]),
        ),
    ]
    header = ("", "store", "COCO JSON", "JSON at N")
    width = [max(len(r[k]) for r in rows + [header]) for k in range(4)]
    for row in [header] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, width, strict=True)))
    print()
    for name, kept in s["filters"].items():
        print(
            f"filter {name}: {kept['seconds']:.2f} s ({kept['boxes']:,} boxes, "
            f"{kept['dataset_images']:,} dataset images)"
        )
    b = results["build"]
    print(
        f"build: shard writers {b['shard_write_s']:.0f} s ({b['shard_write_us_per_image']:.1f} "
        f"us/image), merge {b['merge_s']:.1f} s, store {b['store_mb']:.0f} MB"
    )
    for name, value in results["summary"]["ratios"].items():
        print(f"{name}: " + ("n/a (difference within noise)" if value is None else f"{value:.1f}x"))
    print("targets met:", results["summary"]["targets_met"])
    print_validation(results["validation"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--num-images", type=int, default=1_280_000)
    parser.add_argument("--boxes-per-image", type=int, default=8)
    parser.add_argument("--json-num-images", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=ACCESS_SAMPLES, help="random accesses timed")
    parser.add_argument("--output", help="default benchmarks/results/pseudo_store.json")
    parser.add_argument(
        "--workdir", help="where to build the data (default: a temporary directory)"
    )
    parser.add_argument("--quick", action="store_true", help="20k images, 5k for the JSON side")
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="only the store's checks, at --num-images x 10 boxes (default output "
        "benchmarks/results/pseudo_store_validation.json)",
    )
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        kind, path = args.measure
        measure = {
            "store": measure_store,
            "filters": measure_filters,
            "json": measure_json,
            "validation": measure_validation,
        }[kind]
        print(json.dumps(measure(path, args.samples)))
        return 0

    if args.quick:
        args.num_images, args.json_num_images, args.samples = 20_000, 5_000, 20_000
    args.json_num_images = min(args.json_num_images, args.num_images)
    from ssdet.utils.io import atomic_write_json

    results_dir = os.path.join(REPO, "benchmarks", "results")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_pseudo_store-")
    os.makedirs(workdir, exist_ok=True)
    if args.validation_only:
        try:
            validation = run_validation(workdir, args.num_images, VALIDATION_BOXES_PER_IMAGE)
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        validation["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
        output = args.output or os.path.join(results_dir, "pseudo_store_validation.json")
        atomic_write_json(output, validation)
        print_validation(validation)
        print(f"written to {output}")
        return 0
    try:
        validation = run_validation(workdir, args.num_images, VALIDATION_BOXES_PER_IMAGE)
        print(f"building {args.num_images:,} images x {args.boxes_per_image} boxes in {workdir}")
        build = build_store(workdir, args.num_images, args.boxes_per_image)
        build.update(
            {
                f"json_{k}": v
                for k, v in build_json(workdir, build["path"], args.json_num_images).items()
            }
        )
        print("measuring the store")
        store = _run_measurement("store", build["path"], args.samples)
        store["filters"] = _run_measurement("filters", build["path"], args.samples)
        print(f"measuring the COCO JSON baseline ({args.json_num_images:,} images)")
        js = _run_measurement("json", build["json_path"], args.samples)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    results = {
        "config": {
            "num_images": args.num_images,
            "boxes_per_image": args.boxes_per_image,
            "json_num_images": args.json_num_images,
            "access_samples": args.samples,
            "loader": {"num_workers": 2, "batch_size": LOADER_BATCH, "batches": LOADER_BATCHES},
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "targets": TARGETS,
        "build": {k: v for k, v in build.items() if not k.endswith("path")},
        "store": store,
        "json": js,
        "summary": summarize(store, js, args.num_images),
        "validation": validation,
    }
    output = args.output or os.path.join(results_dir, "pseudo_store.json")
    atomic_write_json(output, results)
    print_table(results)
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
