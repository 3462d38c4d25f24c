from ssdet.engine import format_ap_table


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
