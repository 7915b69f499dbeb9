#!/usr/bin/env bash
# Every GPU measurement of the project in one run, sized for under 8 minutes on one H200:
#   1. the CUDA checks (`bench.py cuda`): parity with the CPU, inference purity, training under
#      fp32 / bf16 / fp16, the host syncs of a training step as CUDA counts them;
#   2. paper-scale training throughput (`bench.py throughput`), eager settings at B = 8, 16, 24
#      with the yardstick and the authors' network;
#   3. the compiled settings (inductor, then inductor with CUDA graphs) at B = 24, each in its
#      own run so that a long compilation cannot cost the other figures;
#   4. DDP over NCCL (tests/test_distributed.py), which needs two GPUs and says so otherwise.
# Each step has its own time limit and writes its CSV into OUT; a failing step does not stop
# the next one.
#
# Here, once (needs the package index and a clone of vpsg-research/Sim-MPNet):
#     benchmarks/gpu_session.sh prepare /path/to/Sim-MPNet
#   copies into .gpu/ (ignored by git) what the device machine lacks: the authors' clone, the
#   demo MRI templates (for the DDP test's data) and a nibabel wheel.
# There (the device tool, carrying .gpu):
#     benchmarks/gpu_session.sh run "$OUT"
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    authors=${2:?usage: gpu_session.sh prepare AUTHORS_CLONE}
    py=${PYTHON:-.venv/bin/python}  # the project's environment (make install)
    rm -rf .gpu && mkdir -p .gpu/whl .gpu/cache
    cp -r "$authors" .gpu/authors && rm -rf .gpu/authors/.git .gpu/authors/figures
    "$py" -c "from simmpnet.data.brain_demo import fetch_mricron_templates as f; f()"
    cp -r "${SIMMPNET_CACHE:-$HOME/.cache/simmpnet}/mricron" .gpu/cache/
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        -d .gpu/whl "nibabel==$("$py" -c 'import nibabel; print(nibabel.__version__)')"
    du -sh .gpu
    ;;
run)
    out=${2:?usage: gpu_session.sh run OUT}
    mkdir -p "$out"
    export PYTHONPATH="$PWD/src:/tmp/gpu-site" PYTHONUNBUFFERED=1 SIMMPNET_CACHE="$PWD/.gpu/cache"
    python3 -m pip install -q --no-index --no-deps --target /tmp/gpu-site .gpu/whl/*.whl 2>&1 | tail -2
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-400
    python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'GPUs', torch.cuda.device_count())"
    authors=()
    [ -d .gpu/authors ] && authors=(--authors-repo .gpu/authors)
    # (the timings of `cuda` are left to `throughput`; its checks and sync count take about a minute)
    timeout 75 python3 benchmarks/bench.py cuda --out "$out" --skip-timings
    timeout 150 python3 benchmarks/bench.py throughput --device cuda --out "$out" --batches 8 16 24 \
        --settings fp32 bf16 "bf16 foreach-adamw" "bf16 channels-last" "${authors[@]}"
    # inductor compiles `paper` forward and backward once per network and mode: minutes each
    timeout 180 python3 benchmarks/bench.py throughput --device cuda --out "$out" --batches 24 \
        --compile-batches 24 --settings bf16 "bf16 compile"
    timeout 60 python3 benchmarks/bench.py throughput --device cuda --out "$out" --batches 24 \
        --compile-batches 24 --settings bf16 "bf16 compile cuda-graphs"
    SIMMPNET_TEST_DEVICE=cuda timeout 20 python3 -m pytest -q -p no:cacheprovider tests/test_distributed.py \
        -k two_processes_match_one 2>&1 | tail -5
    ls -l "$out"
    ;;
*)
    echo "usage: benchmarks/gpu_session.sh prepare AUTHORS_CLONE | run OUT" >&2
    exit 2
    ;;
esac
