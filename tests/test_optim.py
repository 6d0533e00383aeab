"""The optimisers of a stage (isgan_torchreid.engine.optim)."""
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
