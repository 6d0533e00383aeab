#!/usr/bin/env python
"""Compare: python tools/compare.py [--methods isgan baseline mgn pcb_p6] [--seeds 0 1 2] --config-file CFG
[KEY VALUE ...]"""
from isgan_torchreid.compare import compare_main

if __name__ == "__main__":
    compare_main()
