"""The project's models: IS-GAN and the MGN baseline, registered into torchreid by name."""
from .. import compat
from ..config import MODEL_ALIASES, MODEL_RULES
from ..errors import ISGANError
from .isgan import ISGAN, check_config, isgan_r18, isgan_r34, isgan_r50
from .mgn import MGN, mgn_r18, mgn_r50

# names for torchreid.models.build_model(name, num_classes, loss, pretrained, use_gpu)
MODELS = {
    "isgan_r50": isgan_r50,
    "isgan_r34": isgan_r34,
    "isgan_r18": isgan_r18,
    "mgn_r50": mgn_r50,
    "mgn_r18": mgn_r18,
}


MODEL_RULES["isgan"] = check_config  # G's image size, E_U's grid, G's stripes: checked as the config loads
# in a config, MODEL.NAME isgan_r18 means MODEL.NAME isgan with MODEL.BACKBONE resnet18 (and so on)
MODEL_ALIASES.update({name: (name.split("_")[0], f"resnet{name.rsplit('_r', 1)[1]}") for name in MODELS})


def trains_triplet(cfg) -> bool:
    """Whether the config's model returns features for the batch-hard triplet term in training: MGN, and IS-GAN
    with LOSS.ISGAN_TRIPLET (the E_R baseline and torchreid's models train on cross-entropy alone)."""
    return cfg.MODEL.NAME == "mgn" or (cfg.MODEL.NAME == "isgan" and cfg.LOSS.ISGAN_TRIPLET)


def build_model(cfg, num_classes):
    """MODEL.NAME isgan | baseline | mgn (built from MODEL.*) or any torchreid model name (e.g. pcb_p6).

    ``baseline`` is IS-GAN's E_R network alone (trunk + E_R, cross-entropy only; paper Sec. 3.2): the same
    architecture and, for the same seed, the same initial weights as IS-GAN's E_R.
    """
    m = cfg.MODEL
    if m.NAME == "isgan":
        return ISGAN(num_classes, backbone=m.BACKBONE, pretrained=m.PRETRAINED, parts=tuple(m.PARTS),
                     id_dim=m.ID_DIM, nid_dim=m.NID_DIM, noise_dim=m.NOISE_DIM, height=cfg.DATA.HEIGHT,
                     width=cfg.DATA.WIDTH, eu_pool=m.EU_POOL, g_init=m.G_INIT, g_dropout=m.G_DROPOUT,
                     g_class_input=m.G_CLASS_INPUT, g_width=m.G_WIDTH, d_width=m.D_WIDTH,
                     g_stripes=m.G_STRIPES, eu_grid=tuple(m.EU_GRID) or None,
                     eu_shared=m.EU_BRANCHES == "shared", eu_input=m.EU_INPUT, eu_trunk=m.EU_TRUNK,
                     nuisance_adversary=cfg.LOSS.LAMBDA_ADV_U > 0,
                     identity_teacher=cfg.LOSS.R_FAKE_JUDGE == "teacher",
                     loss="triplet" if trains_triplet(cfg) else "softmax")  # triplet: train forward adds features
    if m.NAME in ("mgn", "baseline"):  # MGN: CE on all K logits + batch-hard triplet on the globals; baseline: CE
        return MGN(num_classes, backbone=m.BACKBONE, pretrained=m.PRETRAINED, parts=tuple(m.PARTS),
                   feat_dim=m.ID_DIM, loss="triplet" if trains_triplet(cfg) else "softmax")
    factory = compat.model_factory()
    if m.NAME not in factory:
        raise ISGANError(f"MODEL.NAME {m.NAME!r} is unknown; use isgan, baseline, mgn or a torchreid model "
                         f"({', '.join(sorted(factory))})")
    try:
        return factory[m.NAME](num_classes=num_classes, loss="softmax", pretrained=m.PRETRAINED, use_gpu=False)
    except OSError as e:  # torchreid downloads ImageNet weights from its own URLs
        raise ISGANError(f"could not load ImageNet weights for {m.NAME} ({e}); set MODEL.PRETRAINED False, "
                         f"or run once with internet access to fill the torch hub cache") from None
