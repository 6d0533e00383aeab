"""Benchmarks printed as tables (speed/memory targets live here, never in unit tests)."""
import concurrent.futures
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch
import torchreid
from tabulate import tabulate

from isgan_torchreid import authors
from isgan_torchreid.engine.evaluation import compute_distance_matrix, evaluate_rank
from isgan_torchreid.errors import ISGANError
from isgan_torchreid.profiling import profile_step, profile_tables


def bench_evaluator(num_query=3368, num_gallery=15913, num_ids=750, num_cams=6, seed=0):
    """Time torchreid's pure-Python `evaluate_rank` against ours on a random Market-sized problem.

    Returns rows [name, seconds, speedup over torchreid, equal to torchreid].
    """
    gen = torch.Generator().manual_seed(seed)
    q_pids = torch.randint(num_ids, (num_query,), generator=gen).numpy()
    g_pids = torch.randint(num_ids, (num_gallery,), generator=gen).numpy()
    q_camids = torch.randint(num_cams, (num_query,), generator=gen).numpy()
    g_camids = torch.randint(num_cams, (num_gallery,), generator=gen).numpy()
    qf = torch.randn(num_query, 64, generator=gen)  # (Q, D)
    gf = torch.randn(num_gallery, 64, generator=gen)  # (G, D)
    distmat = compute_distance_matrix(qf, gf).numpy()  # (Q, G)
    args = (distmat, q_pids, g_pids, q_camids, g_camids)

    start = time.perf_counter()
    ref_cmc, ref_map = torchreid.metrics.evaluate_rank(*args, use_cython=False)
    ref_s = time.perf_counter() - start
    start = time.perf_counter()
    cmc, mAP = evaluate_rank(*args)
    ours_s = time.perf_counter() - start

    equal = bool(np.array_equal(cmc, ref_cmc) and mAP == ref_map)
    return [
        ['torchreid evaluate_rank (python)', ref_s, 1.0, 'reference'],
        ['isgan_torchreid evaluate_rank', ours_s, ref_s / ours_s, equal],
    ]


class _NoData:
    """The minimum of a torchreid data manager that the engine reads when driven batch by batch."""

    def __init__(self, num_classes):
        self.train_loader = self.test_loader = None
        self.num_train_pids = num_classes
        self.sources = []


NUM_CLASSES = 751  # Market-1501's training identities


def _sync(device):
    """Wait for queued CUDA work, so that the clock measures it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, iters, warmup, device):
    """Median seconds of ``fn()`` over ``iters`` calls after ``warmup`` calls; peak memory in bytes."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = interleaved_seconds({"fn": fn}, iters, warmup=0, sync=lambda: _sync(device))["fn"]
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss()
    return statistics.median(times), peak


def _peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss():
    """Resident memory now (Linux /proc; the peak so far where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _peak_rss()


def interleaved_seconds(steps, iters, warmup=1, sync=None, clock=time.perf_counter):
    """Seconds of each call of the ``steps`` ({name: fn}), called in turn (A B A B ...) after ``warmup`` rounds.

    Interleaving exposes every implementation to the same machine state (load, heat, memory), so ratios
    taken within one run stay fair when the machine drifts. ``sync()`` runs before each clock reading.
    Returns {name: [seconds of each of the ``iters`` timed calls]}.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    seconds = {name: [] for name in steps}
    for _ in range(iters):
        for name, fn in steps.items():
            sync()
            start = clock()
            fn()
            sync()
            seconds[name].append(clock() - start)
    return seconds


def spread(seconds):
    """(min, median, max) of a list of timings."""
    return min(seconds), statistics.median(seconds), max(seconds)


