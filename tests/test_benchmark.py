"""The benchmark harness: interleaved timing, spreads, the same-run comparison, the authors'-code loader (on
a FAKE checkout written here, a few lines with their module and attribute names, none of their code) and
the profiler's split. No timing is asserted."""
import mmap
import os
import platform
import resource
import sys
import textwrap

import pytest
import torch

from conftest import CONFIGS
from isgan_torchreid.benchmarks import authors, benchmark_main
from isgan_torchreid.benchmarks.common import Sample, Worker, interleaved_seconds, measured, our_engine, spread
from isgan_torchreid.benchmarks.profiling import GROUPS, REST, group_split, profile_step, profile_tables
from isgan_torchreid.benchmarks.training import (_authors_side, _our_side, compare_with_authors, comparison_table,
                                                 cpu_table, training_table)

# what load() imports, with the names AuthorsStage uses; each file also trips one of the patches if missing
FAKE_CHECKOUT = {
    "opt.py": """
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument("--device")
        for name in ("--batchid", "--batchimage", "--num_cls", "--stage"):
            parser.add_argument(name, type=int, default=1)
        opt = parser.parse_args()
        """,
    "network.py": """
        import numpy as np
        import torch.nn as nn
        from opt import opt

        def resnet50(pretrained=False):
            raise RuntimeError("would download ImageNet weights")

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.C = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                       nn.Linear(4, opt.num_cls))
                self.G = nn.Linear(2, 2)
                self.D = nn.Module()
                self.D.avgp = nn.AvgPool2d((12, 4))
                self.stem_params = np.size(list(resnet50(pretrained=True).conv1.parameters()))
        """,
    "loss.py": """
        import numpy as np
        import torch.nn.functional as F
        from utils.get_optimizer import get_optimizer
        from opt import opt

        CALLS = []

        class Loss:
            def __init__(self, model):
                self.model = model
                self.optimizer, self.optimizer_D = get_optimizer(model)

            def __call__(self, inputs, labels, batch):
                CALLS.append((opt.stage, opt.device, tuple(inputs.shape)))
                print("\\rloss line", end=" ")
                logits = self.model.C(inputs)
                return F.cross_entropy(logits, labels) * np.size([logits])
        """,
    "utils/get_optimizer.py": """
        import numpy as np
        import torch

        def get_optimizer(model):
            assert np.shape([model.C, model.G])[0] == 2
            return torch.optim.Adam(model.C.parameters()), torch.optim.SGD(model.G.parameters(), lr=0.1)
        """,
}


@pytest.fixture
def fake_checkout(tmp_path):
    root = tmp_path / "ISGAN"
    for name, text in FAKE_CHECKOUT.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return str(root)


def test_interleaved_seconds_alternates_after_warmup_and_times_each_call():
    now, log = [0.0], []

    def step(name, seconds):
        def run():
            log.append(name)
            now[0] += seconds
        return run

    syncs = []
    out = interleaved_seconds({"ours": step("ours", 1.0), "authors": step("authors", 3.0)}, iters=3, warmup=2,
                              sync=lambda: syncs.append(1), clock=lambda: now[0])
    assert log == ["ours", "authors"] * 5
    assert out == {"ours": [1.0] * 3, "authors": [3.0] * 3}
    assert len(syncs) == 2 * 2 * 3  # before and after each timed call


def _samples(walls, sys=0.0, faults=0, peak_rss=2**30):
    return [Sample(wall, 2 * wall, sys, faults, peak_rss) for wall in walls]


def test_spread_and_comparison_table():
    assert spread([3.0, 1.0, 2.0, 10.0]) == (1.0, 2.5, 10.0)
    table = comparison_table({2: {"ours": _samples([1.0, 2.0, 3.0]), "authors": _samples([3.0, 3.0, 9.0])}})
    row = table.splitlines()[-1]
    assert "train stage 2" in row
    assert "1000 / 2000 / 3000" in row and "3000 / 3000 / 9000" in row
    assert "1.50x" in row.split("|")[4]  # median 3.0 / median 2.0
    assert "1.50x - 3.00x" in row  # per pair: 3/1, 3/2, 9/3


