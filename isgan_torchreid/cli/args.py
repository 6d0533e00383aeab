"""The tools' arguments, parsed alike: the shared parser (``--config-file``, ``--list-configs``, ``--debug``, the
trailing ``KEY VALUE`` overrides), list-valued flags wherever they stand, the dataset flags."""
import argparse

from ..config import get_default_config, list_configs
from ..errors import ISGANError


class ListConfigs(argparse.Action):
    """``--list-configs``: print the packaged configs and exit 0 while parsing, as ``--help`` does, so that
    a required ``--config-file`` is not asked for."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(list_configs())
        parser.exit()

def parser(description, config_help=None):
    """``--config-file FILE|NAME [--list-configs] [--debug] [KEY VALUE ...]``, shared by every tool.

    ``config_help``: the tool may go without --config-file, and this says what it uses then."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config-file", required=config_help is None, help="YAML config: a file (may name a _BASE_) or "
                   "the name of a packaged config, e.g. isgan_market (see --list-configs)"
                   + (f"; {config_help}" if config_help else ""))
    p.add_argument("--list-configs", action=ListConfigs, help="list the packaged configs and exit")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p

def parse_args(p, argv):
    """``p.parse_args(argv)``, refusing a flag that ended up among the trailing ``KEY VALUE`` overrides."""
    args = p.parse_args(argv)
    late = [a for a in args.opts if a.startswith("--")]
    if late:
        raise ISGANError(f"{late[0]} comes after the KEY VALUE overrides (everything after the first KEY is an "
                         f"override); put flags before them")
    return args

def pop_list_flag(argv, flag, accept, example):
    """Take ``flag v1 v2 ...`` out of argv, wherever it stands; returns (the rest, the values or None if absent).
    ``flag``: its spelling, or a tuple of spellings (``("-t", "--targets")``); errors name the one used.

    Every tool parses its list-valued flags (--stages, --targets, --methods, --weights, ...) here, the same way:
    values follow the flag separated by spaces, commas or both (``--stages 2 3``, ``--stages 2,3``,
    ``--stages=2,3``), and the flag may be repeated (values add up). A value ends where an argument is not
    admitted by ``accept`` (another flag, a ``KEY VALUE`` override). argparse cannot do this beside the
    trailing overrides, which it would swallow.
    """
    spellings = (flag,) if isinstance(flag, str) else flag
    rest, values, found = [], [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        used = next((f for f in spellings if arg == f or arg.startswith(f + "=")), None)
        if used is None:
            rest.append(arg)
            i += 1
            continue
        found = True
        taken = [arg[len(used) + 1:]] if arg != used else []
        i += 1
        while arg == used and i < len(argv) and _values(argv[i]) and all(accept(v) for v in _values(argv[i])):
            taken.append(argv[i])
            i += 1
        items = [v for t in taken for v in _values(t)]
        if not items:
            raise ISGANError(f"{used} needs values, e.g. {used} {example}")
        bad = [v for v in items if not accept(v)]
        if bad:
            raise ISGANError(f"{used} {bad[0]}: not a valid value; e.g. {used} {example}")
        values += items
    return rest, (values if found else None)

def _values(token):
    return [v for v in token.split(",") if v]

def add_data_flags(p):
    """torchreid's dataset flags, for --help: ``-s/--sources`` and ``-t/--targets`` (popped by
    :func:`pop_data_flags`), ``--root``."""
    p.add_argument("-s", "--sources", metavar="NAME", help="training datasets (overrides DATA.SOURCES), e.g. "
                   "-s market1501 or -s market1501 dukemtmcreid")
    p.add_argument("-t", "--targets", metavar="NAME", help="datasets to evaluate on (overrides DATA.TARGETS; "
                   "empty: the sources), e.g. -t market1501 dukemtmcreid or -t market1501,dukemtmcreid")
    p.add_argument("--root", help="the datasets' folder (overrides DATA.ROOT), e.g. --root ~/reid-data")

def pop_data_flags(argv):
    """Take ``-s/--sources`` and ``-t/--targets`` out of argv, wherever they stand (list flags, as
    :func:`pop_list_flag` parses them); returns (the rest, their overrides: DATA.SOURCES / DATA.TARGETS lists)."""
    opts = []
    for key, spellings in (("DATA.SOURCES", ("-s", "--sources")), ("DATA.TARGETS", ("-t", "--targets"))):
        argv, names = pop_list_flag(argv, spellings, is_name, "market1501 dukemtmcreid")
        if names:
            opts += [key, names]
    return argv, opts

def data_overrides(args, popped):
    """The overrides of the dataset flags: -s/-t as popped, and as argparse took them where pop_data_flags did not
    see them (``-tNAME``, an abbreviated ``--targ NAME``), then --root (DATA.ROOT)."""
    opts = list(popped)
    for key, value in (("DATA.SOURCES", args.sources), ("DATA.TARGETS", args.targets)):
        if value:
            opts += [key, _values(value)]
    return opts + (["DATA.ROOT", args.root] if args.root else [])

def is_name(arg):
    """A dataset/method name, as opposed to a flag or an upper-case config KEY."""
    return not arg.startswith("-") and arg != arg.upper()

def is_config_key(arg):
    """A ``KEY`` of the overrides: its first dotted part is a top-level config key (SEED, DATA, TRAIN, ...)."""
    return arg.split(".")[0] in get_default_config()

def is_value(arg):
    """A path or number given to a list flag, as opposed to a flag or a config KEY."""
    return not arg.startswith("-") and not is_config_key(arg)


def deploy_parser(description):
    """``--weights FILE [--debug]``: the deployment tools' parser (extract, export)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--weights", required=True, help="encoder.safetensors, a .pth.tar checkpoint (ours or torchreid's)")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors")
    return p
