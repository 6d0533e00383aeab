"""Training under torchrun on CPU (gloo, 2 processes): identity-aware sharding of the batches, gradients equal
to one process's on the concatenated batch, a 3-stage run with resume and rank-0 evaluation, failures.

Multi-process parts start 2 processes (torch.multiprocessing.spawn, or torchrun as a user would); the models are
the tiny config's ResNet-18 with MODEL.PARTS [2], at 64x64.
"""
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from isgan_torchreid.benchmarks.common import NoData
from isgan_torchreid.config import load_config
from isgan_torchreid.data.sampler import DistributedIdentitySampler, IdentityOnceSampler, RandomIdentitySampler
from isgan_torchreid import storage
from isgan_torchreid import comm
from isgan_torchreid.engine import distributed
from isgan_torchreid.engine.staged import StagedEngine
from isgan_torchreid.errors import ISGANError
from isgan_torchreid.models import build_model

from conftest import CONFIGS, DRAWING_MODULES, REPO, TINY, FixedDraws, interrupted_at

SMALL = ["MODEL.PARTS", "[2]", "DATA.HEIGHT", "64"]  # half the model, half the pixels
METRICS = ("rank1", "rank5", "rank10", "mAP")


# ---------------------------------------------------------------- sampler


def toy_source(images_per_id):
    return [(f"{pid}_{i}.jpg", pid, i % 2, 0) for pid, n in enumerate(images_per_id) for i in range(n)]


def shards(base_factory, world_size, epoch, stage=1, p=4, k=4, seed=1):
    """Each rank's indices of one epoch, from its own sampler (as each process builds its own)."""
    return [list(_sampler(base_factory(), world_size, rank, epoch, stage, p, k, seed)) for rank in range(world_size)]


def _sampler(base, world_size, rank, epoch, stage, p, k, seed):
    sampler = DistributedIdentitySampler(base, p, k, seed, rank, world_size)
    sampler.set_epoch(epoch, stage)
    return sampler


@pytest.mark.parametrize("overrides, refused", [
    (["MODEL.NAME", "mgn", "TRAIN.STAGES", "[1]"], True),  # MGN mines triplets: one identity per process is not enough
    (["MODEL.NAME", "mgn", "TRAIN.STAGES", "[1]", "LOSS.LAMBDA_TRIPLET", "0"], False),
    (["MODEL.NAME", "baseline", "TRAIN.STAGES", "[1]"], False),  # cross-entropy alone
    (["LOSS.ISGAN_TRIPLET", "True"], True),  # IS-GAN with MGN's triplet term in stages 1 and 3
    (["LOSS.ISGAN_TRIPLET", "True", "MODEL.METHOD", "identity", "TRAIN.STAGES", "[1]"], True),  # whatever the method
    ([], False),
])
def test_world_size_checks_follow_the_triplet_term(monkeypatch, overrides, refused):
    """A model trained with the batch-hard triplet term needs two identities in each process's batch."""
    cfg = load_config(None, ["SAMPLER.P", "4"] + overrides)
    monkeypatch.setattr(distributed, "get_world_size", lambda: 4)
    if refused:
        with pytest.raises(ISGANError, match=r"mines within each process's batch, which holds SAMPLER.P / "
                                             r"processes = 1 identity: set SAMPLER.P >= 8"):
            distributed.check_config(cfg, torch.device("cpu"))
    else:
        distributed.check_config(cfg, torch.device("cpu"))


