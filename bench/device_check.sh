#!/usr/bin/env bash
# The image track's GPU checks as one prepared command, for a machine with a CUDA GPU. From the repository root:
#
#     bash bench/device_check.sh OUT_DIR
#
# 1. the CUDA tests (tests/test_image_cuda.py: bfloat16 autocast, channels-last, stacked training) → OUT_DIR/cuda_tests.log;
# 2. proxy training on the full protocol, one by one against 5, 10 and 20 networks stacked
#    → OUT_DIR/image_stack_full.{json,md};
# 3. one epoch of the full protocol's ground truth (40,000 CIFAR-10 images at 32×32), one by one against 10 networks
#    stacked, and the whole ground truth extrapolated from it → OUT_DIR/image_stack_full_truth.{json,md}.
# Each step has its own time limit (5 minutes); the exit status is non-zero if any step failed. Commit the results
# under bench/results/ with this command. Data: $HCDC_DATA, else ../shared/data (CIFAR-10's JPEG archive, decoded
# into $HCDC_CACHE, a fresh temporary folder unless set). The package is taken from src/, so only its dependencies
# (torch, numpy, scipy, safetensors, tqdm, torch-geometric, pytest) need to be installed; Optuna is not used here.
set -u -o pipefail
out=${1:?usage: bash bench/device_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HCDC_CACHE=${HCDC_CACHE:-$(mktemp -d)}
python3 -c 'import sys, torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
sys.exit(0 if torch.cuda.is_available() else "device_check: no CUDA device here; these checks need a GPU")' || exit 2
status=0
timeout 300 python3 -m pytest -q -p no:cacheprovider -rs tests/test_image_cuda.py 2>&1 | tee "$out/cuda_tests.log" || status=1
timeout 300 python3 bench/image_stack.py --protocol full --archs 4 --stacks 5 10 20 --out-dir "$out" || status=1
timeout 300 python3 bench/image_stack.py --protocol full --truth --archs 2 --stacks 10 --protocol-options '{"epochs": 1}' \
    --name image_stack_full_truth --out-dir "$out" || status=1
exit $status
