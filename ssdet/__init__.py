"""ssdet: detection self-training (Zoph et al. 2020, Noisy Student) built on Detectron2."""

__version__ = "0.1.0"

from ssdet.utils.env import check_detectron2

check_detectron2()

# Imported for their registrations (datasets, backbones), as Detectron2's projects do.
from ssdet import data, modeling  # noqa: E402,F401
from ssdet.config import add_ssdet_config  # noqa: E402

__all__ = ["add_ssdet_config", "__version__"]
