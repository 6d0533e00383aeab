#!/usr/bin/env bash
# The figures of docs/results.md ("What it learned"), from a finished run of the synthetic demo (`make demo`):
#
#   tools/make_figures.sh OUTPUT_DIR [FIGURES_DIR]
#
# OUTPUT_DIR: the run's folder (config.yaml, stage1/, stage3/); FIGURES_DIR: where the PNGs go (docs/figures).
# $PYTHON: the interpreter with isgan_torchreid installed (default: .venv/bin/python, else python);
# $A_PID, $B_PID (interpolate, swap, grid), $C_PID, $D_PID (grid): the identities shown (synthperson's test ids).
# The images are test (query) images of synthperson: identities the model never trained on. Each command is
# echoed before it runs.
set -euo pipefail

run=${1:?usage: tools/make_figures.sh OUTPUT_DIR [FIGURES_DIR]}
figures=${2:-docs/figures}
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
tool() { echo "+ $python tools/visualize.py $*"; "$python" tools/visualize.py "$@"; }

last() { echo "$1/$(ls "$1" | grep '^model.pth.tar-' | sort -t- -k2 -n | tail -1)"; }  # a stage's last weights
stage1=$(last "$run/stage1")
stage3=$(last "$run/stage3")
root=$("$python" -c "import os, sys; from isgan_torchreid.config import load_config; \
print(os.path.abspath(os.path.expanduser(load_config(sys.argv[1]).DATA.ROOT)))" "$run/config.yaml")
query=$root/synthperson/query
first() { ls "$query"/"$1"_c*.jpg | head -1; }  # the first query image of an identity
a=$(first "${A_PID:-0060}")  # blue shirt, purple trousers, seen from the side
b=$(first "${B_PID:-0084}")  # striped shirt, green shorts, seen from the front
c=$(first "${C_PID:-0049}")
d=$(first "${D_PID:-0089}")
mkdir -p "$figures"

height=$("$python" -c "import sys; from isgan_torchreid.config import load_config; \
print(load_config(sys.argv[1]).DATA.HEIGHT)" "$run/config.yaml")
scale=$(( height >= 128 ? 1 : 128 / height ))  # images at least 128 rows tall (64x32: x2)
small=(--scale "$scale" --colors 256)  # palette PNGs: each figure < 200 KB
tool interpolate --weights "$stage3" --a "$a" --b "$b" --steps 8 --what both "${small[@]}" \
    --out "$figures/interpolate.png"
tool swap --weights "$stage3" --a "$a" --b "$b" --parts upper --what identity "${small[@]}" \
    --out "$figures/swap_identity_upper.png"
tool swap --weights "$stage3" --a "$a" --b "$b" --parts upper --what nuisance "${small[@]}" \
    --out "$figures/swap_nuisance_upper.png"
tool grid --weights "$stage3" --images "$a" "$b" "$c" "$d" "${small[@]}" --out "$figures/grid.png"
tool rank --weights "$stage1" "$stage3" --num-queries 3 --topk 6 "${small[@]}" --out "$figures/rank.png"
ls -l "$figures"
