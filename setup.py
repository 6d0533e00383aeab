"""isgan-torchreid: IS-GAN (Eom & Ham, NeurIPS 2019) as a torchreid plugin."""
from setuptools import find_packages, setup

setup(
    name="isgan-torchreid",
    version="0.1.0",
    description="IS-GAN and MGN for the torchreid person re-identification toolbox",
    packages=find_packages(include=["isgan_torchreid", "isgan_torchreid.*"]),
    python_requires=">=3.10",
    install_requires=[
        # torch/torchvision are installed first by the Makefile (pinned 2.14.1/0.29.1 there);
        # a range here keeps pip from ever replacing the torch a user already has.
        "torch>=2.1",
        "torchvision>=0.16",
        # PyPI's 0.2.5 (`torchreid.reid.*`) or a source install of 1.4.0 (`torchreid.*`, built with its
        # Cython evaluator): a lower bound only, so pip keeps whichever one the user already has.
        "torchreid>=0.2.5",
        "yacs>=0.1.8",
        "gdown",
        "tabulate",
        # imported by torchreid without being declared by it (0.2.5 declares nothing; a 1.4.0 source
        # install lists them, with dev tools, in a requirements.txt that pip does not read)
        "opencv-python-headless",
        "scipy",
        "tensorboard",
        "pillow",
        "h5py",
        "imageio",  # CUHK03 preparation from the raw .mat
        "six",  # torchreid's download_url
        "numpy",
    ],
    extras_require={"test": ["pytest>=7"]},
)
