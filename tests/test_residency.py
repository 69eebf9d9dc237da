"""The torch backend on the CPU keeps zero-copy components built one at a time (sdkit_torch/residency.py)."""

import numpy as np

import sdkit


def built(pipe) -> list[bool]:
    return [c.lazy.module is not None for c in (*pipe.text_encoders, pipe.unet, pipe.vae)]


def test_float32_components_are_built_one_at_a_time_and_images_do_not_change(sd1_folder):
    pipe = sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32")
    assert built(pipe) == [False, False, True]  # each checked at load, the last one kept
    seen = []
    first = pipe.generate("a fox", width=64, height=64, steps=3, seed=1,
                          callback=lambda step, total, x: seen.append(built(pipe)))
    assert seen == [[False, True, False]] * 3  # during sampling only the UNet is in memory
    assert built(pipe) == [False, False, True]
    again = pipe.generate("a fox", width=64, height=64, steps=3, seed=1)
    np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(again[0]))


def test_converted_components_stay_built(sd1_folder):
    """bfloat16 from float32 files: reading again would mean converting again, so nothing is dropped."""
    pipe = sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="bfloat16")
    pipe.generate("a fox", width=64, height=64, steps=2, seed=1)
    assert built(pipe) == [True, True, True]


def test_attention_chunk_survives_the_unet_being_built_again(sd1_folder):
    pipe = sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32")
    pipe.unet.attention_chunk = 16
    pipe.vae.model  # takes the UNet's place
    assert pipe.unet.lazy.module is None
    chunks = {m.chunk for name, m in pipe.unet.model.named_modules() if name.endswith("attn1")}
    assert chunks == {16}
