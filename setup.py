#!/usr/bin/env python
"""ssdet: self-training for detection (Zoph et al. 2020, Noisy Student) on Detectron2.

Pure Python: this file must not import torch or detectron2. Detectron2 is deliberately not in
``install_requires``: it is not published on the package registry under its own name, and users
with an upstream source build must be able to use ssdet unchanged (see README, "Install").
"""

from pathlib import Path

from setuptools import find_packages, setup


def _version() -> str:
    for line in (Path(__file__).parent / "ssdet" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("ssdet/__init__.py has no __version__")


setup(
    name="ssdet",
    version=_version(),
    description="Detection self-training (Rethinking Pre-training and Self-training) on Detectron2",
    python_requires=">=3.10",
    packages=find_packages(exclude=("tests", "tests.*", "configs", "tools", "benchmarks")),
    install_requires=[
        "torch",
        "torchvision",
        "numpy<2",
        "opencv-python-headless",
        "pycocotools",
        "fvcore",
        "iopath",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"dev": ["pytest", "ruff"]},
)
