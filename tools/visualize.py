#!/usr/bin/env python
"""Pictures: python tools/visualize.py {interpolate,swap,grid,rank} --weights CKPT --out FILE.png [...] (see --help)"""
from isgan_torchreid.visualize.main import visualize_main

if __name__ == "__main__":
    visualize_main()
