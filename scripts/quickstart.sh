#!/usr/bin/env bash
# The quickstart in one command, on a fresh machine: a virtual environment with the pinned
# requirements (.venv/), graphviz for the cell pictures (apt-get, when run as root on Debian or
# Ubuntu), then an amended-DARTS search on the shipped 8x8 digits (flags/quickstart_search.cfg)
# into runs/quickstart/. Run it again to continue an interrupted search (--resume); a finished
# one is not repeated.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
if ! command -v dot >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq graphviz) >/dev/null
  else
    echo "note: graphviz (dot) is missing: the search runs, cell pictures are skipped" >&2
  fi
fi

out=runs/quickstart
resume=()
[[ -f $out/run.json ]] && resume=(--resume)
.venv/bin/python -m tf_amended_darts.bin.search --flagfile=flags/quickstart_search.cfg \
  --output_dir="$out" "${resume[@]}"
echo
echo "genotype:     $out/genotype.json"
echo "cell picture: $(ls "$out"/genotype_normal*.png 2>/dev/null | head -n1)"
echo "TensorBoard:  .venv/bin/tensorboard --logdir $out/tensorboard"
