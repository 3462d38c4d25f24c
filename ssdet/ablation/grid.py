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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from detectron2.config import CfgNode

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
            if not exp.TEACHER_WEIGHTS and not trains_teacher_as(
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
        return load_run_config(config, opts, f"{self.path}: {what}")


def load_run_config(config: str, opts: Sequence[str], where: str) -> CfgNode:
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


def trains_teacher_as(config: str, exp: CfgNode, base: str) -> bool:
    """Whether experiment ``config`` (with ``exp``, its SSDET.EXPERIMENT) trains its teacher as the
    base config ``base`` trains a model: from that file, without teacher-only overrides."""
    # tools/self_train.py looks the teacher config up next to the experiment config first.
    teacher = exp.TEACHER_CONFIG
    if teacher and not os.path.isabs(teacher):
        beside = os.path.join(os.path.dirname(config), teacher)
        teacher = beside if os.path.isfile(beside) else teacher
    return os.path.realpath(teacher) == os.path.realpath(base) and not exp.TEACHER_OPTS
