"""pyproject.toml as pip reads it: ranges only (pip must keep a user's torch and torchreid, and let them choose
onnxruntime or onnxruntime-gpu), the metadata an index page shows, the split of the extras, the console scripts
and the packaged configs."""
import fnmatch
import importlib
import os

import pytest
from packaging.requirements import Requirement  # pytest's own dependency

from conftest import REPO

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    PYPROJECT = tomllib.load(f)
PROJECT = PYPROJECT["project"]
DEPENDENCIES = PROJECT["dependencies"]
EXTRAS = PROJECT["optional-dependencies"]


def names(requirements):
    return {Requirement(r).name for r in requirements}


@pytest.mark.parametrize("where, text", [("dependencies", r) for r in DEPENDENCIES]
                         + [(f"[{extra}]", r) for extra, reqs in EXTRAS.items() for r in reqs])
def test_every_requirement_is_a_range(where, text):
    req = Requirement(text)  # InvalidRequirement for a line pip could not read
    assert not any(s.operator in ("==", "===") for s in req.specifier), f"{where}: {text} pins a version; use a range"
    # the Makefile's .venv-src recipe reads the requirements from the metadata without evaluating markers
    assert req.marker is None, f"{where}: {text} has an environment marker"


def test_torch_torchvision_and_torchreid_have_lower_bounds_only():
    bounds = {r.name: {s.operator for s in r.specifier} for r in map(Requirement, DEPENDENCIES)}
    for name in ("torch", "torchvision", "torchreid"):
        assert bounds.get(name) == {">="}, f"{name}: a lower bound only, so pip never replaces the user's {name}"


def test_index_metadata():
    for key in ("description", "readme", "license", "license-files", "requires-python", "classifiers", "urls"):
        assert PROJECT.get(key), f"[project] has no {key}"
    assert isinstance(PROJECT["license"], str), "license: an SPDX expression (PEP 639), not the deprecated table"
    for path in [PROJECT["readme"]] + PROJECT["license-files"]:
        assert os.path.isfile(os.path.join(REPO, path)), f"{path}, named in pyproject.toml, is missing"


def test_extras_leave_the_choice_of_onnx_runtime_to_the_user():
    assert not names(EXTRAS["export"]) & {"onnxruntime", "onnxruntime-gpu"}, \
        "[export] must not bring a runtime: onnxruntime and onnxruntime-gpu install the same module"
    for runtime in ("onnxruntime", "onnxruntime-gpu"):
        assert names(EXTRAS.get(runtime, [])) == {runtime}, f"no [{runtime}] extra holding {runtime} alone"
    ci = EXTRAS["export"] + EXTRAS["onnxruntime"]
    assert names(EXTRAS["test"]) == {"pytest", "pytest-xdist"} | names(ci) and set(ci) <= set(EXTRAS["test"]), \
        "[test]: pytest and pytest-xdist, the export extra and the CPU runtime, with the same bounds"
    for extra, reqs in EXTRAS.items():
        assert not names(reqs) & names(DEPENDENCIES), f"[{extra}] repeats a regular requirement"


def test_console_scripts_are_the_seven_commands():
    scripts = PROJECT.get("scripts", {})
    assert sorted(scripts) == sorted(f"isgan-{name}" for name in ("train", "test", "compare", "extract", "export",
                                                                    "visualize", "benchmark"))
    for script, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function, None)), f"{script} = {target}"


def test_configs_are_package_data():
    """A non-editable install carries every YAML config, which --config-file NAME reads."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["isgan_torchreid"]
    configs = [f for f in os.listdir(os.path.join(REPO, "isgan_torchreid", "configs")) if f.endswith(".yaml")]
    assert configs and all(any(fnmatch.fnmatch(f"configs/{f}", p) for p in patterns) for f in configs)
