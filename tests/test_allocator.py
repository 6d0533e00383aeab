"""The C allocator's set-up (isgan_torchreid.allocator): freed memory is reused without page faults."""
import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO

MEASURE = """
import resource, sys, torch
from isgan_torchreid.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(3):  # warm-up: the heap settles
    torch.empty(1 << 24).fill_(1.0)  # 64 MiB
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # what a step does with its large activations: take 64 MiB, write it, free it
    torch.empty(1 << 24).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", MEASURE, mode], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="only glibc's malloc is tuned")
def test_freed_memory_is_reused_without_page_faults():
    pages = 10 * (1 << 26) // os.sysconf("SC_PAGE_SIZE")  # what faulting every block in again costs
    assert page_faults("default") > pages // 2  # glibc maps each 64 MiB block afresh
    assert page_faults("keep") < pages // 20


def test_elsewhere_nothing_is_changed(monkeypatch):
    from isgan_torchreid import allocator
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator.keep_freed_memory() is False
