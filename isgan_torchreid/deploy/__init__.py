"""Trained models leave the trainer: the identity encoder alone, its compact weights, embedding and export."""
from .embedding import embed, extract, list_images, market_labels
from .encoder import (FORMAT, SPEC_KEYS, Descriptor, Encoder, encoder_spec, encoder_state, has_identity_encoder,
                      load_encoder, read_encoder_file, save_encoder)
