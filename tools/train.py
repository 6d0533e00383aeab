#!/usr/bin/env python
"""Train: python tools/train.py --config-file isgan_market [--stages 2 3] [KEY VALUE ...]"""
from isgan_torchreid.cli import train_main

if __name__ == "__main__":
    train_main()
