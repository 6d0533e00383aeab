"""Inference speed of the identity encoder in PyTorch eager, TorchScript and onnxruntime, and its file sizes."""
import os
import tempfile
import warnings

import torch
from tabulate import tabulate

from .common import timed

__all__ = ["bench_inference", "inference_tables"]

def bench_inference(cfg, batches=(1, 64), iters=3, warmup=1, threads=None, folder=None):
    """Images/s of the identity encoder (random weights, cfg's backbone/parts/size) in PyTorch eager, TorchScript
    and onnxruntime on the CPU, and the sizes of its safetensors, ONNX and TorchScript files.

    The encoder is the raw one (one forward per image; the evaluated descriptor's flip doubles the cost).
    ``threads``: intra-op threads of torch and onnxruntime (default: torch's current setting).
    Returns (speed rows [runtime, batch, ms/batch, images/s], size rows [file, MiB, bytes/parameter]).
    """
    import onnxruntime as ort

    from isgan_torchreid.deploy import Encoder, encoder_spec, save_encoder
    from isgan_torchreid.deploy.export import export_onnx, export_torchscript

    threads = threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(cfg.SEED)
        encoder = Encoder(encoder_spec(cfg)).eval()
        with torch.no_grad():  # the branches start as copies of one ResNet; trained ones differ (the ONNX
            for p in encoder.parameters():  # exporter would store identical tensors once)
                p.add_(1e-3 * torch.randn_like(p))
        params = sum(p.numel() for p in encoder.parameters())
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            files = {"safetensors": save_encoder(encoder, cfg, os.path.join(tmp, "encoder.safetensors")),
                     "onnx": export_onnx(encoder, os.path.join(tmp, "encoder.onnx"), raw=True),
                     "torchscript": export_torchscript(encoder, os.path.join(tmp, "encoder.pt"), raw=True)}
            sizes = [[name, os.path.getsize(path) / 2 ** 20, os.path.getsize(path) / params]
                     for name, path in files.items()]
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(files["onnx"], options, providers=["CPUExecutionProvider"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 marks torch.jit as deprecated
                scripted = torch.jit.load(files["torchscript"])
            runtimes = {
                "pytorch eager": lambda x: encoder(x),
                "torchscript": lambda x: scripted(x),
                "onnxruntime": lambda x: session.run(None, {"images": x.numpy()}),
            }
            rows = []
            gen = torch.Generator().manual_seed(0)
            for batch in batches:
                x = torch.randn(batch, 3, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, generator=gen)
                for name, run in runtimes.items():
                    with torch.no_grad():
                        sec, _ = timed(lambda: run(x), iters, warmup, torch.device("cpu"))
                    rows.append([name, batch, 1000 * sec, batch / sec])
    finally:
        torch.set_num_threads(previous)
    return rows, sizes, params


def inference_tables(rows, sizes, params):
    """The two tables of :func:`bench_inference`."""
    speed = tabulate([[n, b, f"{ms:.1f}", f"{ips:.1f}"] for n, b, ms, ips in rows],
                     headers=["runtime (CPU)", "batch", "ms/batch", "images/s"], tablefmt="github",
                     disable_numparse=True)
    files = tabulate([[n, f"{mib:.1f}", f"{bpp:.3f}"] for n, mib, bpp in sizes],
                     headers=["encoder file", "MiB", f"bytes / parameter ({params:,} parameters)"],
                     tablefmt="github", disable_numparse=True)
    return speed + "\n\n" + files
