#!/usr/bin/env bash
# The CUDA figures of BENCHMARKS.md in one command, each step's table also written to OUT_DIR:
#   bash bench/run_cuda.sh [OUT_DIR]
# 1. the SD1.5-sized UNet alone, float16 512x512: diffusers, sdkit (CUDA graph), sdkit eager, sdkit in NCHW,
#    sdkit compiled;
# 2. generate() end to end, SD1.5-sized, float16 512x512, 30 steps: sdkit and diffusers alternating, 3 runs each;
# 3. the same with sdkit.load(..., compile=True), one run;
# 4. SDXL-sized, float16 1024x1024, 20 steps, one run each.
# Progress and errors go to OUT_DIR/log.txt; a step that fails is reported and the next one still runs.
out=${1:-bench-cuda}
py=${PYTHON:-python}
. "$(dirname "$0")/cuda_steps.sh"
$py -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | tee -a "$out/gpu.txt"
step unet_sd15 $py bench/bench_unet.py --device cuda --dtype float16 --size 512 \
    --variants diffusers sdkit sdkit-eager sdkit-nchw compiled
step sd15 $py bench/bench_torch.py --device cuda --dtype float16 --size 512 --steps 30 --runs 3
step sd15_compiled $py bench/bench_torch.py --device cuda --dtype float16 --size 512 --steps 30 --runs 1 \
    --compile --only sdkit
step sdxl $py bench/bench_torch.py --family sdxl --device cuda --dtype float16 --size 1024 --steps 20 --runs 1
