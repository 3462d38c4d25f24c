"""Ablation grids: a YAML file of axes (init, augmentation, labeled fraction, method, seed) and the
base configs, expanded into named runs with the exact command line of each.

A grid file (see ``configs/ablations/``)::

    axes:
      init: [rand, imagenet]            # rand / imagenet / simclr
      augmentation: [S1, S4]            # SSDET.AUGMENT.POLICY
      fraction: [1.0]                   # SSDET.DATA.LABELED_FRACTION (default [1.0])
      method: [supervised, self_training]   # / joint / all_three
      seed: [0, 1]                      # SEED (default [0])
    inits:                              # weights file of each pre-trained init
      imagenet: output/pretrain/mini_supervised/backbone_final.pth
    methods:                            # base config (and extra opts) of each method
      supervised: {config: configs/mini/retinanet_R18_FPN_S1_supervised.yaml}
      self_training: {config: configs/mini/retinanet_R18_FPN_S4_self_train.yaml, opts: []}
    opts: []                            # KEY VALUE pairs added to every run
    value_opts:                         # overrides for one value of an axis
      fraction: {0.2: [SOLVER.MAX_ITER, 18000]}
    subset_seed: 0                      # labeled subset seed: an integer, or "seed" (the run's)
    reuse_teacher: false                # true: a self_training run's teacher is its cell's
                                        # supervised run (SSDET.EXPERIMENT.TEACHER_WEIGHTS)
    pseudo_augment_policy: same         # policy of the pseudo-labeled images: "same" or S1..S4
    exclude:                            # runs matching every key of an entry are dropped
      - {init: simclr, fraction: 0.1}
    eval_dataset: ""                    # results entry to tabulate; "" = the first one
"""

import itertools
import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from detectron2.config import get_cfg

from ssdet.config import add_ssdet_config
from ssdet.data.augment import POLICY_NAMES
from ssdet.utils.errors import InputError

AXES = ("init", "augmentation", "fraction", "method", "seed")


@dataclass(frozen=True)
class Method:
    """How one of the paper's training methods is run.

    Attributes:
        tool: the script under ``tools/`` that runs it.
        opts: config overrides that define the method on top of its base config.
        resumable_by_flag: whether an interrupted run continues with ``--resume`` (train_net);
            self_train continues interrupted stages by itself.
        self_training: whether a student trains on a teacher's pseudo labels (the pseudo-labeled
            images' augmentation policy and the teacher apply).
        needs_pretrained_init: whether the method is defined with a pre-trained backbone only.
        teacher_method: with the grid's ``reuse_teacher``, the method whose run of the same cell
            and seed is this method's teacher (None: the method trains its own teacher).
        seed_keys: config keys set to the run's seed besides SEED: the method's own samplers,
            whose seeds are fixed by default, so that seeds vary its data order too.
    """

    tool: str
    opts: tuple[str, ...] = ()
    resumable_by_flag: bool = False
    self_training: bool = False
    needs_pretrained_init: bool = False
    teacher_method: str | None = None
    seed_keys: tuple[str, ...] = ()


_STUDENT_SEED = "SSDET.SELF_TRAINING.SAMPLER_SEED"
_JOINT_SEED = "SSDET.JOINT.SAMPLER_SEED"
_JOINT = ("SSDET.JOINT.ENABLED", "True")

# The paper's four methods. "all_three" is pre-training + joint training + self-training, so a
# Rand Init run of it is not one of the paper's settings and is left out of every grid; its
# teacher is trained by the experiment itself (with the joint head, as its options apply to every
# stage), never borrowed from the supervised runs.
METHODS = {
    "supervised": Method("train_net.py", resumable_by_flag=True),
    "self_training": Method(
        "self_train.py",
        self_training=True,
        teacher_method="supervised",
        seed_keys=(_STUDENT_SEED,),
    ),
    "joint": Method("train_net.py", _JOINT, resumable_by_flag=True, seed_keys=(_JOINT_SEED,)),
    "all_three": Method(
        "self_train.py",
        _JOINT,
        self_training=True,
        needs_pretrained_init=True,
        seed_keys=(_STUDENT_SEED, _JOINT_SEED),
    ),
}

# Grid init name -> SSDET.INIT value. Rand Init has no weights file.
INITS = {"rand": "RAND", "imagenet": "IMAGENET", "simclr": "SIMCLR"}

# Names used in table rows and captions.
INIT_LABELS = {"rand": "Rand Init", "imagenet": "ImageNet Init", "simclr": "SimCLR Init"}
METHOD_LABELS = {
    "supervised": "supervised",
    "self_training": "self-training",
    "joint": "joint training",
    "all_three": "all three",
}

_GRID_KEYS = {
    "name",
    "axes",
    "inits",
    "methods",
    "opts",
    "value_opts",
    "subset_seed",
    "reuse_teacher",
    "pseudo_augment_policy",
    "exclude",
    "eval_dataset",
}
_METHOD_KEYS = {"config", "opts"}


