#!/usr/bin/env python
"""Evaluate: python tools/test.py --weights RUN/stage3/latest.pth.tar [-t market1501 dukemtmcreid] [--root DIR]
(--config-file CFG for a checkpoint outside its run folder)"""
from isgan_torchreid.cli import test_main

if __name__ == "__main__":
    test_main()
