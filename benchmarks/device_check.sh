#!/usr/bin/env bash
# The device check (issue 11, item 4), in one go on a GPU machine, within ~8 minutes:
#   1. the device tests (tests/unit/test_devices.py: the CUDA cases run where CUDA exists);
#   2. benchmarks/device_bench.py on CUDA: agreement with the CPU, TopK 128x1024 throughput
#      against the quoted SAELens H100 figure, and the goldilocks_full grid's SAE training
#      time extrapolated from a timed slice.
# Results go to $OUT (default /tmp/device_check): device_tests.log, device_bench.{log,json}.
#
# The GPU machine has Python 3.12 and torch, jaxtyping, numpy, pyyaml, rich, safetensors and
# pytest, but not pydantic. Carry its wheels in .whl/ (ignored by git), fetched here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
# (the versions in this project's .venv when this was written; any pydantic 2 works).
#
# Without a GPU:  bash benchmarks/device_check.sh --cpu-smoke   (tiny sizes, on the CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline
if [ "${1:-}" = "--cpu-smoke" ]; then dev=cpu; size=--tiny; else dev=cuda; size=; fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
$PY -m pytest -q -p no:cacheprovider -rs tests/unit/test_devices.py 2>&1 | tee "$OUT/device_tests.log"
$PY benchmarks/device_bench.py --device "$dev" $size --json "$OUT/device_bench.json" 2>&1 \
    | tee "$OUT/device_bench.log"
