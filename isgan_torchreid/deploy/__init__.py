"""Trained models leave the trainer: the identity encoder alone, its compact weights, embedding and export.

* :mod:`.encoder`: ``Encoder`` (trunk + E_R, no classifiers/E_U/G/D), ``save_encoder`` (encoder.safetensors),
  ``load_encoder`` (any checkpoint kind -> eval-mode Encoder);
* :mod:`.embedding`: ``embed`` (images -> the evaluated descriptor), ``extract`` (streamed to an .npz);
* :mod:`.export`: ONNX / TorchScript files that run without this project;
* :mod:`.gan`: ``load_gan`` (a stage-2/3 IS-GAN checkpoint -> ``GAN``: ``encode`` images into identity and
  nuisance codes, ``decode`` any mix of them into images).
"""
from .embedding import embed, extract, list_images, market_labels
from .encoder import (FORMAT, SPEC_KEYS, Descriptor, Encoder, encoder_spec, encoder_state, has_identity_encoder,
                      load_encoder, read_encoder_file, save_encoder)
from .gan import GAN, load_gan

__all__ = ["embed", "extract", "list_images", "market_labels", "FORMAT", "SPEC_KEYS", "Descriptor", "Encoder",
           "encoder_spec", "encoder_state", "has_identity_encoder", "load_encoder", "read_encoder_file",
           "save_encoder", "GAN", "load_gan"]
