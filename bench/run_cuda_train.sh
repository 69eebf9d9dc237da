#!/usr/bin/env bash
# The issue's CUDA training figures in one command (estimated 5 minutes on one H200, not yet run; random weights built
# on the GPU first), each case's table also written to OUT_DIR:
#   bash bench/run_cuda_train.sh [OUT_DIR]
# sdkit's LoRA step (torch backend) against diffusers' train_text_to_image_lora[_sdxl].py loop with PEFT, rank 16,
# batch 1, one image, alternating processes (bench/bench_train.py):
# 1. SD1.5-sized, 512x512, float16 mixed precision, gradient checkpointing: the "within 8 GB" case and its it/s;
# 2. the same without gradient checkpointing (it/s when memory is not the constraint);
# 3. SDXL-sized, 1024x1024, bfloat16, gradient checkpointing: the "within 16 GB" case.
# Memory: "peak CUDA allocated" is what the tensors needed, "reserved" what torch's caching allocator held (the
# figure to hold against a card's size, plus the CUDA context's few hundred MB).
# Progress and errors go to OUT_DIR/log.txt; a case that fails is reported and the next one still runs.
# Needs torch with CUDA, diffusers, transformers and peft. An image without diffusers (the project's H200 image has
# the rest): download its pure-Python wheel where pip works, `pip download --no-deps -d .whl diffusers==0.42.1
# importlib_metadata`, carry .whl, and first `pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
# && export PYTHONPATH=/tmp/site`.
out=${1:-bench-cuda-train}
py=${PYTHON:-python3}
$py -c "import torch, diffusers, transformers, peft; assert torch.cuda.is_available(), 'torch sees no CUDA device'" \
    || { echo "run_cuda_train.sh: $py lacks torch with CUDA, diffusers, transformers or peft (see above)"; exit 1; }
. "$(dirname "$0")/cuda_steps.sh"
$py -c "import torch, diffusers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'peft', peft.__version__)" | tee -a "$out/gpu.txt"
step sd15_512_checkpointing $py bench/bench_train.py --device cuda --dtype float16 --size 512 --steps 10 \
    --gradient-checkpointing
step sd15_512 $py bench/bench_train.py --device cuda --dtype float16 --size 512 --steps 10
step sdxl_1024_checkpointing $py bench/bench_train.py --family sdxl --device cuda --dtype bfloat16 --size 1024 \
    --steps 6 --gradient-checkpointing
