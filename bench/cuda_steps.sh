# Sourced by run_cuda.sh and run_cuda_train.sh, with $out and $py set: records the GPU in $out/gpu.txt, and defines
# `step NAME COMMAND...`: one case, its table to $out/NAME.md, its stderr to $out/log.txt, a failure reported
# without stopping the rest.
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
step() {  # name, then the command
    local name=$1; shift
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" > "$out/$name.md" 2>> "$out/log.txt" || echo "!! $name failed (exit $?), see $out/log.txt"
    cat "$out/$name.md"; echo "($((SECONDS - t0)) s)"
}
