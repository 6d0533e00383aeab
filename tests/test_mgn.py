"""Tests for the MGN baseline: torchreid-compatible train/eval outputs, factories and errors."""
import pytest
import torch
import torchreid

from isgan_torchreid.models.mgn import MGN, mgn_r18, mgn_r50

NUM_CLASSES = 9
SIZES = [(384, 128), (256, 128), (128, 64)]


@pytest.fixture(scope="module")
def mgn():
    torch.manual_seed(0)
    return mgn_r18(NUM_CLASSES, pretrained=False, use_gpu=False)


@pytest.mark.parametrize("hw", SIZES)
def test_eval_descriptor(mgn, hw):
    mgn.eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        desc = mgn(x)
        feat, _ = mgn.encoder_r(mgn.backbone(x))
    assert desc.shape == (2, 2048) and mgn.descriptor_dim == 2048
    assert torch.equal(desc, feat)  # concatenated BN outputs, not normalised
    assert not torch.allclose(desc.norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("hw", SIZES)
def test_train_softmax_outputs(mgn, hw):
    mgn.train()
    with torch.no_grad():
        logits = mgn(torch.randn(2, 3, *hw))
    assert isinstance(logits, list) and len(logits) == 8
    assert all(logit.shape == (2, NUM_CLASSES) for logit in logits)


def test_softmax_outputs_train_with_torchreid_loss(mgn):
    mgn.train()
    mgn.zero_grad()
    logits = mgn(torch.randn(2, 3, 128, 64))
    # torchreid's ImageSoftmaxEngine applies its criterion to each element (DeepSupervision)
    criterion = torchreid.losses.CrossEntropyLoss(NUM_CLASSES, use_gpu=False)
    loss = torchreid.losses.DeepSupervision(criterion, logits, torch.tensor([1, 2]))
    loss.backward()
    assert all(fc.weight.grad.abs().sum() > 0 for fc in mgn.encoder_r.classifiers)
    assert mgn.backbone[0].weight.grad.abs().sum() > 0


def test_train_triplet_outputs():
    torch.manual_seed(0)
    model = MGN(NUM_CLASSES, backbone="resnet18", pretrained=False, loss="triplet").train()
    x = torch.randn(4, 3, 128, 64)
    with torch.no_grad():
        logits, features = model(x)  # what ImageTripletEngine unpacks
        feat, _ = model.encoder_r(model.backbone(x))  # same batch: same BN batch statistics
    assert len(logits) == 8 and len(features) == 3
    parts = feat.view(4, 8, 256)
    for tensor, k in zip(features, [0, 1, 4]):  # the global features
        assert tensor.shape == (4, 256)
        assert torch.allclose(tensor, parts[:, k])
    loss = torchreid.losses.DeepSupervision(
        torchreid.losses.TripletLoss(margin=0.3), features, torch.tensor([0, 0, 1, 1])
    )
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (4, 2048)


def test_factory_kwargs_and_variant():
    model = mgn_r18(5, loss="triplet", pretrained=False, use_gpu=False, parts=(1, 3), feat_dim=32)
    assert model.loss == "triplet"
    assert model.encoder_r.num_features == 5 and model.descriptor_dim == 160
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 128, 64)).shape == (2, 160)


def test_r50_parameter_count():
    model = mgn_r50(751, pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == 70_351_800  # backbone + E_R + classifiers


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss": "arcface"}, "softmax, triplet"),
        ({"backbone": "vgg16"}, "resnet18, resnet34, resnet50"),
        ({"parts": (1, 1)}, "MODEL.PARTS"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MGN(3, **{"backbone": "resnet18", "pretrained": False, **kwargs})
