"""The console scripts (``isgan-train``, ...) and ``python -m isgan_torchreid COMMAND``: the functions of tools/*.py
under installed names.

Each script reads its arguments from ``sys.argv``, as tools/*.py do, and drops its function's result: a console
script exits with what it returns, and a results dict would be printed as an error with exit status 1.
"""
import importlib
import sys

# COMMAND -> (module, function): imported when the command runs, so that one command (or --help) does not
# import every tool's dependencies
_ENTRY = {
    "train": (".cli.mains", "train_main"),
    "test": (".cli.mains", "test_main"),
    "compare": (".compare", "compare_main"),
    "extract": (".cli.mains", "extract_main"),
    "export": (".cli.mains", "export_main"),
    "visualize": (".visualize.main", "visualize_main"),
    "benchmark": (".benchmarks", "benchmark_main"),
}


def _run(command):
    module, function = _ENTRY[command]
    getattr(importlib.import_module(module, __package__), function)()


def train():
    _run("train")


def test():
    _run("test")


def compare():
    _run("compare")


def extract():
    _run("extract")


def export():
    _run("export")


def visualize():
    _run("visualize")


def benchmark():
    _run("benchmark")


# COMMAND -> (its console script isgan-COMMAND, what it does); pyproject.toml's [project.scripts] lists the same
COMMANDS = {
    "train": (train, "train IS-GAN (stages 1-3), MGN or a torchreid model; evaluate on DATA.TARGETS"),
    "test": (test, "evaluate a checkpoint's descriptor on DATA.TARGETS or -t/--targets"),
    "compare": (compare, "train and evaluate several methods under one config; one table"),
    "extract": (extract, "embed a folder or a list of images into an .npz"),
    "export": (export, "export the identity encoder to ONNX or TorchScript"),
    "visualize": (visualize, "pictures of a trained IS-GAN: interpolate, swap, grid, rank"),
    "benchmark": (benchmark, "speed, memory and disentanglement tables"),
}
PROG = "python -m isgan_torchreid"


def usage():
    width = max(map(len, COMMANDS)) + 2
    return "\n".join([f"usage: {PROG} COMMAND [ARGS ...]   (installed as isgan-COMMAND [ARGS ...])", "",
                      "commands:"] + [f"  {name.ljust(width)}{text}" for name, (_, text) in COMMANDS.items()]
                     + ["", f"{PROG} COMMAND --help lists a command's arguments. --config-file takes a path or",
                        f"the name of a packaged config: {PROG} train --list-configs lists them."])


def main(argv=None):
    """``python -m isgan_torchreid COMMAND [ARGS]``: run COMMAND's console script on ARGS; returns the exit status
    of a usage error (the command itself exits as its script does)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; use one of {', '.join(COMMANDS)} (see {PROG} --help)",
              file=sys.stderr)
        return 2
    sys.argv = [f"{PROG} {command}", *args]  # what the script reads; argparse names it in usage lines
    COMMANDS[command][0]()
    return 0