def _in_fresh_process(fn, *args):
    """``fn(*args)`` in a new (spawned) process: own peak memory, own imports; its exceptions re-raised here."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def _our_engine(cfg, method, batch, device):
    """Our engine on a random P x K batch of the configured size: (engine, model, batch dict)."""
    import isgan_torchreid  # noqa: F401  (registration in a fresh process)
    from isgan_torchreid.engine.staged import ISGANEngine
    from isgan_torchreid.models import build_model

    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(batch, 3, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, generator=gen)
    data = {"img": imgs, "pid": torch.arange(batch) // cfg.SAMPLER.K}  # P x K layout
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.NAME, cfg.MODEL.PRETRAINED = method, False
    model = build_model(cfg, NUM_CLASSES)
    return ISGANEngine(cfg, _NoData(NUM_CLASSES), model, device), model, data


def bench_training(cfg, methods=("isgan", "mgn", "pcb_p6"), batch=16, iters=2, warmup=1, device=None):
    """ms/iteration and images/s of each IS-GAN stage, inference, MGN and torchreid's pcb_p6.

    Random inputs of the configured size; ``cfg`` provides the model, loss and optimiser settings.
    Each method runs in a fresh process, so the CPU peak (max RSS) is per method.
    Returns rows [method, phase, ms/iter, images/s, peak memory MiB].
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for method in methods:
        rows += _in_fresh_process(_bench_method, cfg, method, batch, iters, warmup, str(device))
    return rows


def _bench_method(cfg, method, batch, iters, warmup, device):
    device = torch.device(device)
    engine, model, data = _our_engine(cfg, method, batch, device)
    rows = []
    for stage in (1, 2, 3) if method == "isgan" else (1,):
        engine.enter_stage(stage)
        sec, peak = _timed(lambda: engine.forward_backward(data), iters, warmup, device)
        rows.append([method, f"train stage {stage}" if method == "isgan" else "train", 1000 * sec, batch / sec,
                     peak / 2**20])
    model.eval()
    with torch.no_grad():
        x = data["img"].to(device)
        sec, peak = _timed(lambda: model(x), iters, warmup, device)
    rows.append([method, "inference", 1000 * sec, batch / sec, peak / 2**20])
    return rows


