"""Ablation grids: a YAML file of axes (init, augmentation, labeled fraction, method, seed) and the
base configs, expanded into named runs with the exact command line of each.

A grid file (see ``configs/ablations/``)::

    axes:
      init: [rand, imagenet]            # rand / imagenet / simclr
      augmentation: [S1, S4]            # SSDET.AUGMENT.POLICY
      fraction: [1.0]                   # SSDET.DATA.LABELED_FRACTION (default [1.0])
      method: [supervised, self_training]   # / joint / all_three / control
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
    control_reuses_supervised: true     # a control that is the same computation as its cell's
                                        # supervised run takes that run's results (see below)
    pseudo_augment_policy: same         # policy of the pseudo-labeled images: "same" or S1..S4
    exclude:                            # runs matching every key of an entry are dropped
      - {init: simclr, fraction: 0.1}
    eval_dataset: ""                    # results entry to tabulate; "" = the first one

The ``control`` method is the equal-compute control of the ``self_training`` runs: one
``tools/train_net.py`` run per self-training run (same init, policy, fraction and seed), which
trains as many steps as that run's student on human-labeled data only. It has no ``methods``
entry (its config is the supervised method's, its schedule the student's) and needs
``supervised`` and ``self_training`` on the method axis. The student's schedule is read from the
self-training run's config (its experiment config with all of the run's opts: the method's, the
grid's ``opts`` and ``value_opts``). By the student's ``SSDET.EXPERIMENT.STUDENT_INIT``:

- ``config`` (the paper's: the student starts from its own init): the supervised run of the cell
  with ``SOLVER.MAX_ITER`` set to the student's. The supervised config keeps its own optimizer
  settings (learning rate, warmup, ``SOLVER.STEPS``: a multi-step schedule is not stretched), so
  the control differs from the supervised run in its step count only. When the step counts are
  equal the control is the supervised run itself: with ``control_reuses_supervised`` (the
  default) it is not run and takes that run's results (the run's ``results_from``).
- ``teacher`` (the student fine-tunes its teacher): the "continuation", the teacher trained on:
  the supervised config from the teacher's final weights (``MODEL.WEIGHTS``; ``SSDET.INIT RAND``
  and no ``INIT_WEIGHTS``, as the student's stage does) with the student's ``SOLVER`` (every key
  the student's differs in: ``MAX_ITER``, ``BASE_LR``, ``WARMUP_ITERS``, ``IMS_PER_BATCH``, ...).
  Its teacher is the self-training run's: the reused supervised run (``reuse_teacher``), else the
  experiment's own ``TEACHER_WEIGHTS``, else the teacher stage inside the self-training run's
  folder (then the experiment's teacher must be the supervised config, without
  ``TEACHER_OPTS``); the control waits for it. One round only (``SSDET.EXPERIMENT.ROUNDS`` 1):
  a later round's student continues a self-trained student, which no control reproduces.

``value_opts: {method: {control: [...]}}`` are applied to the control last.
"""

import itertools
import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from detectron2.config import CfgNode

