#!/usr/bin/env python
"""Speed/memory tables: python tools/benchmark.py --config-file configs/isgan_market.yaml [--batch 16]
[--reference DIR_OF_THE_AUTHORS_CHECKOUT] [--profile]

Class-discriminator generalisation: python tools/benchmark.py --config-file configs/isgan_synthetic.yaml --dc
"""
import sys

from isgan_torchreid.bench_dc import bench_dc_main
from isgan_torchreid.benchmark import benchmark_main

if __name__ == "__main__":
    bench_dc_main() if "--dc" in sys.argv[1:] else benchmark_main()