@pytest.mark.parametrize("base_cls", [IdentityOnceSampler, RandomIdentitySampler])
def test_ranks_share_out_the_one_process_batches(base_cls):
    source = toy_source([6, 5, 4, 9, 2, 7, 4, 3, 8, 5, 6, 4])  # 12 ids; ids 4 and 7 have fewer than K=4 images
    p, k = 4, 4

    def base():
        return base_cls(source, p * k, k)

    for epoch in (0, 1):
        (single,) = shards(base, 1, epoch)
        ranks = shards(base, 2, epoch)
        assert shards(base, 2, epoch) == ranks  # a pure function of (SEED, stage, epoch): identical on every rank
        assert all(len(r) == len(_sampler(base(), 2, i, epoch, 1, p, k, 1)) for i, r in enumerate(ranks))
        local = p // 2 * k
        for b in range(len(single) // (p * k)):
            batches = [r[b * local:(b + 1) * local] for r in ranks]
            assert batches[0] + batches[1] == single[b * p * k:(b + 1) * p * k]  # together: the one-process batch
            pids = [[source[i][1] for i in batch] for batch in batches]
            for rank_pids in pids:  # K images of each of P/W identities, grouped
                assert rank_pids == [rank_pids[0]] * k + [rank_pids[k]] * k and rank_pids[0] != rank_pids[k]
            assert not set(pids[0]) & set(pids[1])  # disjoint identities
        if base_cls is IdentityOnceSampler:  # the authors' epoch: every identity once in total
            per_id = Counter(source[i][1] for r in ranks for i in r)
            assert per_id == {pid: k for pid in range(12)}
    assert shards(base, 2, 0) != shards(base, 2, 1) != shards(base, 2, 1, stage=2)


def test_uneven_identities_and_world_sizes():
    source = toy_source([4] * 7)  # 7 identities, P = 4: one global batch, 3 identities left out this epoch
    ranks = shards(lambda: IdentityOnceSampler(source, 16, 4), 2, epoch=0)
    assert [len(r) for r in ranks] == [8, 8]
    assert len({source[i][1] for r in ranks for i in r}) == 4
    with pytest.raises(ISGANError, match=r"SAMPLER.P = 4 identities .* over 3 processes; set SAMPLER.P to a "
                                         r"multiple of 3"):
        DistributedIdentitySampler(IdentityOnceSampler(source, 16, 4), 4, 4, seed=1, rank=0, world_size=3)


def test_sampling_leaves_the_global_rngs_alone():
    sampler = _sampler(IdentityOnceSampler(toy_source([4] * 8), 16, 4), 1, 0, 0, 1, 4, 4, 1)
    random.seed(3), np.random.seed(3)
    expected = (random.random(), np.random.rand())
    random.seed(3), np.random.seed(3)
    list(sampler)
    assert (random.random(), np.random.rand()) == expected


def test_epoch_seeds_differ_by_stage_epoch_and_rank():
    seeds = {comm.epoch_seed(1, s, e, r) for s in (1, 2, 3) for e in range(5) for r in range(4)}
    assert len(seeds) == 60 and comm.epoch_seed(1, 2, 3, 0) == comm.epoch_seed(1, 2, 3, 0)


# ---------------------------------------------------------------- gradients: 2 processes vs one on the concatenation

B = 4  # images per process: 2 identities x K=2; the global batch is P=4 identities x 2


def _fix_random_draws():
    """E_U's reparameterisation noise, G's noise, partners, part masks and D's smoothed targets, deterministic."""
    for module in DRAWING_MODULES:
        sys.modules[module].torch = FixedDraws(B)


def _batch_statistics_off(model):
    """BatchNorm on running statistics and no dropout: each image's output does not depend on its batch."""
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            m.eval()


def _global_batch():
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(2 * B, 3, 64, 64, generator=gen, dtype=torch.float64)
    pids = torch.arange(2 * B) // 2  # 4 identities x K = 2
    return imgs, pids


def _steps(engine, imgs, pids):
    """Stage-1 step, stage-3 step (G on the concatenated sets), stage-3 step (one G call per set); after each,
    yield the parameters and their gradients (on the CPU)."""
    for stage, joint in ((1, True), (3, True), (3, False)):
        engine.objective.joint_g_batch = joint
        if engine.stage != stage:
            engine.enter_stage(stage)
        _batch_statistics_off(engine.model)
        engine.forward_backward({"img": imgs, "pid": pids})
        yield {n: (p.detach().cpu().clone(), None if p.grad is None else p.grad.cpu().clone())
               for n, p in engine.model.named_parameters()}


def _tiny_engine(device="cpu"):
    """The tiny IS-GAN in float64: in float32, the rounding differences between one batch and two half batches
    (~1e-6) grow to ~1% in D's gradients at initialisation (its InstanceNorms normalise 2 x 2 maps), which would
    hide what is compared here."""
    cfg = load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), TINY + SMALL + ["SAMPLER.P", "4"])
    torch.manual_seed(0)
    model = build_model(cfg, 8).double()
    return StagedEngine(cfg, NoData(8), model, torch.device(device), hooks=[])


def _check_sync_batchnorm():
    """TRAIN.SYNC_BN (in a process group): every BatchNorm becomes a SyncBatchNorm with the same state names."""
    cfg = load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), TINY + SMALL)
    plain = build_model(cfg, 8)
    synced = distributed.sync_batchnorm(build_model(cfg, 8), True)
    assert not [m for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                and not isinstance(m, nn.SyncBatchNorm)]
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == \
        sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules()) > 0
    assert list(synced.state_dict()) == list(plain.state_dict())  # checkpoints interchangeable


