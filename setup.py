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
        "torchreid==0.2.5",
        "yacs>=0.1.8",
        "gdown",
        "tabulate",
        # imported by torchreid without being declared by it
        "opencv-python-headless",
        "scipy",
        "tensorboard",
        "pillow",
        "h5py",
        "numpy",
    ],
    extras_require={"test": ["pytest>=7"]},
)
