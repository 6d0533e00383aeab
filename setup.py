"""isgan-torchreid: IS-GAN (Eom & Ham, NeurIPS 2019) as a torchreid plugin."""
from setuptools import find_packages, setup

# pinned to versions tested with torch 2.14.1 (onnx/onnxruntime parity tests in tests/test_deploy.py)
EXPORT = ["onnx==1.23.2", "onnxruntime==1.32.0", "onnxscript==0.7.2", "safetensors==0.8.0", "tqdm==4.70.1"]

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
        # encoder.safetensors (written at the end of each stage) and tools/extract.py's progress bar
        "safetensors>=0.4.3",
        "tqdm>=4.60",
    ],
    extras_require={
        # tools/export.py and the inference benchmark; onnxscript only for --dynamo (torch.export-based ONNX)
        "export": EXPORT,
        "test": ["pytest>=7"] + EXPORT,  # CI tests the export too
    },
)
