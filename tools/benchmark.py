#!/usr/bin/env python
"""Speed/memory tables: python tools/benchmark.py --config-file isgan_market [--batch 16]
[--reference DIR_OF_THE_AUTHORS_CHECKOUT] [--profile] | --inference | --gallery [Q G] | --dc   (see --help)"""
from isgan_torchreid.benchmarks import benchmark_main

if __name__ == "__main__":
    benchmark_main()