def training_table(rows, device):
    """Rows of :func:`bench_training` as a table."""
    table = [[method, phase, f"{ms:.0f}", f"{ips:.2f}", f"{mib:.0f}"] for method, phase, ms, ips, mib in rows]
    headers = ["method", "phase", "ms/iter", "images/s",
               "peak MiB" + (" (GPU)" if device.type == "cuda" else " (max RSS)")]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def compare_with_authors(cfg, reference, batch, iters, warmup, device, stages=(1, 2, 3)):
    """Same-run seconds per training iteration of our engine and of the authors' code, stage by stage.

    The authors' code is imported from the checkout ``reference`` and patched in memory
    (:mod:`isgan_torchreid.authors`). Both get the same random P x K batch. Per stage, after ``warmup``
    untimed rounds, they alternate ours, authors', ours, ... for ``iters`` timed iterations each.
    Returns {stage: {"ours": [s, ...], "authors": [s, ...]}}.
    """
    device = torch.device(device)
    code = authors.load(reference, device, batch // cfg.SAMPLER.K, cfg.SAMPLER.K, NUM_CLASSES)
    engine, _, data = _our_engine(cfg, "isgan", batch, device)
    seconds = {}
    for stage in stages:
        engine.enter_stage(stage)
        theirs = authors.AuthorsStage(code, stage)
        seconds[stage] = interleaved_seconds(
            {"ours": lambda: engine.forward_backward(data), "authors": lambda: theirs.step(data["img"], data["pid"])},
            iters, warmup, sync=lambda: _sync(device))
        del theirs  # one of their models at a time
    return seconds


def comparison_table(seconds):
    """{stage: {"ours": [...], "authors": [...]}} as a table of spreads and speed-ups (authors' / ours)."""
    table = []
    for stage, times in seconds.items():
        ours, theirs = spread(times["ours"]), spread(times["authors"])
        pairs = [a / o for o, a in zip(times["ours"], times["authors"])]
        table.append([f"train stage {stage}", " / ".join(f"{1000 * s:.0f}" for s in ours),
                      " / ".join(f"{1000 * s:.0f}" for s in theirs), f"{theirs[1] / ours[1]:.2f}x",
                      f"{min(pairs):.2f}x - {max(pairs):.2f}x"])
    headers = ["phase", "ours ms/iter (min / median / max)", "authors' ms/iter (min / median / max)",
               "speed-up (authors' / ours, medians)", "speed-up per pair (min - max)"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def profile_stages(cfg, batch, device, stages=(1, 2, 3), limit=15):
    """torch.profiler tables of one iteration of each of our stages (after one warm-up), as text."""
    device = torch.device(device)
    engine, model, data = _our_engine(cfg, "isgan", batch, device)
    parts = []
    for stage in stages:
        engine.enter_stage(stage)
        step = lambda: engine.forward_backward(data)  # noqa: E731
        step()
        events = profile_step(step, model, device)
        parts.append(f"profile of one stage-{stage} iteration (after one warm-up)\n\n"
                     + profile_tables(events, device, limit))
    return "\n\n".join(parts)


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
                        sec, _ = _timed(lambda: run(x), iters, warmup, torch.device("cpu"))
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


# MSMT17's test split: 11,659 queries and 82,161 gallery images of 3,060 identities from 15 cameras
MSMT17_SIZE = (11659, 82161, 3060, 15)


def bench_gallery(num_query=MSMT17_SIZE[0], num_gallery=MSMT17_SIZE[1], num_ids=MSMT17_SIZE[2],
                  num_cams=MSMT17_SIZE[3], dim=2048, max_bytes=None):
    """Time and peak memory of ``evaluate()`` on random L2-normalised features, in a fresh process.

    Returns {'seconds', 'features_mib', 'peak_rss_mib', 'evaluation_peak_mib' (peak RSS above the resident
    memory once the features existed), 'full_distmat_mib' (what a Q x G float32 matrix would take), 'mAP',
    'budget_mib'}.
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_bench_gallery, num_query, num_gallery, num_ids, num_cams, dim, max_bytes).result()


def _bench_gallery(num_query, num_gallery, num_ids, num_cams, dim, max_bytes):
    from isgan_torchreid.engine import evaluation

    gen = torch.Generator().manual_seed(0)
    qf = torch.nn.functional.normalize(torch.randn(num_query, dim, generator=gen), dim=1)
    gf = torch.nn.functional.normalize(torch.randn(num_gallery, dim, generator=gen), dim=1)
    labels = [torch.randint(high, (n,), generator=gen).numpy()
              for high, n in ((num_ids, num_query), (num_ids, num_gallery), (num_cams, num_query),
                              (num_cams, num_gallery))]
    before = _current_rss()
    start = time.perf_counter()
    result = evaluation.evaluate(qf, gf, *labels, max_bytes=max_bytes or evaluation.MAX_BYTES)
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    return {"seconds": seconds, "features_mib": (num_query + num_gallery) * dim * 4 / 2 ** 20,
            "peak_rss_mib": peak / 2 ** 20, "evaluation_peak_mib": (peak - before) / 2 ** 20,
            "full_distmat_mib": num_query * num_gallery * 4 / 2 ** 20, "mAP": result["mAP"],
            "budget_mib": (max_bytes or evaluation.MAX_BYTES) / 2 ** 20}


def gallery_table(num_query, num_gallery, result):
    """One row of :func:`bench_gallery`."""
    row = [f"{num_query:,} x {num_gallery:,}", f"{result['seconds']:.1f}", f"{result['features_mib']:.0f}",
           f"{result['evaluation_peak_mib']:.0f}", f"{result['peak_rss_mib']:.0f}", f"{result['budget_mib']:.0f}",
           f"{result['full_distmat_mib']:.0f}"]
    return tabulate([row], headers=["query x gallery", "seconds", "features MiB", "evaluation peak MiB (RSS above "
                                    "features)", "process peak MiB", "budget MiB", "full Q x G matrix MiB"],
                    tablefmt="github", disable_numparse=True)


def benchmark_main(argv=None):
    """tools/benchmark.py: speed/memory tables, the same-run comparison with the authors' code, profiles."""
    from isgan_torchreid.cli import parser, reports_errors, select_device
    from isgan_torchreid.config import load_config

    @reports_errors
    def main(argv):
        p = parser("Print speed/memory tables: IS-GAN stages 1-3 and inference, MGN, torchreid's pcb_p6; "
                   "the fast evaluator against torchreid's; optionally the authors' code timed in the same "
                   "run, and profiles of our stages.")
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--iters", type=int, help="timed iterations (default 2; with --reference, per stage and "
                       "implementation, default 5)")
        p.add_argument("--methods", default="isgan,mgn,pcb_p6")
        p.add_argument("--skip-training", action="store_true")
        p.add_argument("--skip-evaluator", action="store_true")
        p.add_argument("--reference", metavar="DIR", help="a checkout of the authors' code (git clone "
                       "https://github.com/cvlab-yonsei/ISGAN): time it against ours in the same run, "
                       "interleaved, per stage")
        p.add_argument("--profile", action="store_true", help="torch.profiler tables of one iteration of each "
                       "of our stages: module groups (forward/backward) and top operators")
        p.add_argument("--inference", action="store_true", help="only the identity encoder's inference table "
                       "(eager / TorchScript / onnxruntime, CPU) and its file sizes")
        p.add_argument("--inference-batches", default="1,64")
        p.add_argument("--threads", type=int, help="CPU threads for --inference (default: torch's)")
        p.add_argument("--gallery", nargs="*", type=int, metavar="N", help="only the evaluation of random features "
                       "at gallery scale: [QUERIES GALLERY] (default: MSMT17's 11659 82161)")
        p.add_argument("--max-mib", type=int, help="evaluation memory budget for --gallery (default: evaluate's)")
        args = p.parse_args(argv)
        cfg = load_config(args.config_file, args.opts)
        if args.inference or args.gallery is not None:
            return _deploy_tables(cfg, args)
        device = select_device(cfg)
        if args.iters is not None and args.iters < 1:
            raise ISGANError(f"--iters must be at least 1, not {args.iters}")
        if args.reference:
            authors.check_checkout(args.reference)
            authors.check_setting(cfg.MODEL.BACKBONE, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, args.batch, cfg.SAMPLER.K)
        torch.manual_seed(cfg.SEED)
        print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
              f"{cfg.MODEL.BACKBONE} {cfg.DATA.HEIGHT}x{cfg.DATA.WIDTH}, batch {args.batch}, "
              f"TRAIN.AMP {cfg.TRAIN.AMP}, TRAIN.CHANNELS_LAST {cfg.TRAIN.CHANNELS_LAST}")
        if not args.skip_training:
            rows = bench_training(cfg, methods=args.methods.split(","), batch=args.batch, iters=args.iters or 2,
                                  device=device)
            print(training_table(rows, device))
        if args.reference:
            iters = args.iters or 5
            seconds = _in_fresh_process(compare_with_authors, cfg, os.path.abspath(args.reference), args.batch,
                                        iters, 1, str(device))
            print(f"\nSame run, ours and the authors' code ({args.reference}) alternating per stage: one warm-up "
                  f"each, then {iters} timed iterations each; batch {args.batch} = "
                  f"{args.batch // cfg.SAMPLER.K} x {cfg.SAMPLER.K}, random inputs.")
            print(comparison_table(seconds))
        if args.profile:
            print()
            print(_in_fresh_process(profile_stages, cfg, args.batch, str(device)))
        if not args.skip_evaluator:
            rows = bench_evaluator()
            print(tabulate([[n, f"{s:.2f}", f"{x:.1f}x", e] for n, s, x, e in rows],
                           headers=["evaluator (3368 x 15913)", "seconds", "speed-up", "equal"],
                           tablefmt="github", disable_numparse=True))

    return main(argv)


def _deploy_tables(cfg, args):
    if args.inference:
        batches = [int(b) for b in args.inference_batches.split(",")]
        rows, sizes, params = bench_inference(cfg, batches, args.iters or 3, threads=args.threads)
        print(f"identity encoder: {cfg.MODEL.BACKBONE} {cfg.DATA.HEIGHT}x{cfg.DATA.WIDTH}, "
              f"parts {list(cfg.MODEL.PARTS)}, {args.threads or torch.get_num_threads()} CPU threads, torch {torch.__version__}, median of "
              f"{args.iters or 3}")
        print(inference_tables(rows, sizes, params))
    if args.gallery is not None:
        if len(args.gallery) not in (0, 2):
            raise ISGANError(f"--gallery takes 0 or 2 numbers (QUERIES GALLERY), got {args.gallery}")
        num_query, num_gallery = args.gallery or MSMT17_SIZE[:2]
        max_bytes = args.max_mib * 2 ** 20 if args.max_mib else None
        result = bench_gallery(num_query, num_gallery, max_bytes=max_bytes)
        print(gallery_table(num_query, num_gallery, result))
