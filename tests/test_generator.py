"""Tests for the generator G."""
import pytest
import torch
from torch import nn

from isgan_torchreid.models.generator import Generator, stripe_features, transposed_fan_in, upsamplings


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_matches_reference():
    g = Generator(751)  # 384x128, id 2048 + nid 512 + noise 128 + one-hot 751 = 3439 inputs
    assert g.fc[0].in_features == 3439
    assert n_params(g.fc) == 1_762_304
    assert n_params(g.deconvs) == 14_293_888
    assert n_params(g) == 16_056_192


def test_structure():
    g = Generator(5, height=256, width=128)
    deconvs = [m for m in g.deconvs.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(deconvs) == 7
    assert all(m.bias is None for m in deconvs)
    assert deconvs[0].kernel_size == (4, 2)  # (H/64, W/64)
    assert [m.out_channels for m in deconvs] == [512, 512, 512, 256, 128, 64, 3]
    dropouts = [type(block[-1]) is nn.Dropout for block in g.deconvs]
    assert dropouts == [True] * 5 + [False, False]  # dropout in blocks 1-5 only
    assert isinstance(g.deconvs[-1][-1], nn.Tanh)
    bn_weights = torch.cat([m.weight for m in g.deconvs.modules() if isinstance(m, nn.BatchNorm2d)])
    assert bn_weights.mean().item() == pytest.approx(1.0, abs=0.01)
    assert bn_weights.std().item() == pytest.approx(0.02, rel=0.2)


@pytest.mark.parametrize("hw", [(384, 128), (256, 128), (128, 64), (64, 32), (96, 48), (32, 64)])
def test_output_matches_image_size(hw):
    torch.manual_seed(0)
    g = Generator(7, id_dim=32, nid_dim=16, height=hw[0], width=hw[1]).train()
    out = g(torch.randn(2, 32), torch.randn(2, 16), torch.tensor([0, 6]))
    assert out.shape == (2, 3, *hw)
    assert out.abs().max().item() <= 1.0
    out.mean().backward()
    assert g.fc[0].weight.grad is not None


def test_noise_and_label_conditioning():
    torch.manual_seed(0)
    g = Generator(4, id_dim=8, nid_dim=8, height=128, width=64).eval()
    ids, nids, labels = torch.randn(2, 8), torch.randn(2, 8), torch.tensor([1, 3])
    with torch.no_grad():
        torch.manual_seed(3)
        drawn = g(ids, nids, labels)
        torch.manual_seed(3)
        given = g(ids, nids, labels, noise=torch.randn(2, 128))
        other_noise = g(ids, nids, labels, noise=torch.randn(2, 128))
        other_label = g(ids, nids, labels, noise=torch.zeros(2, 128))
        same_label = g(ids, nids, torch.tensor([0, 0]), noise=torch.zeros(2, 128))
        gen_a = g(ids, nids, labels, generator=torch.Generator().manual_seed(9))
        gen_b = g(ids, nids, labels, generator=torch.Generator().manual_seed(9))
    assert torch.equal(drawn, given)
    assert not torch.allclose(given, other_noise)
    assert not torch.allclose(other_label, same_label)
    assert torch.equal(gen_a, gen_b)


@pytest.mark.parametrize("hw", [(100, 64), (384, 100), (0, 64), (24, 64)])
def test_bad_size(hw):
    with pytest.raises(ValueError, match="DATA.HEIGHT and DATA.WIDTH"):
        Generator(3, height=hw[0], width=hw[1])


def test_transposed_fan_in_counts_inputs_per_output_pixel():
    k4s2 = nn.ConvTranspose2d(64, 3, 4, 2, 1)
    assert transposed_fan_in(k4s2, (32, 16)) == 64 * 2 * 2
    first = nn.ConvTranspose2d(512, 512, (6, 2), 1, 0)  # 1x1 map -> 6x2: one tap per channel
    assert transposed_fan_in(first, (1, 1)) == 512


def test_fan_in_init_draws_each_layer_from_its_fan():
    torch.manual_seed(0)
    g = Generator(5, id_dim=64, nid_dim=32, noise_dim=16, height=128, width=64)
    leaky = (2 / (1 + 0.2 ** 2)) ** 0.5
    assert g.fc[0].weight.std().item() == pytest.approx(leaky / (64 + 32 + 16 + 5) ** 0.5, rel=0.05)
    deconvs = [m for m in g.deconvs.modules() if isinstance(m, nn.ConvTranspose2d)]
    # inputs summed per output pixel: a 1x1 map, then a 2x1 map (one tap across), then 2x2 taps
    fans = [512, 512 * 2, 512 * 4, 512 * 4, 256 * 4, 128 * 4, 64 * 4]
    gains = [leaky] * 6 + [1.0]  # the last feeds Tanh
    for conv, fan, gain in zip(deconvs, fans, gains):
        assert conv.weight.std().item() == pytest.approx(gain / fan ** 0.5, rel=0.05)


def _pre_tanh(init):
    torch.manual_seed(0)
    g = Generator(10, id_dim=64, nid_dim=32, height=128, width=64, init=init).train()
    seen = []
    g.deconvs[-1][0].register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    g(torch.randn(16, 64), torch.randn(16, 32), torch.arange(16) % 10)
    return seen[0]


def test_fan_in_init_keeps_the_first_images_in_tanh_linear_range():
    pre = _pre_tanh("fan_in")
    assert 0.4 < pre.std().item() < 1.0
    assert (pre.tanh().abs() > 0.98).float().mean().item() < 0.02
    reference = _pre_tanh("reference")  # the authors' init stays reachable, and saturates
    assert reference.std().item() > 1.5
    assert (reference.tanh().abs() > 0.98).float().mean().item() > 0.15


def test_unknown_init():
    with pytest.raises(ValueError, match="MODEL.G_INIT"):
        Generator(3, height=128, width=64, init="xavier")


def test_without_class_input_the_label_changes_nothing():
    torch.manual_seed(0)
    g = Generator(4, id_dim=8, nid_dim=8, noise_dim=16, height=128, width=64, class_input=False).eval()
    assert g.fc[0].in_features == 8 + 8 + 16
    ids, nids, noise = torch.randn(2, 8), torch.randn(2, 8), torch.zeros(2, 16)
    with torch.no_grad():
        a = g(ids, nids, torch.tensor([0, 1]), noise=noise)
        b = g(ids, nids, torch.tensor([3, 2]), noise=noise)
        c = g(ids.flip(0), nids, torch.tensor([0, 1]), noise=noise)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("hw, ups, first_map", [((128, 64), 6, (2, 1)), ((64, 32), 5, (2, 1)), ((96, 48), 4, (6, 3))])
def test_sizes_below_multiples_of_64_leave_out_leading_upsamplings(hw, ups, first_map):
    assert upsamplings(*hw) == ups
    g = Generator(3, id_dim=8, nid_dim=8, height=hw[0], width=hw[1])
    deconvs = [m for m in g.deconvs.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(deconvs) == 1 + ups
    assert deconvs[0].kernel_size == first_map
    assert [m.out_channels for m in deconvs] == [512] + [512, 512, 256, 128, 64, 3][6 - ups:]


def test_width_scales_every_hidden_layer():
    g = Generator(3, id_dim=8, nid_dim=8, height=128, width=64, base_channels=128)
    deconvs = [m for m in g.deconvs.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert g.fc[0].out_features == 128
    assert [m.out_channels for m in deconvs] == [128, 128, 128, 64, 32, 16, 3]


def test_stripe_features_follow_the_part_branches_layout():
    # [g_p1, g_p2, p2_s0, p2_s1, g_p3, p3_s0, p3_s1, p3_s2]
    assert stripe_features((1, 2, 3)) == [(2, [2, 3]), (3, [5, 6, 7])]
    assert stripe_features((3, 1)) == [(3, [1, 2, 3])]
    assert stripe_features((1,)) == []
    with pytest.raises(ValueError, match="MODEL.G_STRIPES"):
        Generator(3, id_dim=8, nid_dim=8, height=64, width=32, parts=(1,), stripe_codes=("identity",))
    with pytest.raises(ValueError, match="unknown codes"):
        Generator(3, id_dim=8, nid_dim=8, height=64, width=32, stripe_codes=("pose",))


def test_stripe_conditioning_draws_each_stripe_into_its_rows():
    torch.manual_seed(0)
    d, e = 4, 2
    g = Generator(3, id_dim=8 * d, nid_dim=8 * e, noise_dim=4, height=64, width=32, base_channels=64,
                  class_input=False, stripe_codes=("identity", "nuisance")).eval()
    # hidden maps at 64x32: 2, 4, 8, 16, 32 rows; conditioned where they have at least 3 rows
    assert [sorted(projs, key=int) for projs in g.stripe_proj.values()] == [["1", "2", "3", "4"]] * 2
    assert g.stripe_proj["nuisance"]["2"].in_features == e
    ids, nids = torch.randn(1, 8 * d), torch.randn(1, 8 * e)
    parts = ids.view(1, 8, d)
    proj = g.stripe_proj["identity"]["2"]  # 8 rows: 2 stripes of 4 rows; 3 stripes of rows 0-2, 3-5, 6-7 (nearest)
    drawn = g._stripe_map(parts, proj, 8)[0, :, :, 0].T  # (rows, c)
    for row, (s2, s3) in enumerate(zip([2] * 4 + [3] * 4, [5, 5, 5, 6, 6, 6, 7, 7])):
        torch.testing.assert_close(drawn[row], proj(parts[0, s2]) + proj(parts[0, s3]))
    # a stripe feature of either code changes G's output most in its own band: the 3-stripe branch's top one
    noise = torch.zeros(1, 4)
    for code, dim in (("identity", d), ("nuisance", e)):
        moved = {"identity": ids.clone(), "nuisance": nids.clone()}
        moved[code].view(1, 8, dim)[0, 5] += 3.0
        with torch.no_grad():
            change = (g(moved["identity"], moved["nuisance"], None, noise=noise) - g(ids, nids, None, noise=noise))
        rows = change.abs().mean(dim=(0, 1, 3))  # (64,)
        assert rows[:21].mean() > 2 * rows[43:].mean(), code


def test_without_stripes_the_generator_is_the_papers():
    g = Generator(3, id_dim=8, nid_dim=8, height=64, width=32)
    assert len(g.stripe_proj) == 0 and g.stripes == [] and len(g.grid_proj) == 0


def test_grid_draws_each_cell_into_its_block():
    """MODEL.EU_GRID: the nuisance code's cell features (after its K part features) are drawn into the block of
    the map each cell covers, at every hidden level with at least as many rows as the grid."""
    torch.manual_seed(0)
    e, rows, cols = 2, 4, 2
    g = Generator(3, id_dim=8 * 4, nid_dim=(8 + rows * cols) * e, noise_dim=4, height=64, width=32,
                  base_channels=64, class_input=False, grid=(rows, cols)).eval()
    assert g.nid_part_dim == e and sorted(g.grid_proj, key=int) == ["1", "2", "3", "4"]  # maps of 4-32 rows
    ids, nids = torch.randn(1, 32), torch.randn(1, (8 + rows * cols) * e)
    noise = torch.zeros(1, 4)
    moved = nids.clone()
    moved[0, 8 * e + (3 * cols + 1) * e:][:e] += 3.0  # cell (3, 1): bottom right, rows 48-63, columns 16-31
    with torch.no_grad():
        change = (g(ids, moved, None, noise=noise) - g(ids, nids, None, noise=noise)).abs().mean(dim=(0, 1))
    assert change[48:, 16:].mean() > 2 * change[:32, :16].mean()


def test_grid_and_stripes_read_their_own_slices_of_the_nuisance_code():
    torch.manual_seed(0)
    g = Generator(3, id_dim=8 * 4, nid_dim=(8 + 2) * 2, noise_dim=4, height=64, width=32, base_channels=64,
                  class_input=False, stripe_codes=("identity", "nuisance"), grid=(2, 1)).eval()
    assert g.stripe_proj["nuisance"]["1"].in_features == 2 and g.grid_proj["0"].in_features == 2
    assert g(torch.randn(2, 32), torch.randn(2, 20), None).shape == (2, 3, 64, 32)
