import argparse

import pytest
import torch

from ssdet.engine import format_ap_table
from ssdet.engine.defaults import load_cfg, share_cpu_cores
from ssdet.engine.launch import launch_url
from ssdet.utils.errors import InputError


def test_ap_table_rows_and_columns():
    res = {
        "mini_coco_val": {
            "bbox": {
                "AP": 41.234,
                "AP50": 70.0,
                "AP75": 40.0,
                "APs": 20.0,
                "APm": 45.5,
                "APl": float("nan"),
            }
        }
    }
    table = format_ap_table(res).splitlines()
    assert table[0] == "| dataset | AP | AP50 | AP75 | APs | APm | APl |"
    assert table[2] == "| mini_coco_val | 41.2 | 70.0 | 40.0 | 20.0 | 45.5 | nan |"
    assert format_ap_table(res["mini_coco_val"]).splitlines()[2].startswith("|  | 41.2")


def test_launch_url_is_a_free_port_on_one_machine():
    def args(**kw):
        base = dict(num_gpus=2, num_machines=1, dist_url="tcp://127.0.0.1:50000")
        return argparse.Namespace(**{**base, **kw})

    # Two multi-process runs on one machine would collide on Detectron2's fixed per-user port.
    assert launch_url(args()) == "auto"
    assert launch_url(args(num_machines=2)) == "tcp://127.0.0.1:50000"
    assert launch_url(args(num_gpus=1)) == "tcp://127.0.0.1:50000"


def test_share_cpu_cores_splits_threads_once(monkeypatch):
    from detectron2.utils import comm

    before = torch.get_num_threads()
    monkeypatch.setattr(comm, "get_local_size", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    try:
        share_cpu_cores("cpu")
        assert torch.get_num_threads() == 2
        share_cpu_cores("cpu")  # a second call (labeling after training) changes nothing
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        share_cpu_cores("cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("via_base", [False, True])
def test_config_that_runs_code_is_refused_and_runs_nothing(tmp_path, via_base):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"SEED: !!python/object/apply:os.system ['touch {marker}']\n")
    config = evil
    if via_base:
        config = tmp_path / "leaf.yaml"
        config.write_text("_BASE_: evil.yaml\nSEED: 3\n")
    with pytest.raises(InputError, match=r"Refused config .*python/object/apply:os\.system"):
        load_cfg(str(config))
    assert not marker.exists()


def test_config_that_is_no_yaml_mapping_is_an_input_error(tmp_path):
    for name, text in (("list.yaml", "- SEED\n- 3\n"), ("broken.yaml", "SEED: [3\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=name):
            load_cfg(str(tmp_path / name))


def test_lazyconfig_python_file_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    lazy = tmp_path / "fcos_R_50_FPN_1x.py"
    lazy.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nmodel = None\n")
    with pytest.raises(InputError, match=r"not a \.yaml file.*LazyConfig \.py configs"):
        load_cfg(str(lazy))
    assert not marker.exists()


def test_a_renamed_key_is_an_error_naming_its_new_name(tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text("SSDET:\n  PSEUDO_LABELS:\n    LABELING_SCORE_FLOOR: 0.1\n")
    for path, opts in (
        (str(config), []),
        (None, ["SSDET.PSEUDO_LABELS.LABELING_SCORE_FLOOR", "1"]),
    ):
        with pytest.raises(InputError, match="renamed to SSDET.LABELING.SCORE_FLOOR"):
            load_cfg(path, opts, optional=True)
    assert (
        load_cfg(
            None, ["SSDET.LABELING.SCORE_FLOOR", "0.1"], optional=True
        ).SSDET.LABELING.SCORE_FLOOR
        == 0.1
    )
