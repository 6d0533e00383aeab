#!/usr/bin/env python
"""Embed images: python tools/extract.py --weights OUTPUT_DIR/stage3/encoder.safetensors --images DIR|LIST
[--out feats.npz]"""
from isgan_torchreid.cli import extract_main

if __name__ == "__main__":
    extract_main()
