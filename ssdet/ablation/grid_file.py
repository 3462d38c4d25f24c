"""Reading and checking a grid file (the format: :mod:`ssdet.ablation.grid`)."""

import os
from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from ssdet.ablation.grid import (
    AXES,
    INITS,
    METHODS,
    Grid,
    format_fraction,
    load_run_config,
    trains_teacher_as,
)
from ssdet.data.augment import POLICY_NAMES
from ssdet.utils.errors import InputError

__all__ = ["load_grid"]


_GRID_KEYS = {
    "name",
    "axes",
    "inits",
    "methods",
    "opts",
    "value_opts",
    "subset_seed",
    "reuse_teacher",
    "control_reuses_supervised",
    "pseudo_augment_policy",
    "exclude",
    "eval_dataset",
}


_METHOD_KEYS = {"config", "opts"}


def load_grid(path: str) -> Grid:
    """Read and validate a grid file.

    Args:
        path: the YAML grid file.

    Returns:
        The grid. Relative paths in it (configs, weights) are kept as written: they are relative to
        the directory the tool runs in, as with every ssdet tool.

    Raises:
        InputError: a missing or malformed file, an unknown key, axis value or method, a method
            without a base config (or, for the control, with one), a pre-trained init without a
            weights file, a base config that does not exist, or a control without the methods
            it is built from.
    """
    if not os.path.isfile(path):
        raise InputError(f"Grid file {path!r} not found (see configs/ablations/).")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise InputError(f"Grid file {path!r} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise InputError(f"Grid file {path!r} must be a YAML mapping (see configs/ablations/).")
    _check_keys(raw, _GRID_KEYS, f"grid file {path!r}")

    axes = _parse_axes(raw.get("axes"), path)
    inits = _parse_inits(raw.get("inits") or {}, axes["init"], path)
    methods = _parse_methods(raw.get("methods"), axes["method"], path)
    subset_seed = raw.get("subset_seed", 0)
    if subset_seed == "seed":
        subset_seed = None
    elif not isinstance(subset_seed, int) or isinstance(subset_seed, bool):
        raise InputError(
            f"{path}: subset_seed must be an integer (one labeled subset for every seed) or "
            f'"seed" (each run draws its subset with its own seed), got {subset_seed!r}.'
        )
    pseudo_policy = raw.get("pseudo_augment_policy", "same")
    if pseudo_policy == "same":
        pseudo_policy = None
    elif pseudo_policy not in POLICY_NAMES:
        raise InputError(
            f"{path}: pseudo_augment_policy must be 'same' or one of {', '.join(POLICY_NAMES)}, "
            f"got {pseudo_policy!r}."
        )
    reuse_teacher = raw.get("reuse_teacher", False)
    if not isinstance(reuse_teacher, bool):
        raise InputError(f"{path}: reuse_teacher must be true or false, got {reuse_teacher!r}.")
    for method in axes["method"] if reuse_teacher else ():
        teacher_method = METHODS[method].teacher_method
        if teacher_method and teacher_method not in axes["method"]:
            raise InputError(
                f"{path}: reuse_teacher needs the {teacher_method} method on the method axis: "
                f"the {teacher_method} run of each cell is the teacher of its {method} run."
            )
    control_reuses_supervised = raw.get("control_reuses_supervised", True)
    if not isinstance(control_reuses_supervised, bool):
        raise InputError(
            f"{path}: control_reuses_supervised must be true or false, got "
            f"{control_reuses_supervised!r}."
        )
    for method in axes["method"]:
        control_of = METHODS[method].control_of
        wanted = [control_of, METHODS[control_of].teacher_method] if control_of else []
        missing = [m for m in wanted if m not in axes["method"]]
        if missing:
            raise InputError(
                f"{path}: the {method} method needs {' and '.join(missing)} on the method axis: "
                f"each {method} run is the {wanted[1]} config trained for as many steps as the "
                f"student of the {control_of} run of its cell, and is compared with both."
            )
    eval_dataset = raw.get("eval_dataset") or ""
    if not isinstance(eval_dataset, str):
        raise InputError(f"{path}: eval_dataset must be a dataset name, got {eval_dataset!r}.")
    grid = Grid(
        path=path,
        name=str(raw.get("name") or os.path.splitext(os.path.basename(path))[0]),
        axes=axes,
        inits=inits,
        methods=methods,
        opts=_parse_opts(raw.get("opts"), f"{path}: opts"),
        value_opts=_parse_value_opts(raw.get("value_opts") or {}, axes, path),
        subset_seed=subset_seed,
        pseudo_augment_policy=pseudo_policy,
        reuse_teacher=reuse_teacher,
        control_reuses_supervised=control_reuses_supervised,
        exclude=_parse_exclude(raw.get("exclude") or [], axes, path),
        eval_dataset=eval_dataset,
    )
    if reuse_teacher:
        _check_reused_teacher(grid)
    if not grid.runs("", ""):
        raise InputError(
            f"{path}: the grid has no runs: the exclusions (and all_three, which needs a "
            "pre-trained init) remove every combination of the axes."
        )
    return grid


def _check_keys(mapping: dict, allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(map(str, mapping)) - set(allowed))
    if unknown:
        raise InputError(
            f"Unknown key(s) {', '.join(unknown)} in {where}; "
            f"valid keys: {', '.join(sorted(allowed))}."
        )


def _as_list(value: Any, where: str) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise InputError(f"{where} is empty: give at least one value.")
    if len(set(map(str, values))) != len(values):
        raise InputError(f"{where} lists a value twice: {values}.")
    return values


def _parse_axes(raw: Any, path: str) -> dict[str, list[Any]]:
    if not isinstance(raw, dict):
        raise InputError(
            f"{path}: 'axes' must map each axis ({', '.join(AXES)}) to its values, got {raw!r}."
        )
    _check_keys(raw, AXES, f"{path}: axes")
    for required in ("init", "augmentation", "method"):
        if required not in raw:
            raise InputError(f"{path}: axes.{required} is missing; list its values.")
    axes = {
        axis: _as_list(raw.get(axis, default), f"{path}: axes.{axis}")
        for axis, default in (
            ("init", None),
            ("augmentation", None),
            ("fraction", [1.0]),
            ("method", None),
            ("seed", [0]),
        )
    }
    _check_values(axes["init"], INITS, f"{path}: axes.init")
    _check_values(axes["augmentation"], POLICY_NAMES, f"{path}: axes.augmentation")
    _check_values(axes["method"], METHODS, f"{path}: axes.method")
    for f in axes["fraction"]:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise InputError(f"{path}: axes.fraction values must be numbers in (0, 1], got {f!r}.")
    for s in axes["seed"]:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise InputError(f"{path}: axes.seed values must be integers >= 0, got {s!r}.")
    if len({format_fraction(f) for f in axes["fraction"]}) != len(axes["fraction"]):
        raise InputError(f"{path}: axes.fraction lists a value twice: {axes['fraction']}.")
    return axes


def _check_values(values: Sequence[Any], valid: Iterable[str], where: str) -> None:
    valid = list(valid)
    for v in values:
        if v not in valid:
            raise InputError(f"{where}: unknown value {v!r}; valid values: {', '.join(valid)}.")


def _parse_inits(raw: Any, init_axis: list[str], path: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise InputError(f"{path}: 'inits' must map init names to weights files, got {raw!r}.")
    _check_values(list(raw), INITS, f"{path}: inits")
    if raw.get("rand"):
        raise InputError(f"{path}: inits.rand must be empty: Rand Init has no weights file.")
    inits = {}
    for init in init_axis:
        if init == "rand":
            continue
        weights = raw.get(init)
        if not isinstance(weights, str) or not weights:
            raise InputError(
                f"{path}: init {init!r} is on the init axis but inits.{init} does not name its "
                "weights file (the backbone checkpoint the run starts from)."
            )
        inits[init] = weights
    return inits


def _parse_methods(
    raw: Any, method_axis: list[str], path: str
) -> dict[str, tuple[str, tuple[str, ...]]]:
    if not isinstance(raw, dict):
        raise InputError(
            f"{path}: 'methods' must map each method to its base config, "
            f"e.g. methods: {{supervised: {{config: configs/...yaml}}}}; got {raw!r}."
        )
    _check_values(list(raw), METHODS, f"{path}: methods")
    methods = {}
    for method in raw:
        if METHODS[method].control_of:
            raise InputError(
                f"{path}: methods.{method}: the {method} method has no base config or opts of "
                f"its own: it is built from the {METHODS[method].control_of} and supervised "
                "methods' (see ssdet/ablation/grid.py); remove the entry."
            )
    for method in method_axis:
        if METHODS[method].control_of:
            continue
        spec = raw.get(method)
        if not isinstance(spec, dict) or not spec.get("config"):
            raise InputError(
                f"{path}: method {method!r} is on the method axis but methods.{method}.config "
                "does not name its base config."
            )
        _check_keys(spec, _METHOD_KEYS, f"{path}: methods.{method}")
        config = spec["config"]
        if not os.path.isfile(config):
            raise InputError(
                f"{path}: base config {config!r} of method {method!r} not found (paths are "
                "relative to the directory ablate.py runs in, normally the repository root)."
            )
        methods[method] = (config, _parse_opts(spec.get("opts"), f"{path}: methods.{method}.opts"))
    return methods


def _parse_opts(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) % 2:
        raise InputError(f"{where} must be a list of KEY, VALUE pairs, got {raw!r}.")
    return tuple(str(v) for v in raw)


def _parse_exclude(raw: Any, axes: dict[str, list[Any]], path: str) -> list[dict[str, list[Any]]]:
    if not isinstance(raw, list):
        raise InputError(f"{path}: 'exclude' must be a list of {{axis: value(s)}} entries.")
    entries = []
    for entry in raw:
        if not isinstance(entry, dict) or not entry:
            raise InputError(
                f"{path}: each exclude entry maps axes to values, e.g. {{init: rand, "
                f"method: joint}}; got {entry!r}."
            )
        _check_keys(entry, AXES, f"{path}: exclude entry {entry!r}")
        parsed = {}
        for axis, value in entry.items():
            values = value if isinstance(value, list) else [value]
            for v in values:
                if v not in axes[axis]:
                    raise InputError(
                        f"{path}: exclude entry {entry!r}: {v!r} is not on axis {axis} "
                        f"({axes[axis]})."
                    )
            parsed[axis] = values
        entries.append(parsed)
    return entries


def _parse_value_opts(
    raw: Any, axes: dict[str, list[Any]], path: str
) -> dict[str, dict[Any, tuple[str, ...]]]:
    if not isinstance(raw, dict):
        raise InputError(
            f"{path}: 'value_opts' must map an axis to {{value: [KEY, VALUE, ...]}}, got {raw!r}."
        )
    _check_keys(raw, AXES, f"{path}: value_opts")
    parsed = {}
    for axis, by_value in raw.items():
        if not isinstance(by_value, dict):
            raise InputError(f"{path}: value_opts.{axis} must map values to opts lists.")
        for value in by_value:
            if value not in axes[axis]:
                raise InputError(
                    f"{path}: value_opts.{axis}: {value!r} is not on axis {axis} ({axes[axis]})."
                )
        parsed[axis] = {
            v: _parse_opts(opts, f"{path}: value_opts.{axis}.{v}") for v, opts in by_value.items()
        }
    return parsed


def _check_reused_teacher(grid: Grid) -> None:
    """With ``reuse_teacher``, each self-training experiment's own teacher must be the supervised
    base config without teacher-only overrides: otherwise reusing the supervised run would
    silently change the experiment."""
    for method, (config, _) in grid.methods.items():
        teacher_method = METHODS[method].teacher_method
        if not teacher_method:
            continue
        teacher_base = grid.methods[teacher_method][0]
        cfg = load_run_config(config, (), f"{grid.path}: base config of {method}")
        exp = cfg.SSDET.EXPERIMENT
        if not trains_teacher_as(config, exp, teacher_base):
            raise InputError(
                f"{grid.path}: reuse_teacher makes the {teacher_method} runs (base config "
                f"{teacher_base}) the teachers of the {method} runs, but "
                f"{config} trains its teacher from "
                f"{exp.TEACHER_CONFIG!r} with TEACHER_OPTS {list(exp.TEACHER_OPTS)}. Set "
                f"reuse_teacher: false, or make the experiment's teacher {teacher_base}."
            )
