#!/usr/bin/env bash
# The GPU checks of issues 16 (item 6) and 18 as ONE prepared run that fits a lent device's budget
# (15 minutes of device time per session, 10 minutes per command, machine start included).
#
# 1. Here, on the development machine (needs PyPI): fetch the wheels the device image lacks
#    (it has torch, torchvision, transformers, numpy, pillow; not diffusers or pydantic):
#        bash benchmarks/gpu_checks.sh fetch
# 2. With the `device` tool: run(command="bash benchmarks/gpu_checks.sh", carry=[".whl"], timeout_s=600)
#    Logs come back under $OUT (card.txt, sd.log, train.log, select.log).
# 3. Report the card's name with every figure. Table 1 at the study's scale (7 variants x 100 epochs of
#    resnet18_cifar on full CIFAR-10) is estimated from train.log's bf16 trainer epoch (50,000 images):
#    about 6.9 x 100 x that epoch (imbalanced is 45,050 images, the other six 50,000); the target is
#    under 10 minutes. The real run is `python app.py experiment examples/cifar10_cat_diffusion_gpu.yaml`
#    and takes longer than one device call.
#
# `GPU_CHECKS_DEVICE=cpu bash benchmarks/gpu_checks.sh` runs the same steps at toy sizes on a CPU (a smoke
# test of this script, no figures worth reporting).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "fetch" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  mkdir -p .whl
  # Python 3.12 on the device; --no-deps: each missing requirement is named here.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    diffusers==0.42.1 pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.7.0 typing-inspection==0.4.5 \
    defusedxml==0.7.1 importlib_metadata==10.2.0 zipp==4.1.2
  du -sh .whl
  exit 0
fi

OUT="${OUT:-/tmp/gpu-checks}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi

device="${GPU_CHECKS_DEVICE:-cuda}"
if [ "$device" = "cuda" ]; then
  sd_args=(--model sd15-random --device cuda --study-images 2 --default-images 32 --batch-size 16 --reps 1)
  train_args=(--device cuda --reps 1 --no-compile)
  select_args=(--device cuda --model resnet18_cifar --no-memory --no-baal --no-naive --reps 2)
else
  sd_args=(--quick --reps 1)
  train_args=(--quick --reps 1 --no-compile)
  select_args=(--quick --no-memory --no-baal --no-naive --reps 1)
fi

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/card.txt"

# Each check has its own limit, so one that overruns leaves the others their time (about 8 minutes in all).
timeout 220 python3 benchmarks/bench_sd.py "${sd_args[@]}" 2>&1 | grep -v "it/s]" | tee "$OUT/sd.log"
timeout 200 python3 benchmarks/bench_train.py "${train_args[@]}" 2>&1 | tee "$OUT/train.log"
timeout 60 python3 benchmarks/bench_select.py "${select_args[@]}" 2>&1 | tee "$OUT/select.log"
echo "gpu checks done: logs in $OUT"