from ssdet.data.augment import POLICY_NAMES
from ssdet.engine.defaults import load_cfg
from ssdet.utils.errors import InputError
from ssdet.utils.run_dir import MODEL_FINAL, TEACHER_STAGE

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
        control_of: the method whose runs this method is the equal-compute control of (None:
            not a control). A control has no base config of its own: each of its runs is built
            from the runs of that method and of its teacher method in the same cell and seed
            (see the module docstring).
    """

    tool: str
    opts: tuple[str, ...] = ()
    resumable_by_flag: bool = False
    self_training: bool = False
    needs_pretrained_init: bool = False
    teacher_method: str | None = None
    seed_keys: tuple[str, ...] = ()
    control_of: str | None = None


_STUDENT_SEED = "SSDET.SELF_TRAINING.SAMPLER_SEED"
_JOINT_SEED = "SSDET.JOINT.SAMPLER_SEED"
_JOINT = ("MODEL.META_ARCHITECTURE", "JointRetinaNet")

# The paper's four methods, and the equal-compute control of self-training (an effect of
# self-training counts against the supervised model trained as many steps as the student).
# "all_three" is pre-training + joint training + self-training, so a Rand Init run of it is not
# one of the paper's settings and is left out of every grid; its teacher is trained by the
# experiment itself (with the joint head, as its options apply to every stage), never borrowed
# from the supervised runs.
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
    "control": Method("train_net.py", resumable_by_flag=True, control_of="self_training"),
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
    "control": "equal-compute control",
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
    "control_reuses_supervised",
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
        results_from: the name of the run whose results this run takes, "" for none: a control
            that is the same computation as that run. Such a run is never started.
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
    results_from: str = ""

    @property
    def results_dir(self) -> str:
        """The folder of the run's ``final_metrics.json``: its own, or that of ``results_from``."""
        if not self.results_from:
            return self.run_dir
        return os.path.join(os.path.dirname(self.run_dir), self.results_from)

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
        control_reuses_supervised: a control run that is the same computation as the supervised
            run of its cell and seed takes that run's results instead of running again.
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
    control_reuses_supervised: bool = True
    exclude: list[dict[str, list[Any]]] = field(default_factory=list)
    eval_dataset: str = ""

    def runs(self, output_dir: str, tools_dir: str) -> list["Run"]:
        """Expand the grid into its runs: the cartesian product of the axes less exclusions.

        Runs are ordered seed-major (every cell of seed 0, then of seed 1, ...), so that a grid
        stopped part-way has filled as many table cells as possible; within a seed and fraction,
        the runs whose output a method's runs need come first: the supervised runs before the
        students they teach (``reuse_teacher``), the self-training runs before their controls.

        Args:
            output_dir: the grid's output folder; run ``NAME`` writes to ``output_dir/NAME``.
            tools_dir: the folder holding ``train_net.py`` and ``self_train.py``.

        Returns:
            The runs, with unique names.

        Raises:
            InputError: a control whose self-training run's config does not load, has an unknown
                STUDENT_INIT, or whose student continues its teacher for more than one round or
                a teacher that the supervised config does not train.
        """
        runs = []
        a = self.axes
        for seed, fraction, method, init, aug in itertools.product(
            a["seed"], a["fraction"], self._method_order(), a["init"], a["augmentation"]
        ):
            values = {
                "init": init,
                "augmentation": aug,
                "fraction": fraction,
                "method": method,
                "seed": seed,
            }
            if self._included(values):
                runs.append(self._run(output_dir, tools_dir, values))
        return runs

    def _method_order(self) -> list[str]:
        """The method axis in run order: each method after those whose runs its runs need."""

        def needed(method: str) -> list[str]:
            spec = METHODS[method]
            if spec.control_of:
                return [METHODS[spec.control_of].teacher_method, spec.control_of]
            return [spec.teacher_method] if spec.teacher_method and self.reuse_teacher else []

        order: list[str] = []

        def place(method: str) -> None:
            if method in order or method not in self.axes["method"]:
                return
            for other in needed(method):
                place(other)
            order.append(method)

        for method in self.axes["method"]:
            place(method)
        return order

    def _included(self, values: dict[str, Any]) -> bool:
        """Whether the grid has the run of these axis values."""
        spec = METHODS[values["method"]]
        if spec.needs_pretrained_init and values["init"] == "rand":
            return False
        if any(_matches(entry, values) for entry in self.exclude):
            return False
        # A control exists for each self-training run, not for an excluded one.
        return not spec.control_of or self._included({**values, "method": spec.control_of})

    def _run(self, output_dir: str, tools_dir: str, values: dict[str, Any]) -> Run:
        if METHODS[values["method"]].control_of:
            return self._control_run(output_dir, tools_dir, values)
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
            teacher_weights = os.path.join(output_dir, teacher, MODEL_FINAL)
            opts += ["SSDET.EXPERIMENT.TEACHER_WEIGHTS", teacher_weights]
            needs.append((teacher_weights, f"the teacher, from run {teacher}"))
        for axis in AXES:
            opts += self.value_opts.get(axis, {}).get(values[axis], ())
        opts += [*self.opts, *method_opts]
        name = run_name(init, aug, fraction, method, seed)
        return Run(
            name=name,
            init=init,
            augmentation=aug,
            fraction=float(fraction),
            method=method,
            seed=int(seed),
            run_dir=os.path.join(output_dir, name),
            tool=os.path.join(tools_dir, spec.tool),
            config=config,
            opts=tuple(opts),
            resumable_by_flag=spec.resumable_by_flag,
            weights=weights,
            needs=tuple(needs),
        )

    def _control_run(self, output_dir: str, tools_dir: str, values: dict[str, Any]) -> Run:
        """The equal-compute control of the self-training run of these axis values (see the
        module docstring): the supervised run's command, with the student's steps."""
        spec = METHODS[values["method"]]
        student = self._run(output_dir, tools_dir, {**values, "method": spec.control_of})
        supervised_values = {**values, "method": METHODS[spec.control_of].teacher_method}
        supervised = self._run(output_dir, tools_dir, supervised_values)
        student_cfg = self._load(student.config, student.opts, f"run {student.name}")
        supervised_cfg = self._load(supervised.config, supervised.opts, f"run {supervised.name}")
        exp = student_cfg.SSDET.EXPERIMENT
        name = run_name(*(values[axis] for axis in AXES))
        weights, needs = supervised.weights, supervised.needs
        start = []
        if exp.STUDENT_INIT == "teacher":
            if exp.ROUNDS != 1:
                raise InputError(
                    f"{self.path}: run {name} would be the control of {student.name}, whose "
                    f"student fine-tunes its teacher for {exp.ROUNDS} rounds "
                    "(SSDET.EXPERIMENT.ROUNDS): its last teacher is a self-trained student, which "
                    "no supervised run continues. Use one round, or leave control off the "
                    "method axis."
                )
            if not exp.TEACHER_WEIGHTS and not _trains_teacher_as(
                student.config, exp, supervised.config
            ):
                raise InputError(
                    f"{self.path}: run {name} would continue the teacher of {student.name} with "
                    f"the supervised config {supervised.config}, but {student.config} trains "
                    f"its teacher from {exp.TEACHER_CONFIG!r} with TEACHER_OPTS "
                    f"{list(exp.TEACHER_OPTS)}. Make the experiment's teacher "
                    f"{supervised.config}, or leave control off the method axis."
                )
            teacher, need = self._teacher_of(student, exp)
            # As the student's stage: the whole teacher, without the backbone init on top of it.
            start = ["SSDET.INIT", "RAND", "SSDET.INIT_WEIGHTS", "", "MODEL.WEIGHTS", teacher]
            schedule = _differing_opts(student_cfg.SOLVER, supervised_cfg.SOLVER, "SOLVER.")
            weights, needs = "", need
        elif exp.STUDENT_INIT == "config":
            schedule = []
        else:
            raise InputError(
                f"{self.path}: run {student.name} has an unknown SSDET.EXPERIMENT.STUDENT_INIT "
                f"{exp.STUDENT_INIT!r}; valid: config, teacher."
            )
        # The step count is what the control equalizes: always named, even where the supervised
        # config has it already.
        if "SOLVER.MAX_ITER" not in schedule[::2]:
            schedule += ["SOLVER.MAX_ITER", str(student_cfg.SOLVER.MAX_ITER)]
        opts = _overridden(supervised.opts, [*start, *schedule])
        opts += self.value_opts.get("method", {}).get(values["method"], ())
        # The supervised run of the cell is the same computation when the control's config is
        # its config (OUTPUT_DIR aside, which the command sets).
        same = (
            self.control_reuses_supervised
            and self._included(supervised_values)
            and self._load(supervised.config, opts, f"run {name}") == supervised_cfg
        )
        return Run(
            name=name,
            init=values["init"],
            augmentation=values["augmentation"],
            fraction=float(values["fraction"]),
            method=values["method"],
            seed=int(values["seed"]),
            run_dir=os.path.join(output_dir, name),
            tool=os.path.join(tools_dir, spec.tool),
            config=supervised.config,
            opts=tuple(opts),
            resumable_by_flag=spec.resumable_by_flag,
            weights=weights,
            needs=needs,
            results_from=supervised.name if same else "",
        )

    def _teacher_of(self, student: Run, exp: CfgNode) -> tuple[str, tuple[tuple[str, str], ...]]:
        """The teacher checkpoint of a self-training run, and what the run that continues it
        needs: the reused supervised run's model, the experiment's own checkpoint, or the
        teacher stage's model inside the self-training run's folder."""
        if exp.TEACHER_WEIGHTS:
            teacher = exp.TEACHER_WEIGHTS
            reused = tuple(need for need in student.needs if need[0] == teacher)
            if reused or "://" in teacher:  # a URL is fetched by the tool, not checked here
                return teacher, reused
            return teacher, ((teacher, "the teacher (SSDET.EXPERIMENT.TEACHER_WEIGHTS)"),)
        teacher = os.path.join(student.run_dir, TEACHER_STAGE, MODEL_FINAL)
        return teacher, ((teacher, f"the teacher, from run {student.name}"),)

    def _load(self, config: str, opts: Sequence[str], what: str) -> CfgNode:
        return _load_config(config, opts, f"{self.path}: {what}")


