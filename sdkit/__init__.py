"""sdkit: Stable Diffusion on PyTorch and MLX from the same safetensors files."""
