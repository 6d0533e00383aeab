#!/usr/bin/env python
"""Export the encoder: python tools/export.py --weights W --format onnx|torchscript [--height H --width W] --out F"""
from isgan_torchreid.cli import export_main

if __name__ == "__main__":
    export_main()