def test_cpu_table_gives_each_sides_medians_and_system_share():
    table = cpu_table({3: {"ours": _samples([1.0, 2.0, 3.0], sys=0.1, faults=1500),
                           "authors": _samples([4.0, 4.0, 4.0], sys=1.0, faults=900_000, peak_rss=3 * 2**30)}})
    ours, theirs = ([cell.strip() for cell in row.split("|")[1:-1]] for row in table.splitlines()[-2:])
    assert ours == ["train stage 3", "ours", "2.00", "4.00", "0.10", "5.0%", "1.5k", "1024"]
    assert theirs == ["train stage 3", "authors", "4.00", "8.00", "1.00", "25.0%", "900.0k", "3072"]


def test_measured_counts_a_calls_cpu_time_and_page_faults():
    def touch_fresh_pages():  # a fresh anonymous mapping (whatever malloc's settings): each page faults once
        block = mmap.mmap(-1, 64 * 2**20)
        block[::4096] = b"x" * (len(block) // 4096)
        block.close()

    sample = measured(touch_fresh_pages, torch.device("cpu"))
    assert sample.wall > 0 and sample.user + sample.sys > 0
    assert sample.faults >= 64 * 2**20 // os.sysconf("SC_PAGE_SIZE") // 2
    assert sample.peak_rss >= 64 * 2**20


def _settings_probe(state):
    """(denormals flushed, minor page faults of taking and freeing 64 MiB ten times) in a worker's process."""
    flushed = (torch.tensor([1e-40]) * 1.0).item() == 0.0
    for _ in range(3):  # warm-up: the heap settles
        torch.empty(1 << 24).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.empty(1 << 24).fill_(1.0)
    return flushed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or platform.machine() != "x86_64",
                    reason="the allocator is tuned on glibc, denormals flushed on x86")
def test_our_side_runs_under_the_trainers_cpu_settings_and_theirs_at_the_defaults(tiny_cfg, fake_checkout):
    cfg = tiny_cfg()
    with Worker(_our_side, cfg, 8, "cpu") as ours, Worker(_authors_side, cfg, fake_checkout, 8, "cpu") as theirs:
        (our_flush, our_faults), (their_flush, their_faults) = ours(_settings_probe), theirs(_settings_probe)
    assert our_flush and not their_flush
    pages = 10 * (1 << 26) // os.sysconf("SC_PAGE_SIZE")
    assert our_faults < pages // 20 < pages // 2 < their_faults


def test_training_table_has_no_authors_column():
    table = training_table([["isgan", "train stage 1", 1000.0, 16.0, 512.0]], torch.device("cpu"))
    assert "authors" not in table and "speed-up" not in table
    assert "| isgan    | train stage 1 | 1000      | 16.00      | 512" in table


def _error_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        benchmark_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_reference_that_is_not_the_checkout_is_one_error_line(tmp_path, capsys):
    market = os.path.join(CONFIGS, "isgan_market.yaml")
    (tmp_path / "opt.py").write_text("")
    line = _error_line(capsys, ["--config-file", market, "--reference", str(tmp_path), "--skip-evaluator"])
    assert f"--reference {tmp_path} is not a checkout of the authors' code" in line
    assert "network.py, loss.py, utils/get_optimizer.py missing" in line
    assert "git clone https://github.com/cvlab-yonsei/ISGAN" in line
    line = _error_line(capsys, ["--config-file", market, "--reference", str(tmp_path / "nowhere")])
    assert "no such folder" in line


def test_inference_without_an_onnx_runtime_names_both_extras(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails, as with neither installed
    line = _error_line(capsys, ["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml"), "--inference"])
    assert "onnxruntime" in line.split(";")[0]
    assert "pip install 'isgan-torchreid[export,onnxruntime]' (CPU) or " \
           "'isgan-torchreid[export,onnxruntime-gpu]' (CUDA)" in line