def _step_worker(rank, world_size, port, out_dir, device_type="cpu"):
    """One rank: the steps of :func:`_steps` on its half of the global batch (gloo on CPU, NCCL on GPU ``rank``)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    try:
        _check_sync_batchnorm()
        _fix_random_draws()
        engine = _tiny_engine(device)
        imgs, pids = _global_batch()
        mine = slice(rank * B, (rank + 1) * B)
        steps = _steps(engine, imgs[mine].to(device), pids[mine].to(device))
        torch.save(list(steps), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_step_as_one_on_the_concatenated_batch(tmp_path, monkeypatch):
    check_steps_as_one(tmp_path, monkeypatch, "cpu")


def check_steps_as_one(tmp_path, monkeypatch, device_type):
    """Two processes' steps (:func:`_step_worker`) against one process's on the concatenated batch."""
    mp.spawn(_step_worker, args=(2, free_port(), str(tmp_path), device_type), nprocs=2)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    for module in DRAWING_MODULES:
        monkeypatch.setattr(sys.modules[module], "torch", FixedDraws(B))
    engine = _tiny_engine(device_type)
    imgs, pids = _global_batch()
    reference = list(_steps(engine, imgs.to(engine.device), pids.to(engine.device)))

    for step, (ref, ranks) in enumerate(zip(reference, zip(*per_rank))):
        trained = [n for n, (_, g) in ref.items() if g is not None]
        assert trained, step
        for name, (param, grad) in ref.items():
            for rank_state in ranks:
                got_param, got_grad = rank_state[name]
                assert (got_grad is None) == (grad is None), (step, name)
                if grad is not None:  # DDP's mean of the processes' gradients = the gradient on the whole batch
                    # rounding (float64 model, float32 loss functions): < 1e-8 of the tensor's scale; a loss term
                    # scaled wrongly for 2 processes (e.g. the KL sum over the batch): 1e-2 or more
                    torch.testing.assert_close(got_grad, grad, rtol=0, atol=1e-6 * grad.abs().max().item() + 1e-15,
                                               msg=lambda m, name=name: f"step {step} {name}: {m}")
                # Adam's first steps are ~lr x sign(gradient): rounding moves an element whose gradient is ~0 by
                # up to ~1e-7; one step moves parameters by ~1e-4
                torch.testing.assert_close(got_param, param, rtol=0, atol=1e-6,
                                           msg=lambda m, name=name: f"step {step} {name}: {m}")
    # every stage-3 module, D (its own step) included, was trained in the stage-3 steps
    names = {n.split(".", 1)[0] for n, (_, g) in reference[1].items() if g is not None}
    assert names == {"backbone", "encoder_r", "encoder_u", "generator", "discriminator"}


def _nonfinite_worker(rank, world_size, port, out_dir):
    """Rank 1 alone gets a NaN loss: both ranks skip the step on the device, name rank 1's term when the log is
    collected, and go on in step."""
    from isgan_torchreid.engine.optim import NonfiniteLog, StageOptimizer, OptimizerUpdate, sgd
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        net = nn.parallel.DistributedDataParallel(model)
        log = NonfiniteLog()
        update = OptimizerUpdate(StageOptimizer(sgd(model.parameters(), lr=0.1, momentum=0.9), None,
                                       torch.amp.GradScaler("cpu", enabled=False)), log)
        x = torch.ones(2, 3) * (rank + 1)
        skipped = []
        for step, factor in enumerate((float("nan") if rank == 1 else 1.0, 1.0)):
            log.where = step
            skipped.append(bool(update({"L": net(x).sum() * factor})))
        torch.save({"skipped": skipped, "seen": log.collect(), "weight": model.weight.detach().clone()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_nonfinite_loss_on_one_rank_is_decided_together(tmp_path):
    mp.spawn(_nonfinite_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:
        assert r["skipped"] == [True, False]  # rank 0's finite loss was skipped too: no one applies NaN gradients
        assert [(where, term) for where, term, _ in r["seen"]] == [(0, "L (rank 1)")]
        assert math.isnan(r["seen"][0][2])
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])  # the next step all-reduced normally


# ---------------------------------------------------------------- torchrun, as a user runs it


def torchrun(args, out=None, env_extra=None, **popen):
    """``python -m torch.distributed.run --nproc_per_node 2 <args>`` from the repository root (a Popen)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    return subprocess.Popen(cmd + args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)


