"""Grid files for the ablation tests: tiny base configs in a temp folder and a grid factory."""

import os

import pytest
import yaml

from ..conftest import REPO

INSTANT = os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml")


@pytest.fixture
def base_configs(tmp_path) -> dict[str, str]:
    """A supervised config (the instant test) and a self-training experiment whose teacher is it,
    plus an (empty) ImageNet init weights file, and two variants of the experiment: its student
    trains longer ("self_training_longer": 60 steps, not 40), or continues its teacher on a
    schedule of its own ("self_training_from_teacher": STUDENT_INIT teacher, 30 steps at lr 0.001
    after 2 warmup steps, 8 images per step)."""
    sup = tmp_path / "supervised.yaml"
    sup.write_text(f"_BASE_: {INSTANT}\n")
    exp = tmp_path / "self_train.yaml"
    exp.write_text(
        yaml.safe_dump(
            {
                "_BASE_": INSTANT,
                "SSDET": {
                    "EXPERIMENT": {
                        "TEACHER_CONFIG": "supervised.yaml",
                        "UNLABELED_DATASET": "mini_imagenet_train",
                    }
                },
            }
        )
    )
    longer = tmp_path / "self_train_longer.yaml"
    longer.write_text(f"_BASE_: {exp}\nSOLVER:\n  MAX_ITER: 60\n")
    from_teacher = tmp_path / "self_train_from_teacher.yaml"
    from_teacher.write_text(
        yaml.safe_dump(
            {
                "_BASE_": str(exp),
                "SSDET": {"EXPERIMENT": {"STUDENT_INIT": "teacher"}},
                "SOLVER": {
                    "BASE_LR": 0.001,
                    "WARMUP_ITERS": 2,
                    "MAX_ITER": 30,
                    "IMS_PER_BATCH": 8,
                },
            }
        )
    )
    weights = tmp_path / "imagenet_backbone.pth"
    weights.write_bytes(b"")
    return {
        "supervised": str(sup),
        "self_training": str(exp),
        "self_training_longer": str(longer),
        "self_training_from_teacher": str(from_teacher),
        "weights": str(weights),
    }


@pytest.fixture
def make_grid(tmp_path, base_configs):
    """``make_grid(**keys)``: write a grid file (2 inits x 2 policies x 2 fractions x supervised
    and self-training x 2 seeds unless overridden) and return its path."""
    counter = iter(range(1000))

    def make(**overrides) -> str:
        grid = {
            "name": "test",
            "axes": {
                "init": ["rand", "imagenet"],
                "augmentation": ["S1", "S4"],
                "fraction": [0.2, 1.0],
                "method": ["supervised", "self_training"],
                "seed": [0, 1],
            },
            "inits": {"imagenet": base_configs["weights"]},
            "methods": {
                m: {"config": base_configs[c]}
                for m, c in (
                    ("supervised", "supervised"),
                    ("self_training", "self_training"),
                    ("joint", "supervised"),
                    ("all_three", "self_training"),
                )
            },
        }
        for key, value in overrides.items():
            if value is None:
                grid.pop(key, None)
            else:
                grid[key] = value
        path = tmp_path / f"grid{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(grid, sort_keys=False))
        return str(path)

    return make