def test_reference_needs_the_authors_setting(fake_checkout, capsys):
    synthetic = os.path.join(CONFIGS, "isgan_synthetic.yaml")
    line = _error_line(capsys, ["--config-file", synthetic, "--reference", fake_checkout, "MODEL.BACKBONE",
                                "resnet18", "DATA.HEIGHT", "128", "DATA.WIDTH", "64"])
    assert "resnet50 at 384x128, not resnet18 at 128x64" in line
    line = _error_line(capsys, ["--config-file", synthetic, "--reference", fake_checkout, "--batch", "4",
                                "MODEL.BACKBONE", "resnet50", "DATA.HEIGHT", "384", "DATA.WIDTH", "128",
                                "SAMPLER.K", "4"])
    assert "P >= 2" in line and "--batch 8" in line


def test_authors_code_is_loaded_patched_and_stepped_without_leaving_traces(fake_checkout, capsys):
    argv, path = list(sys.argv), list(sys.path)
    code = authors.load(fake_checkout, "cpu", 2, 4, 10)
    assert sys.argv == argv and sys.path == path
    assert not {"opt", "network", "loss", "utils", "utils.get_optimizer"} & set(sys.modules)
    assert (code.opt.device, code.opt.batchid, code.opt.batchimage, code.opt.num_cls) == ("cpu", 2, 4, 10)

    stage = authors.AuthorsStage(code, 2)  # the fake's Model needs patches 2 and 3, its get_optimizer patch 3
    assert isinstance(stage.model.D.avgp, torch.nn.AdaptiveAvgPool2d)  # patch 4
    before = [p.detach().clone() for p in stage.model.C.parameters()]
    stage.step(torch.randn(8, 3, 16, 8), torch.arange(8) // 4)
    assert code.loss.CALLS == [(2, "cpu", (8, 3, 16, 8))]  # opt.stage set per stage (patch 1)
    assert all(not torch.equal(b, p) for b, p in zip(before, stage.model.C.parameters()))  # the Adam step ran
    assert capsys.readouterr().out == ""  # their loss print went to the sink (patch 5)


def test_compare_with_authors_measures_both_per_stage(tiny_cfg, fake_checkout):
    samples = compare_with_authors(tiny_cfg(), fake_checkout, batch=8, iters=2, warmup=0, device="cpu",
                                   stages=(1, 2))
    assert list(samples) == [1, 2]
    for runs in samples.values():
        assert set(runs) == {"ours", "authors"}
        assert len(runs["ours"]) == len(runs["authors"]) == 2
        assert all(s.wall > 0 and s.user + s.sys > 0 and s.faults >= 0 for s in runs["ours"] + runs["authors"])
    # two processes: ours holds an IS-GAN, theirs the fake's tiny model
    assert samples[2]["ours"][0].peak_rss != samples[2]["authors"][0].peak_rss
    assert "train stage 2" in comparison_table(samples) and "authors" in cpu_table(samples)


def test_profile_splits_a_stage2_step_by_module_group_and_removes_its_hooks(tiny_cfg):
    cpu = torch.device("cpu")
    engine, model, data = our_engine(tiny_cfg(), "isgan", 8, cpu)
    engine.enter_stage(2)
    events = profile_step(lambda: engine.forward_backward(data), model, cpu)
    split, step = group_split(events, cpu)
    assert set(GROUPS.values()) | {"optimizer", REST} == set(split)
    assert all(split[g]["forward"] > 0 for g in GROUPS.values())
    # stage 2: trunk and E_R run under no_grad; E_U, G and D get gradients
    assert split["backbone"]["backward"] == split["E_R"]["backward"] == 0
    assert all(split[g]["backward"] > 0 for g in ("E_U", "G", "D"))
    assert split["optimizer"]["optimizer"] > 0
    assert sum(sum(phases.values()) for phases in split.values()) == pytest.approx(step, rel=1e-6)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    text = profile_tables(events, cpu, limit=5)
    assert "| G " in text and "aten::convolution_backward" in text


def test_a_checkout_that_fails_to_import_is_a_user_error(fake_checkout):
    with open(os.path.join(fake_checkout, "opt.py"), "w") as f:
        f.write("raise RuntimeError('not the authors opt.py')\n")
    with pytest.raises(authors.ISGANError, match="is not a checkout of the authors' code .importing it failed"):
        authors.load(fake_checkout, "cpu", 2, 4, 10)
    assert "opt" not in sys.modules