@dataclass(frozen=True)
class Run:
    """One run of a grid: its axis values, its output folder and its command line.

    Attributes:
        name: readable and unique in the grid, e.g. ``rand_S1_f0.2_supervised_s0``.
        init, augmentation, fraction, method, seed: the run's value on each axis.
        run_dir: the run's OUTPUT_DIR, ``<output>/<name>``.
        tool: path of the script under ``tools/`` that trains it.
        config: the base config file.
        opts: every ``KEY VALUE`` override, in order (later ones win).
        resumable_by_flag: whether ``--resume`` continues it (see :class:`Method`).
        weights: the init's weights file, "" for Rand Init.
        needs: (file, what it is) that must exist before the run starts: the init's weights, the
            reused teacher's checkpoint.
    """

    name: str
    init: str
    augmentation: str
    fraction: float
    method: str
    seed: int
    run_dir: str
    tool: str
    config: str
    opts: tuple[str, ...]
    resumable_by_flag: bool
    weights: str = ""
    needs: tuple[tuple[str, str], ...] = ()

    @property
    def cell(self) -> tuple[str, str, float, str]:
        """The table cell the run belongs to: (init, augmentation, fraction, method)."""
        return (self.init, self.augmentation, self.fraction, self.method)

    def command(
        self, python: str, resume: bool = False, tool_args: Sequence[str] = ()
    ) -> list[str]:
        """The run's command line.

        Args:
            python: the Python interpreter to run the tool with.
            resume: add ``--resume`` (only for tools that take it).
            tool_args: arguments of the tool before the config overrides, e.g.
                ``["--num-gpus", "8"]``.
        """
        cmd = [python, self.tool, "--config", self.config, *tool_args]
        if resume and self.resumable_by_flag:
            cmd.append("--resume")
        return [*cmd, "OUTPUT_DIR", self.run_dir, *self.opts]

    def shell_command(
        self, python: str, resume: bool = False, tool_args: Sequence[str] = ()
    ) -> str:
        """:meth:`command` as one shell-quoted line."""
        return shlex.join(self.command(python, resume, tool_args))


@dataclass
class Grid:
    """A parsed, validated grid file.

    Attributes:
        path: the grid file.
        name: the grid's name (captions), default the file's base name.
        axes: the values of every axis, in the file's order.
        inits: init name -> weights file, for every pre-trained init on the init axis.
        methods: method name -> (base config, extra opts), for every method on the method axis.
        opts: overrides added to every run.
        value_opts: axis -> value -> overrides added to the runs with that value.
        subset_seed: the labeled subset seed of every run, or None to use each run's seed.
        pseudo_augment_policy: policy of the pseudo-labeled images, or None for the run's.
        reuse_teacher: self_training runs load the supervised run of their cell and seed as their
            teacher (SSDET.EXPERIMENT.TEACHER_WEIGHTS) instead of training the same model again.
        exclude: the exclusion entries, axis -> accepted values.
        eval_dataset: the results entry to tabulate ("" = the first one).
    """

    path: str
    name: str
    axes: dict[str, list[Any]]
    inits: dict[str, str]
    methods: dict[str, tuple[str, tuple[str, ...]]]
    opts: tuple[str, ...] = ()
    value_opts: dict[str, dict[Any, tuple[str, ...]]] = field(default_factory=dict)
    subset_seed: int | None = 0
    pseudo_augment_policy: str | None = None
    reuse_teacher: bool = False
    exclude: list[dict[str, list[Any]]] = field(default_factory=list)
    eval_dataset: str = ""

    def runs(self, output_dir: str, tools_dir: str) -> list["Run"]:
        """Expand the grid into its runs: the cartesian product of the axes less exclusions.

        Runs are ordered seed-major (every cell of seed 0, then of seed 1, ...), so that a grid
        stopped part-way has filled as many table cells as possible; with ``reuse_teacher`` the
        supervised runs come first within a seed and fraction, before the students they teach.

        Args:
            output_dir: the grid's output folder; run ``NAME`` writes to ``output_dir/NAME``.
            tools_dir: the folder holding ``train_net.py`` and ``self_train.py``.

        Returns:
            The runs, with unique names.
        """
        methods = list(self.axes["method"])
        if self.reuse_teacher:
            teachers = [m for m in methods if m in {METHODS[n].teacher_method for n in methods}]
            methods = teachers + [m for m in methods if m not in teachers]
        runs = []
        a = self.axes
        for seed, fraction, method, init, aug in itertools.product(
            a["seed"], a["fraction"], methods, a["init"], a["augmentation"]
        ):
            values = {
                "init": init,
                "augmentation": aug,
                "fraction": fraction,
                "method": method,
                "seed": seed,
            }
            if METHODS[method].needs_pretrained_init and init == "rand":
                continue
            if any(_matches(entry, values) for entry in self.exclude):
                continue
            runs.append(self._run(output_dir, tools_dir, values))
        return runs

    def _run(self, output_dir: str, tools_dir: str, values: dict[str, Any]) -> Run:
        init, aug, fraction = values["init"], values["augmentation"], values["fraction"]
        method, seed = values["method"], values["seed"]
        spec = METHODS[method]
        config, method_opts = self.methods[method]
        weights = self.inits.get(init, "")
        needs = []
        # INIT_WEIGHTS is always set: an empty value clears a base config's default weights file
        # (the COCO configs default to ImageNet Init) for Rand Init.
        opts = [*spec.opts, "SSDET.INIT", INITS[init], "SSDET.INIT_WEIGHTS", weights]
        if weights:
            needs.append((weights, f"the {init} init's weights"))
        opts += ["SSDET.AUGMENT.POLICY", aug]
        if spec.self_training:
            pseudo_policy = self.pseudo_augment_policy or aug
            opts += ["SSDET.SELF_TRAINING.PSEUDO_AUGMENT_POLICY", pseudo_policy]
        opts += ["SSDET.DATA.LABELED_FRACTION", repr(float(fraction))]
        subset_seed = seed if self.subset_seed is None else self.subset_seed
        opts += ["SSDET.DATA.SUBSET_SEED", str(subset_seed), "SEED", str(seed)]
        for key in spec.seed_keys:
            opts += [key, str(seed)]
        if spec.teacher_method and self.reuse_teacher:
            teacher = run_name(init, aug, fraction, spec.teacher_method, seed)
            teacher_weights = os.path.join(output_dir, teacher, "model_final.pth")
            opts += ["SSDET.EXPERIMENT.TEACHER_WEIGHTS", teacher_weights]
            needs.append((teacher_weights, f"the teacher, from run {teacher}"))
        for axis in AXES:
            opts += self.value_opts.get(axis, {}).get(values[axis], ())
        opts += [*self.opts, *method_opts]
        return Run(
            name=run_name(init, aug, fraction, method, seed),
            init=init,
            augmentation=aug,
            fraction=float(fraction),
            method=method,
            seed=int(seed),
            run_dir=os.path.join(output_dir, run_name(init, aug, fraction, method, seed)),
            tool=os.path.join(tools_dir, spec.tool),
            config=config,
            opts=tuple(opts),
            resumable_by_flag=spec.resumable_by_flag,
            weights=weights,
            needs=tuple(needs),
        )


