"""The optimisers of a stage (isgan_torchreid.engine.optim)."""
import pytest
import torch

from isgan_torchreid.engine import optim

SETTINGS = dict(lr=1e-2, betas=(0.9, 0.999), weight_decay=5e-4, amsgrad=True)


def trajectory(make, steps=5):
    torch.manual_seed(0)
    params = [torch.randn(64, 32, requires_grad=True), torch.randn(7, requires_grad=True)]
    opt = make([{"params": params}])
    for step in range(steps):
        torch.manual_seed(step)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return opt, params


def test_adam_is_fused_and_makes_the_unfused_update():
    fused, got = trajectory(lambda groups: optim.adam(groups, **SETTINGS))
    _, expected = trajectory(lambda groups: torch.optim.Adam(groups, **SETTINGS))
    assert fused.param_groups[0]["fused"]  # torch >= 2.4 has the CPU kernel
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_adam_falls_back_where_no_fused_kernel_exists(monkeypatch):
    real = torch.optim.Adam

    def no_fused(params, fused=None, **settings):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported "
                               "devices: ['cuda']")
        return real(params, **settings)

    monkeypatch.setattr(optim.torch.optim, "Adam", no_fused)
    opt, _ = trajectory(lambda groups: optim.adam(groups, **SETTINGS))
    assert not opt.param_groups[0]["fused"]


def test_sgd_skips_on_the_device_and_then_makes_torchs_steps():
    """A first step skipped through found_inf (a non-finite loss) leaves the parameters and lets the next steps
    make plain SGD's (fused SGD alone would keep uninitialised momentum buffers)."""
    torch.manual_seed(0)
    params = [torch.randn(64, 32, requires_grad=True), torch.randn(7, requires_grad=True)]
    reference = [p.detach().clone().requires_grad_(True) for p in params]
    settings = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt, plain = optim.sgd(params, **settings), torch.optim.SGD(reference, **settings)
    assert opt.param_groups[0]["fused"]
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    opt.found_inf = torch.ones(())
    opt.step()
    del opt.found_inf
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(torch.equal(opt.state[p]["momentum_buffer"], torch.zeros_like(p)) for p in params)
    for step in range(3):
        torch.manual_seed(step)
        for p, r in zip(params, reference):
            p.grad = torch.randn_like(p)
            r.grad = p.grad.clone()
        opt.step()
        plain.step()
    for p, r in zip(params, reference):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)


def test_a_spec_builds_its_optimiser_schedule_and_slow_group():
    fast, slow = torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)
    spec = optim.OptimizerSpec((fast, slow), "adam", lr=1e-3, weight_decay=5e-4, milestones=(2,), gamma=0.5,
                               betas=(0.5, 0.9), amsgrad=True, slow=(slow,), slow_mult=0.1)
    built = optim.build_optimizer(spec, lambda: torch.amp.GradScaler("cpu", enabled=False))
    fast_group, slow_group = built.optimizer.param_groups
    assert isinstance(built.optimizer, torch.optim.Adam) and fast_group["betas"] == (0.5, 0.9) and fast_group["amsgrad"]
    assert {id(p) for p in fast_group["params"]} == {id(p) for p in fast.parameters()} and fast_group["lr"] == 1e-3
    assert {id(p) for p in slow_group["params"]} == {id(p) for p in slow.parameters()}
    assert slow_group["lr"] == pytest.approx(1e-4)
    for _ in range(2):
        built.optimizer.step()
        built.scheduler.step()
    assert fast_group["lr"] == pytest.approx(5e-4)  # the milestone halved it
    sgd = optim.build_optimizer(optim.OptimizerSpec((fast,), "sgd", lr=0.1, weight_decay=0.0, momentum=0.9),
                                lambda: torch.amp.GradScaler("cpu", enabled=False))
    assert isinstance(sgd.optimizer, torch.optim.SGD) and len(sgd.optimizer.param_groups) == 1
    assert sgd.optimizer.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="unknown optimiser kind 'rmsprop'"):
        optim.build_optimizer(optim.OptimizerSpec((fast,), "rmsprop", lr=0.1, weight_decay=0.0),
                              lambda: torch.amp.GradScaler("cpu", enabled=False))
