#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a bare CUDA machine, ≤ 8 minutes on one H200.
#
# Here, once (needs PyPI):  bash benchmarks/gpu_check.sh --prepare
#   downloads the Python 3.12 wheels the GPU image lacks into .whl/ and copies SST-2 into
#   .gpu_data/ (both ignored by git through .git/info/exclude; together well under 64 MiB).
# There (the device tool, carry [".whl", ".gpu_data"]):  bash benchmarks/gpu_check.sh
#   installs those wheels and the project into /tmp/site (no network needed), runs the check and
#   writes $OUT/gpu_check.json (or ./gpu_check.json without $OUT). Put the figures in RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# packages unipetl needs beyond that image's (torch, transformers, tokenizers, safetensors, pyarrow, … are there)
# (polars < 1.33: one wheel of ~38 MB; later releases split off a 54 MB runtime that would not fit the 64 MiB the device tool carries)
WHEELS="optuna sqlalchemy alembic colorlog mako greenlet datasets dill multiprocess xxhash evaluate polars<1.33 moocore cffi pycparser
 rouge-score nltk sacrebleu"

if [[ "${1:-}" == "--prepare" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  grep -qx '/.gpu_data/' .git/info/exclude 2>/dev/null || echo '/.gpu_data/' >> .git/info/exclude
  rm -rf .whl && mkdir -p .whl .gpu_data
  for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
      -d .whl "$w"
  done
  cp -r "${DATA_DIR:-../shared/data}/sst2" .gpu_data/
  du -sh .whl .gpu_data
  exit 0
fi

SITE=/tmp/site
if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" . >/dev/null
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
DATA="${UNIPETL_DATA_DIR:-$( [[ -d .gpu_data/sst2 ]] && echo "$PWD/.gpu_data" || echo "$PWD/../shared/data")}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 python3 benchmarks/gpu_check.py --data-dir "$DATA" --out "${OUT:-.}/gpu_check.json" "$@"