def run_name(init: str, augmentation: str, fraction: float, method: str, seed: int) -> str:
    """A run's readable name, e.g. ``rand_S1_f0.2_supervised_s0``; also its folder's name."""
    return f"{init}_{augmentation}_f{format_fraction(fraction)}_{method}_s{seed}"


def format_fraction(fraction: float) -> str:
    """A labeled fraction as it appears in run names and tables: 0.2 -> "0.2", 1 -> "1.0"."""
    text = f"{float(fraction):g}"
    return text if any(c in text for c in ".e") else text + ".0"


def _matches(entry: dict[str, list[Any]], values: dict[str, Any]) -> bool:
    return all(values[axis] in accepted for axis, accepted in entry.items())


def load_grid(path: str) -> Grid:
    """Read and validate a grid file.

    Args:
        path: the YAML grid file.

    Returns:
        The grid. Relative paths in it (configs, weights) are kept as written: they are relative to
        the directory the tool runs in, as with every ssdet tool.

    Raises:
        InputError: a missing or malformed file, an unknown key, axis value or method, a method
            without a base config, a pre-trained init without a weights file, or a base config
            that does not exist.
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
    for method in method_axis:
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
        cfg = get_cfg()
        add_ssdet_config(cfg)
        try:
            cfg.merge_from_file(config)
        except (KeyError, ValueError, AssertionError) as e:
            raise InputError(f"{grid.path}: bad base config {config!r} of {method}: {e}") from e
        exp = cfg.SSDET.EXPERIMENT
        # tools/self_train.py looks the teacher config up next to the experiment config first.
        teacher = exp.TEACHER_CONFIG
        if teacher and not os.path.isabs(teacher):
            beside = os.path.join(os.path.dirname(config), teacher)
            teacher = beside if os.path.isfile(beside) else teacher
        if os.path.realpath(teacher) != os.path.realpath(teacher_base) or exp.TEACHER_OPTS:
            raise InputError(
                f"{grid.path}: reuse_teacher makes the {teacher_method} runs (base config "
                f"{teacher_base}) the teachers of the {method} runs, but "
                f"{config} trains its teacher from "
                f"{exp.TEACHER_CONFIG!r} with TEACHER_OPTS {list(exp.TEACHER_OPTS)}. Set "
                f"reuse_teacher: false, or make the experiment's teacher {teacher_base}."
            )