def finish(proc, timeout=600):
    """Wait for ``proc``; returns (return code, stdout, stderr)."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def train_args(data_root):
    """``train_args(out, *overrides)``: tools/train.py arguments for a tiny 3-stage run (stage 2 over 2 epochs)."""
    def make(out, *overrides):
        return (["tools/train.py", "--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml")] + TINY + SMALL
                + ["DATA.ROOT", data_root, "OUTPUT_DIR", str(out), "TRAIN.STAGE2.EPOCHS", "2", "DEVICE", "cpu"]
                + list(overrides))
    return make


@pytest.fixture(scope="module")
def torchrun_run(train_args, module_dir):
    """One uninterrupted 2-process run; returns its OUTPUT_DIR."""
    out = module_dir / "torchrun"
    code, stdout, stderr = finish(torchrun(train_args(out)))
    assert code == 0, stderr[-3000:]
    assert stdout.count("=> Stage 1:") == 1  # rank 0 alone prints
    return out


def test_torchrun_run_writes_one_set_and_evaluates_as_one_process(torchrun_run, tmp_path):
    from isgan_torchreid.cli import test_main
    out = torchrun_run
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    events = [f for f in files if ".tfevents." in f]
    assert [f for f in files if f not in events] == [
        "config.yaml", "results.json",
        "stage1/encoder.safetensors", "stage1/latest.pth.tar", "stage1/model.pth.tar-1",
        "stage2/encoder.safetensors", "stage2/latest.pth.tar", "stage2/model.pth.tar-2", "stage2/samples/epoch002.png",
        "stage3/encoder.safetensors", "stage3/latest.pth.tar", "stage3/model.pth.tar-1", "stage3/samples/epoch001.png",
        "train.log"]
    assert sorted(f.split("/")[0] for f in events) == ["stage1", "stage2", "stage3"]  # one writer per stage
    state = storage.load_checkpoint(str(out / "stage3" / "latest.pth.tar"))
    assert not [k for k in state["state_dict"] if k.startswith("module.")]
    with open(out / "results.json") as f:
        results = json.load(f)
    # the same checkpoint evaluated by tools/test.py in one process gives the run's final numbers exactly
    tested = test_main(["--config-file", str(out / "config.yaml"), "--weights", str(out / "stage3" / "model.pth.tar-1"),
                        "OUTPUT_DIR", str(tmp_path)])
    assert {m: tested["test"]["synthperson"][m] for m in METRICS} == \
        {m: results["stage3"]["synthperson"][m] for m in METRICS}


def test_killed_torchrun_run_resumes_exactly(torchrun_run, train_args, tmp_path):
    full = torchrun_run
    out = tmp_path / "resumed"
    (out / "stage1").mkdir(parents=True)  # stage 1 as the same config wrote it; the run goes on from its end
    for name in ("latest.pth.tar", "model.pth.tar-1"):
        os.link(full / "stage1" / name, out / "stage1" / name)
    latest = out / "stage2" / "latest.pth.tar"
    proc = torchrun(train_args(out))
    deadline = time.time() + 600
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # a job killed in stage 2's second epoch: torchrun stops its processes
    proc.communicate(timeout=120)
    assert storage.load_checkpoint(str(latest))["epoch"] == 1

    code, stdout, stderr = finish(torchrun(train_args(out)))  # the same command again

    assert code == 0, stderr[-3000:]
    assert f"=> resumed stage 2 from {latest} (epoch 1)" in stdout
    for stage in (2, 3):
        resumed = storage.load_checkpoint(str(out / f"stage{stage}" / "latest.pth.tar"))["state_dict"]
        reference = storage.load_checkpoint(str(full / f"stage{stage}" / "latest.pth.tar"))["state_dict"]
        assert [k for k, v in reference.items() if not torch.equal(v, resumed[k])] == [], stage


def test_resume_with_another_number_of_processes(torchrun_run, train_args, tmp_path):
    """A single process resumes stage 2 from the 2-process run's stage 1, is killed, and 2 processes finish it:
    checkpoints move between world sizes, and the sampler and seeds are re-derived (P counts all processes)."""
    from isgan_torchreid.cli import train_main
    out = tmp_path / "one-then-two"
    (out / "stage1").mkdir(parents=True)
    for name in ("latest.pth.tar", "model.pth.tar-1"):
        os.link(torchrun_run / "stage1" / name, out / "stage1" / name)
    args = ["--debug"] + train_args(out)[1:]  # tools/train.py's arguments
    with interrupted_at(stage=2, epoch=1, step=1), pytest.raises(KeyboardInterrupt):
        train_main(args)
    latest = out / "stage2" / "latest.pth.tar"
    assert storage.load_checkpoint(str(latest))["epoch"] == 1

    code, stdout, stderr = finish(torchrun(train_args(out)))

    assert code == 0, stderr[-3000:]
    assert f"=> resumed stage 2 from {latest} (epoch 1)" in stdout
    assert storage.load_checkpoint(str(out / "stage3" / "latest.pth.tar"))["epoch"] == 1


@pytest.mark.parametrize("overrides, message", [
    (["TRAIN.STAGE1.EPOCHZ", "1"], "unknown config key TRAIN.STAGE1.EPOCHZ"),  # before the process group
    (["DATA.SOURCES", "[market1501]"], "dataset market1501 not found"),  # rank 0 checks the data first
])
def test_user_error_is_reported_once(train_args, tmp_path, overrides, message):
    start = time.time()
    code, stdout, stderr = finish(torchrun(train_args(tmp_path / "out", *overrides)))
    errors = [line for line in stderr.splitlines() if line.startswith("error")]
    assert code != 0 and len(errors) == 1, stderr[-3000:]
    assert errors[0].startswith("error: ") and message in errors[0]  # rank 0's; the other one stopped quietly
    assert "[rank1]" not in stderr  # no traceback of the waiting rank (torchrun prefixes workers' tracebacks)
    assert time.time() - start < 120


FAILING_RANK = """
import sys, time
from isgan_torchreid import comm
from isgan_torchreid.cli import train_main
from isgan_torchreid.engine.staged import StagedEngine

