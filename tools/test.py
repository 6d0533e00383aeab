#!/usr/bin/env python
"""Evaluate: python tools/test.py --config-file CFG --weights CKPT [--targets market1501 dukemtmcreid]"""
from isgan_torchreid.cli import test_main

if __name__ == "__main__":
    test_main()
