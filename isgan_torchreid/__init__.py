"""IS-GAN (Eom & Ham, NeurIPS 2019) for torchreid.

Importing the package registers the models (isgan_r50/r34/r18, mgn_r50/r18) into
``torchreid.models.build_model`` and the embedded synthetic datasets (synthperson,
synthperson_b) into ``torchreid.data``, registers the training methods (IS-GAN's, identity training) and the
models' config rules with :mod:`isgan_torchreid.config`, and applies the narrow torchreid compatibility
patches of :mod:`isgan_torchreid.compat`.

Trained models leave the trainer through :func:`load_encoder` (any checkpoint kind -> the identity
encoder, eval mode) and :func:`embed` (images -> the descriptor tools/test.py evaluates); an IS-GAN's generative
half through :func:`load_gan` (a stage-2/3 checkpoint -> ``encode`` images into identity and nuisance codes,
``decode`` any mix into images); see :mod:`isgan_torchreid.deploy`.
"""
from . import compat
from .data.synthetic.datasets import DATASETS
from .deploy import embed, load_encoder, load_gan
from .engine import objective  # noqa: F401  (registers the methods: config.METHODS)
from .models import MODELS  # (registers IS-GAN's config rules: config.MODEL_RULES)

__version__ = "0.1.0"

compat.apply_patches()
for _name, _builder in MODELS.items():
    compat.register_model(_name, _builder)
for _name, _cls in DATASETS.items():
    compat.register_dataset(_name, _cls)
