"""Entry points of an installed package: packaged configs by name, --list-configs, the console scripts and
``python -m isgan_torchreid`` (pyproject.toml's side: tests/test_packaging.py)."""
import importlib
import os
import subprocess
import sys

import pytest

from isgan_torchreid import cli, commands
from isgan_torchreid.benchmarks import benchmark_main
from isgan_torchreid.compare import compare_main
from isgan_torchreid.config import CONFIG_DIR, load_config, packaged_configs, resolve_config_file
from isgan_torchreid.errors import ISGANError

from conftest import REPO

NAMES = sorted(packaged_configs())
MARKET = os.path.join(CONFIG_DIR, "isgan_market.yaml")


def test_packaged_configs_are_the_yaml_files_of_the_package():
    assert NAMES == sorted(f[:-len(".yaml")] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))
    assert {"isgan_market", "isgan_synthetic", "compare_synthetic"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_packaged_config_loads_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # any folder: nothing is read relative to it
    assert load_config(name) == load_config(os.path.join(CONFIG_DIR, f"{name}.yaml"))


@pytest.mark.parametrize("arg", ["isgan_market", "isgan_market.yaml", "configs/isgan_market.yaml",
                                 "./configs/isgan_market.yaml"])
def test_a_name_means_the_packaged_config(arg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_file(arg) == MARKET


def test_an_existing_file_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "isgan_market.yaml").write_text("SEED: 5\n")
    assert resolve_config_file("configs/isgan_market.yaml") == "configs/isgan_market.yaml"
    assert load_config("configs/isgan_market.yaml").SEED == 5
    assert load_config("isgan_market").SEED == 1  # no file of that exact name here: the packaged one


@pytest.mark.parametrize("arg", ["isgan_markt", "elsewhere/isgan_market.yaml", "/nonexistent/isgan_market.yaml"])
def test_an_unknown_config_is_one_line_naming_the_choices(arg):
    with pytest.raises(ISGANError) as info:
        load_config(arg)
    message = str(info.value)
    assert message.startswith(f"config file not found: {arg}; ") and "\n" not in message
    assert message.endswith(", ".join(NAMES))


def test_base_chains_resolve_inside_the_package_and_from_a_users_config(tmp_path, monkeypatch):
    cfg = load_config("isgan_tri_market")  # -> isgan_market.yaml -> _base_isgan.yaml, beside each other
    assert cfg.LOSS.ISGAN_TRIPLET and cfg.DATA.SOURCES == ["market1501"] and cfg.LOSS.LAMBDA_R == 20.0
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "mine.yaml"
    own.write_text("_BASE_: isgan_market\nSEED: 3\n")  # no copy of the packaged config needed
    cfg = load_config(str(own))
    assert cfg.SEED == 3 and cfg.DATA.SOURCES == ["market1501"] and cfg.LOSS.LAMBDA_R == 20.0


@pytest.mark.parametrize("main", [cli.train_main, cli.test_main, compare_main, benchmark_main])
def test_list_configs_prints_every_name_and_exits_0(main, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--list-configs"])  # without the otherwise required --config-file
    assert info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert CONFIG_DIR in lines[0] and [line.split()[0] for line in lines[1:]] == NAMES
    assert any(line.startswith("isgan_market ") and "Market-1501" in line for line in lines)


@pytest.mark.parametrize("name", list(commands.COMMANDS))
def test_each_script_runs_its_function_and_drops_the_result(name, monkeypatch):
    # a console script exits with what it returns: a results dict would exit 1, printed as an error
    module, function = commands._ENTRY[name]
    called = []
    monkeypatch.setattr(importlib.import_module(module, "isgan_torchreid"), function,
                        lambda: called.append(name) or {"results": 1})
    assert commands.COMMANDS[name][0]() is None and called == [name]


def test_module_runs_a_command_under_its_name(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main sets sys.argv for the command
    with pytest.raises(SystemExit) as info:
        commands.main(["test", "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m isgan_torchreid test ")


def python_m(*args):
    # cwd: -m imports the checkout's package, as tools/*.py do
    return subprocess.run([sys.executable, "-m", "isgan_torchreid", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_python_m_help_lists_the_commands():
    proc = python_m("--help")
    assert proc.returncode == 0 and proc.stderr == ""
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert listed == ["train", "test", "compare", "extract", "export", "visualize", "benchmark"]


def test_python_m_unknown_command_is_one_line():
    proc = python_m("trian", "--config-file", "isgan_market")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["error: unknown command 'trian'; use one of train, test, compare, extract, "
                                        "export, visualize, benchmark (see python -m isgan_torchreid --help)"]
