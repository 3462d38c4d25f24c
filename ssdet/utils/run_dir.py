"""The names of the files and folders in a run's ``OUTPUT_DIR``.

One home for them, so that what a tool writes and what another reads (a self-training stage, the
ablation runner, a resume) cannot drift apart.
"""

__all__ = [
    "COCO_METRICS",
    "CONTROL_STAGE",
    "FINAL_METRICS",
    "INIT_RECORD_FILE",
    "LABELED_SUBSET_FILE",
    "MODEL_FINAL",
    "STAGE_FILE",
    "TEACHER_STAGE",
]

# Written last by a finished run (ssdet.engine.write_final_metrics) or self-training experiment:
# its presence marks the run finished.
FINAL_METRICS = "final_metrics.json"
# The COCO box metrics of final_metrics.json, in the order tables show them.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# A run's final weights ({"model": state_dict, ...}), and an experiment's last student's.
MODEL_FINAL = "model_final.pth"
# The backbone init of a fresh start (ssdet.checkpoint.backbone_init).
INIT_RECORD_FILE = "init.json"
# The image ids of a labeled subset (SSDET.DATA.LABELED_FRACTION; ssdet.data.build).
LABELED_SUBSET_FILE = "labeled_subset.json"
# What a self-training stage was run with, in its folder (ssdet.engine.experiment.fingerprint).
STAGE_FILE = "stage.json"
# A self-training experiment's teacher stage, and the equal-compute control of a STUDENT_INIT
# config student, as folders of the experiment's OUTPUT_DIR.
TEACHER_STAGE = "teacher"
CONTROL_STAGE = "control"
