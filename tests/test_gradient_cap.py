"""cap_branch_gradient: the gradient one path sends into a shared tensor, held to a fraction of the others'."""
import pytest
import torch

from isgan_torchreid.engine.gradient_cap import cap_branch_gradient


def two_paths(weight: float, fraction: float):
    """x (4, 6) -> source = 2x; L_other = sum(source^2) by source, L_branch = weight * sum(w * branch) by a view
    of it, capped. Returns x's gradient, the record, and the two paths' gradients on source."""
    torch.manual_seed(0)
    x = torch.randn(4, 6, requires_grad=True)
    w = torch.randn(4, 6)
    source = 2 * x
    branch = source.view_as(source)
    record = {}
    cap_branch_gradient(source, branch, fraction, record, "code")
    ((source ** 2).sum() + weight * (w * branch).sum()).backward()
    return x.grad, record, 2 * source.detach(), weight * w


@pytest.mark.parametrize("weight", [100.0, 0.01])
def test_the_branch_gradient_is_scaled_to_at_most_the_fraction_of_the_others(weight):
    """g_source = g_other + min(1, f ||g_other|| / ||g_branch||) g_branch: scaled down when the branch pushes
    harder than f x the others (weight 100), untouched when it does not (0.01); ratio and factor recorded."""
    fraction = 0.1
    grad, record, other, branch = two_paths(weight, fraction)
    ratio = branch.norm() / other.norm()
    scale = min(1.0, fraction / ratio.item())
    assert (scale < 1.0) == (weight > 1.0)
    torch.testing.assert_close(grad, 2 * (other + scale * branch))
    assert record["code_ratio"].item() == pytest.approx(ratio.item(), rel=1e-5)
    assert record["code_scale"].item() == pytest.approx(scale, rel=1e-5)
    assert not record["code_scale"].requires_grad


def test_a_backward_that_misses_the_branch_leaves_the_gradient_alone():
    x = torch.randn(3, 5, requires_grad=True)
    source = 3 * x
    branch = source.view_as(source)
    record = {}
    cap_branch_gradient(source, branch, 0.01, record, "code")
    (source ** 2).sum().backward()
    torch.testing.assert_close(x.grad, 18 * x.detach())
    assert record == {}