def _load_config(config: str, opts: Sequence[str], where: str) -> CfgNode:
    """A run's config as the tools build it (:func:`ssdet.engine.defaults.load_cfg`)."""
    try:
        return load_cfg(config, list(opts))
    except InputError as e:
        raise InputError(f"{where}: {e}") from e


def _overridden(opts: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """``opts`` then ``overrides``, less the pairs of ``opts`` whose keys ``overrides`` set again:
    the same config (later pairs win), and a command that names each key once."""
    keys = set(overrides[::2])
    kept = [x for k, v in zip(opts[::2], opts[1::2], strict=True) if k not in keys for x in (k, v)]
    return [*kept, *overrides]


def _differing_opts(node: CfgNode, reference: CfgNode, prefix: str) -> list[str]:
    """``KEY VALUE`` pairs that turn ``reference`` into ``node`` (two configs' same sub-node)."""
    opts = []
    for key, value in node.items():
        if isinstance(value, CfgNode):
            opts += _differing_opts(value, reference[key], f"{prefix}{key}.")
        elif value != reference[key]:
            # merge_from_list reads non-string values back with literal_eval.
            opts += [f"{prefix}{key}", value if isinstance(value, str) else repr(value)]
    return opts


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
        cfg = _load_config(config, (), f"{grid.path}: base config of {method}")
        exp = cfg.SSDET.EXPERIMENT
        if not _trains_teacher_as(config, exp, teacher_base):
            raise InputError(
                f"{grid.path}: reuse_teacher makes the {teacher_method} runs (base config "
                f"{teacher_base}) the teachers of the {method} runs, but "
                f"{config} trains its teacher from "
                f"{exp.TEACHER_CONFIG!r} with TEACHER_OPTS {list(exp.TEACHER_OPTS)}. Set "
                f"reuse_teacher: false, or make the experiment's teacher {teacher_base}."
            )


def _trains_teacher_as(config: str, exp: CfgNode, base: str) -> bool:
    """Whether experiment ``config`` (with ``exp``, its SSDET.EXPERIMENT) trains its teacher as the
    base config ``base`` trains a model: from that file, without teacher-only overrides."""
    # tools/self_train.py looks the teacher config up next to the experiment config first.
    teacher = exp.TEACHER_CONFIG
    if teacher and not os.path.isabs(teacher):
        beside = os.path.join(os.path.dirname(config), teacher)
        teacher = beside if os.path.isfile(beside) else teacher
    return os.path.realpath(teacher) == os.path.realpath(base) and not exp.TEACHER_OPTS
