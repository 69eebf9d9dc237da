"""Session-scoped tiny random checkpoints (see tests/fixtures.py), built once per test run."""

import shutil
from pathlib import Path

import pytest

from fixtures import add_fp16_variants, build_folder, to_single_file


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def sd1_folder(models_dir):
    return build_folder(models_dir / "tiny-sd1", "sd1")


@pytest.fixture(scope="session")
def sd2v_folder(models_dir):
    return build_folder(models_dir / "tiny-sd2-v", "sd2v")


@pytest.fixture(scope="session")
def sdxl_folder(models_dir):
    return build_folder(models_dir / "tiny-sdxl", "sdxl")


@pytest.fixture(scope="session")
def sd1_single_file(models_dir, sd1_folder):
    return to_single_file(sd1_folder, models_dir / "tiny-sd1.safetensors", "sd1")


@pytest.fixture(scope="session")
def sd2v_single_file(models_dir, sd2v_folder):
    # named as Stability names its 768 v-prediction files: sdkit's rule reads it as v / 768
    return to_single_file(sd2v_folder, models_dir / "tiny-sd2-768-v.safetensors", "sd2v")


@pytest.fixture(scope="session")
def sdxl_single_file(models_dir, sdxl_folder):
    return to_single_file(sdxl_folder, models_dir / "tiny-sdxl.safetensors", "sdxl")


@pytest.fixture(scope="session")
def sd1_fp16_folder(models_dir, sd1_folder):
    """sd1_folder's weights, plus their *.fp16.safetensors variants."""
    return add_fp16_variants(Path(shutil.copytree(sd1_folder, models_dir / "tiny-sd1-fp16")))


@pytest.fixture(scope="session")
def refiner_folder(models_dir):
    return build_folder(models_dir / "tiny-sdxl-refiner", "sdxl_refiner")


@pytest.fixture(scope="session")
def refiner_single_file(models_dir, refiner_folder):
    return to_single_file(refiner_folder, models_dir / "tiny-sdxl-refiner.safetensors", "sdxl_refiner")


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path_factory, monkeypatch):
    """Model hashes (sdkit.hashes) are cached in the test run's folder, not in the user's ~/.cache/sdkit."""
    monkeypatch.setenv("SDKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sdkit-cache"))


@pytest.fixture(scope="session")
def sd1_inpaint_folder(models_dir):
    return build_folder(models_dir / "tiny-sd1-inpainting", "sd1_inpaint")


@pytest.fixture(scope="session")
def sd2v_inpaint_folder(models_dir):
    return build_folder(models_dir / "tiny-sd2-v-inpainting", "sd2v_inpaint")


@pytest.fixture(scope="session")
def sd1_inpaint_single_file(models_dir, sd1_inpaint_folder):
    return to_single_file(sd1_inpaint_folder, models_dir / "tiny-sd1-inpainting.safetensors", "sd1_inpaint")


@pytest.fixture(scope="session")
def sdxl_inpaint_folder(models_dir):
    return build_folder(models_dir / "tiny-sdxl-inpainting", "sdxl_inpaint")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (pytestmark = pytest.mark.usefixtures("one_thread")): tiny models on a shared
    2-core machine, where torch's second thread only waits on the first (10x slower under load)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gen(tmp_path, monkeypatch, capsys):
    """sdkit-gen's main() in this process, run in tmp_path: args -> (exit status, stdout, stderr)."""
    from sdkit import cli
    monkeypatch.chdir(tmp_path)

    def run(*args):
        code = cli.main([str(a) for a in args])
        return (code, *capsys.readouterr())

    return run
