# Two entry points for a fresh machine: `make demo` and `make test`.
# `make test` runs the suite with PyPI's torchreid 0.2.5 in $(VENV), then the tests that touch torchreid
# (SRC_TESTS) with torchreid 1.4.0 installed from source (compiled Cython evaluator included) in $(SRC_VENV).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SRC_VENV ?= .venv-src
SRC_BIN := $(SRC_VENV)/bin
TORCHREID_SRC ?= ../shared/vendor/deep-person-reid-f8cd150.tar.gz
TORCH := torch==2.14.1 torchvision==0.29.1

# two pytest-xdist workers (the tests run at one thread each), a test file on one worker: the runs that a
# file's tests share (module-scoped fixtures) are trained once
PYTEST_PARALLEL ?= -n 2 --dist loadfile

.PHONY: demo test test-pypi test-src

# the demo's run, its disentanglement table (benchmark) and figures, all under output/isgan_demo
demo: $(VENV)/.installed
	$(BIN)/python tools/train.py --config-file isgan_demo
	$(BIN)/python tools/benchmark.py --disentangle output/isgan_demo
	PYTHON=$(BIN)/python bash tools/make_figures.sh output/isgan_demo output/isgan_demo/figures

test: test-pypi test-src

test-pypi: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) tests

# Under the source layout, what touches torchreid: import and registration, models, datasets, torchreid's stock
# engines, evaluation against both torchreid evaluators, checkpoints and torchreid's loaders, the patched image
# reading and dataset checks (fault injection), a tiny 3-stage run.
SRC_TESTS := tests/test_compat.py tests/test_isgan_model.py tests/test_mgn.py tests/test_synthetic.py \
	tests/test_data_build.py tests/test_torchreid_engines.py tests/test_evaluation.py tests/test_checkpoint.py \
	tests/test_deploy.py tests/test_faults.py tests/test_staged.py::test_end_to_end_outputs

test-src: $(SRC_VENV)/.installed
	$(SRC_BIN)/python -m pytest -q $(PYTEST_PARALLEL) $(SRC_TESTS)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# torchreid 1.4.0 as its README installs it (built in place: `--no-build-isolation`, needs Cython), but without
# its requirements.txt (dev tools: tb-nightly, flake8, yapf, isort==4.3.21; opencv-python beside our headless
# one). Its setup.py imports torchreid to read the version, so what that import needs comes first: the
# project's own requirements (pyproject.toml lists them all), read from its metadata, torchreid's left out: the
# unconditional ones and the test extra's (it holds the export extra's and onnxruntime; the onnxruntime-gpu
# extra, which would clash with onnxruntime, is not taken).
$(SRC_VENV)/.installed: pyproject.toml $(VENV)/.installed $(wildcard $(TORCHREID_SRC))
	@test -e $(TORCHREID_SRC) || { echo "error: $(TORCHREID_SRC) not found; pass TORCHREID_SRC=<torchreid 1.4.0 source>"; exit 2; }
	$(PYTHON) -m venv $(SRC_VENV)
	@# torch, torchvision and their CUDA libraries (5.5 GB): $(VENV)'s files, hard-linked, not a second copy
	$(BIN)/python .ci/link_packages.py $(SRC_VENV) torch torchvision triton 'nvidia-*' 'cuda-*'
	$(SRC_BIN)/pip install -q $(TORCH)
	$(SRC_BIN)/pip install -q --dry-run --no-deps --report $(SRC_VENV)/project.json -e '.[test]'
	$(SRC_BIN)/python -c "import json; [project] = json.load(open('$(SRC_VENV)/project.json'))['install']; \
	  reqs = [r.partition(';') for r in project['metadata']['requires_dist']]; \
	  print(*(r for r, _, marker in reqs if marker.strip() in ('', 'extra == \"test\"') \
	          and not r.startswith('torchreid')), sep='\\n')" \
	  > $(SRC_VENV)/requirements.txt
	$(SRC_BIN)/pip install -q Cython -r $(SRC_VENV)/requirements.txt
	$(SRC_BIN)/pip install -q --no-build-isolation --no-deps $(TORCHREID_SRC)
	$(SRC_BIN)/pip install -q --no-deps -e '.[test]'
	$(SRC_BIN)/python -c "import torchreid.data, torchreid.metrics.rank_cylib.rank_cy"
	@# a user's plain `pip install -e .` here must keep the source install (it would add torchreid's dev tools)
	$(SRC_BIN)/pip install -q --dry-run --report - -e '.[test]' | $(SRC_BIN)/python -c "import json, sys; \
	  new = {i['metadata']['name'] for i in json.load(sys.stdin)['install']}; \
	  assert 'torchreid' not in new, 'pip install -e . would replace the source install of torchreid'"
	touch $@
