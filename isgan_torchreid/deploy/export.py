"""Export of the identity encoder to ONNX and TorchScript: files that run without this project.

The exported graph maps ``images`` (B, 3, H, W), normalised with the spec's mean/std, to ``features``
(B, D): by default the descriptor tools/test.py evaluates (f(x) + f(hflip(x)), L2-normalised, as the
spec says), or with ``raw`` the encoder's un-flipped, un-normalised output (what torchreid's
FeatureExtractor returns). The batch dimension is dynamic; H and W are fixed at export (the stripe
bins of :func:`isgan_torchreid.models.branches.part_pool` are computed for them). The spec (input size,
mean/std, flip/normalize) travels in the file: ONNX ``metadata_props``, TorchScript extra file
``spec.json``.
"""
import copy
import json
import warnings

import torch

from .. import storage
from ..errors import ISGANError
from .encoder import Descriptor

__all__ = ["FORMATS", "exported_module", "export_onnx", "export_torchscript", "export"]

FORMATS = ("onnx", "torchscript")


def exported_module(encoder, raw=False):
    """What gets exported: a CPU copy of the encoder (``raw``) or of its evaluated descriptor, in eval mode."""
    encoder = copy.deepcopy(encoder).cpu().eval()
    return (encoder if raw else Descriptor(encoder)).eval()


def _spec_of(encoder, height, width, raw):
    spec = dict(encoder.spec, height=height, width=width)
    if raw:
        spec.update(flip=False, normalize=False)
    return spec


def export_onnx(encoder, path, height=None, width=None, raw=False, dynamo=False, opset=17):
    """Write ``encoder`` as ONNX (dynamic batch) atomically; returns ``path``.

    ``dynamo`` False uses torch's TorchScript-based exporter (fast; deprecated by torch but present),
    True the torch.export-based one (needs onnxscript; ~10x slower to export, same graph semantics).
    """
    import onnx

    height, width = height or encoder.spec["height"], width or encoder.spec["width"]
    module = exported_module(encoder, raw)
    example = torch.zeros(2, 3, height, width)
    with storage.output_file(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter's notice
            if dynamo:
                torch.onnx.export(module, (example,), tmp, input_names=["images"], output_names=["features"],
                                  dynamo=True, external_data=False, opset_version=opset, verbose=False,
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
            else:
                torch.onnx.export(module, (example,), tmp, input_names=["images"], output_names=["features"],
                                  dynamo=False, opset_version=opset,
                                  dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
        model = onnx.load(tmp)
        spec = _spec_of(encoder, height, width, raw)
        onnx.helper.set_model_props(model, {"isgan_torchreid_spec": json.dumps(spec)})
        onnx.save(model, tmp)
    return path


def export_torchscript(encoder, path, height=None, width=None, raw=False):
    """Write ``encoder`` as a traced TorchScript module (dynamic batch) atomically; returns ``path``.

    Traced rather than scripted: the trace records the stripe slices for H x W, and the module runs
    with ``torch.jit.load`` alone.
    """
    height, width = height or encoder.spec["height"], width or encoder.spec["width"]
    module = exported_module(encoder, raw)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 marks torch.jit as deprecated
        traced = torch.jit.trace(module, torch.zeros(2, 3, height, width), check_trace=False)
        with storage.output_file(path) as tmp:
            torch.jit.save(traced, tmp, _extra_files={"spec.json": json.dumps(_spec_of(encoder, height, width, raw))})
    return path


def export(encoder, path, fmt, height=None, width=None, raw=False, dynamo=False):
    """:func:`export_onnx` or :func:`export_torchscript` by ``fmt``."""
    if fmt not in FORMATS:
        raise ISGANError(f"--format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    for name, value in (("height", height), ("width", width)):
        if value is not None and value < 32:
            raise ISGANError(f"--{name} {value} is too small for the encoder (its part-1 branch downsamples "
                             f"x32); use 32 or more, e.g. the training size")
    if fmt == "onnx":
        return export_onnx(encoder, path, height, width, raw, dynamo)
    return export_torchscript(encoder, path, height, width, raw)