step = StagedEngine.forward_backward

def fails_on_rank1(self, data):
    if comm.get_rank() == 1:
        with open(sys.argv[1], "w") as f:
            f.write(repr(time.time()))
        raise RuntimeError("injected failure on rank 1")
    return step(self, data)

StagedEngine.forward_backward = fails_on_rank1
train_main(sys.argv[2:])
"""


def test_failing_rank_brings_the_job_down(train_args, tmp_path):
    script, marker = tmp_path / "fails.py", tmp_path / "failed_at"
    script.write_text(FAILING_RANK)
    args = train_args(tmp_path / "out", "TRAIN.STAGES", "[1]")
    code, stdout, stderr = finish(torchrun([str(script), str(marker)] + args[1:]), timeout=300)
    ended = time.time()
    assert code != 0 and "injected failure on rank 1" in stderr
    assert ended - float(marker.read_text()) < 30  # rank 0 was waiting in the gradient all-reduce, not for 30 min


@pytest.mark.parametrize("tool", ["test", "compare", "benchmark"])
def test_single_process_tools_refuse_torchrun(tool, monkeypatch, capsys):
    from isgan_torchreid.benchmarks import benchmark_main
    from isgan_torchreid.cli import test_main
    from isgan_torchreid.compare import compare_main
    main = {"test": test_main, "compare": compare_main, "benchmark": benchmark_main}[tool]
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it (rank 0: RANK unset)
    extra = ["--weights", "model.pth.tar"] if tool == "test" else []
    with pytest.raises(SystemExit) as exit_info:
        main(["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml")] + extra)
    assert exit_info.value.code == 2
    assert f"error: tools/{tool}.py runs in one process" in capsys.readouterr().err


def test_scaling_benchmark_times_one_and_two_processes():
    from isgan_torchreid.benchmarks.scaling import bench_scaling, scaling_table
    cfg = load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), TINY + SMALL + ["DEVICE", "cpu"])
    rows = bench_scaling(cfg, 2, batch=4, iters=1, warmup=0, device=torch.device("cpu"))
    assert [r[0] for r in rows] == ["train stage 1", "train stage 2", "train stage 3"]
    for _, one, two, up, eff in rows:
        assert one > 0 and two > 0 and up == pytest.approx(two / one) and eff == pytest.approx(up / 2)
    table = scaling_table(rows, 2)
    assert "images/s, 2 processes" in table and table.count("train stage") == 3


def test_a_torchrun_job_on_an_output_dir_in_use_stops_in_one_line(train_args, tmp_path):
    """Rank 0 takes the run's lock for the group; when another trainer holds it, rank 0 says so and torchrun stops
    the other rank, which waited for the process group: one error line, nothing written."""
    from isgan_torchreid.engine.lock import output_dir_lock

    out = tmp_path / "out"
    with output_dir_lock(str(out)):
        code, stdout, stderr = finish(torchrun(train_args(out)), timeout=300)
        assert os.listdir(out) == [".lock"]  # no config.yaml, no train.log
    errors = [line for line in stderr.splitlines() if line.startswith("error")]
    assert code != 0 and len(errors) == 1, stderr[-3000:]
    assert f"is in use by another trainer (pid {os.getpid()} on " in errors[0]
