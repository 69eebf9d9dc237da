"""LoRA files: kohya (SD1 with text-encoder and conv "LoCon" layers, SDXL with LDM names and te1/te2), diffusers /
PEFT and the older diffusers naming, several at once, against diffusers' load_lora_weights + set_adapters
(latents at 1e-4, images within 3/255); LoHa, LoKr and DoRA against their formulas; restoring the exact base
weights; compiled MLX UNets; names, tags, errors and metadata."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image
import torch
from diffusers import DDIMScheduler
from fixtures import diffusers_pipeline, unet_to_ldm
from safetensors.torch import load_file, save_file
from test_parity_torch import assert_close, draw, seeded_noise

import sdkit
from sdkit.adapters import lora
from sdkit.errors import CheckpointError

WIDTH, HEIGHT, STEPS, SEED = 48, 32, 3, 11
PROMPT, NEGATIVE = "a red fox in the snow", "blurry"


def factors(shape, rank, g, conv_kernel=None):
    """(down, up) for a weight of `shape`, large enough to change the picture clearly."""
    out, inp = shape[0], shape[1]
    k = shape[2:] if len(shape) == 4 else ()
    down = torch.randn(rank, inp, *k, generator=g) / (inp * max(1, np.prod(k))) ** 0.5
    up = torch.randn(out, rank, *((1, 1) if k else ()), generator=g) * 0.6 / rank ** 0.5
    return down, up


def modules(model, conv=False):
    """Module paths a LoRA trainer adapts: attention / MLP Linears (and, for LoCon, resnet convs and 1x1 proj_in)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and any(p in name for p in ("attn", "self_attn", "mlp", "ff.net", "proj")):
            out[name] = m.weight.shape
        elif conv and isinstance(m, torch.nn.Conv2d) and ("resnets" in name or "proj_in" in name):
            out[name] = m.weight.shape
    return out


def kohya_file(path, parts, seed, rank=4, alpha=2.0, dora=False):
    """parts: [(kohya prefix, {module path: weight shape})] -> a kohya sd-scripts file (module path '.' -> '_')."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, mods in parts:
        for name, shape in mods.items():
            key = prefix + name.replace(".", "_")
            down, up = factors(shape, rank, g)
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(alpha)}
            if dora:  # LyCORIS' shape: (1, in) for a Linear, (1, in, 1, 1) for a conv
                tensors[f"{key}.dora_scale"] = 1 + 0.1 * torch.randn(1, shape[1], *[1] * (len(shape) - 2),
                                                                     generator=g)
    save_file(tensors, path)
    return path


def ldm_modules(mods, config):
    """diffusers UNet module paths -> LDM's (as kohya's SDXL LoRAs name them)."""
    renamed = unet_to_ldm({f"{name}.weight": shape for name, shape in mods.items()}, config)
    return {k.removeprefix("model.diffusion_model.").removesuffix(".weight"): v for k, v in renamed.items()}


@pytest.fixture(scope="module")
def sd1_loras(sd1_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    theirs = diffusers_pipeline(sd1_folder)
    unet, te = modules(theirs.unet), modules(theirs.text_encoder)
    theirs.lora_modules = {"unet.": unet, "text_encoder.": te}  # before adapters wrap them
    kohya_file(folder / "style.safetensors", [("lora_unet_", unet), ("lora_te_", te)], seed=1)
    kohya_file(folder / "locon.safetensors", [("lora_unet_", modules(theirs.unet, conv=True))], seed=2, rank=2,
               alpha=1.0)
    return folder, theirs


def fresh(theirs):
    """The shared diffusers pipeline without adapters (a failed test may have left some)."""
    loaded = {a for names in theirs.get_list_adapters().values() for a in names}
    if loaded:
        theirs.delete_adapters(sorted(loaded))
    return theirs


def run_theirs(theirs, adapters, weights, prompt=PROMPT, negative=NEGATIVE):
    """diffusers' images and the latents after each step, with `adapters` set at `weights` ([] : none)."""
    if adapters:
        theirs.set_adapters(adapters, weights)
        theirs.enable_lora()
    else:
        theirs.disable_lora()
    shape = (4, HEIGHT // 8, WIDTH // 8)
    steps = []
    images = theirs(prompt, negative_prompt=negative, width=WIDTH, height=HEIGHT, num_inference_steps=STEPS,
                    guidance_scale=7.5, latents=draw(seeded_noise(SEED, 1, shape), shape),
                    callback_on_step_end=lambda p, i, t, kw: steps.append(kw["latents"][0].numpy().copy()) or kw
                    ).images
    return images, steps


def run_ours(pipe, sampler, **kw):
    """sdkit's images and the latents each UNet evaluation saw (the first: the initial noise)."""
    seen = []
    images = pipe.generate(kw.pop("prompt", PROMPT), NEGATIVE, width=WIDTH, height=HEIGHT, steps=STEPS,
                           sampler=sampler, seed=SEED, callback=lambda i, n, x: seen.append(pipe.backend.numpy(x)[0]),
                           **kw)
    return images, seen


def assert_same_run(ours, theirs, atol=1e-4):
    (got, seen), (expected, steps) = ours, theirs
    assert_close(got, expected)
    # sdkit's k-th evaluation sees what diffusers holds after step k-1 (PNDM evaluates its first step twice)
    for a, b in zip(seen[-len(steps) + 1:] if len(seen) > len(steps) else seen[1:], steps[:-1]):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_kohya_sd1_as_diffusers(sd1_folder, sd1_loras, backend):
    """A kohya LoRA on the UNet and text encoder, and a LoCon (3x3 and 1x1 convs) beside it at a negative weight;
    then a call without LoRAs is the base picture, byte for byte."""
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    folder, theirs = sd1_loras
    fresh(theirs).load_lora_weights(folder, weight_name="style.safetensors", adapter_name="style")
    theirs.load_lora_weights(folder, weight_name="locon.safetensors", adapter_name="locon")
    pipe = sdkit.load(sd1_folder, backend=backend, device="cpu", dtype="float32", lora_dirs=folder)
    base = pipe.generate(PROMPT, NEGATIVE, width=WIDTH, height=HEIGHT, steps=STEPS, sampler="pndm", seed=SEED)

    ours = run_ours(pipe, "pndm", prompt=PROMPT + " <lora:style:0.8>", loras={folder / "locon.safetensors": -0.7})
    expected = run_theirs(theirs, ["style", "locon"], [0.8, -0.7])
    assert np.abs(np.asarray(ours[0][0], np.int16) - np.asarray(base[0], np.int16)).max() > 20
    assert_same_run(ours, expected)

    again = pipe.generate(PROMPT, NEGATIVE, width=WIDTH, height=HEIGHT, steps=STEPS, sampler="pndm", seed=SEED)
    assert again[0].tobytes() == base[0].tobytes()
    theirs.delete_adapters(["style", "locon"])


def test_text_encoder_and_unet_weights_apart(sd1_folder, sd1_loras):
    """<lora:NAME:W_TE:W_UNET>: the text encoder's weight first (A1111), against diffusers' per-component weights."""
    folder, theirs = sd1_loras
    fresh(theirs).load_lora_weights(folder, weight_name="style.safetensors", adapter_name="style")
    pipe = sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32", lora_dirs=folder)
    ours = run_ours(pipe, "pndm", prompt=PROMPT + " <lora:style:0.3:1.2>")
    expected = run_theirs(theirs, ["style"], [{"text_encoder": 0.3, "unet": 1.2}])
    assert_same_run(ours, expected)
    theirs.delete_adapters(["style"])


def test_kohya_sdxl_as_diffusers(sdxl_folder, tmp_path):
    """kohya's SDXL LoRAs: LDM UNet names (input_blocks_4_1_...), lora_te1_ and lora_te2_."""
    theirs = diffusers_pipeline(sdxl_folder)
    theirs.scheduler = DDIMScheduler.from_config(theirs.scheduler.config)  # its model input is the latents
    unet = ldm_modules(modules(theirs.unet), theirs.unet.config)
    assert any(k.startswith("input_blocks.") for k in unet)
    kohya_file(tmp_path / "xl.safetensors", [("lora_unet_", unet), ("lora_te1_", modules(theirs.text_encoder)),
                                             ("lora_te2_", modules(theirs.text_encoder_2))], seed=3)
    theirs.load_lora_weights(tmp_path, weight_name="xl.safetensors", adapter_name="xl")
    pipe = sdkit.load(sdxl_folder, backend="torch", device="cpu", dtype="float32", lora_dirs=tmp_path)
    ours = run_ours(pipe, "ddim", loras={"xl": 0.9})
    assert_same_run(ours, run_theirs(theirs, ["xl"], [0.9]))


def test_diffusers_formats(sd1_folder, sd1_loras, tmp_path):
    """PEFT's lora_A / lora_B under unet. / text_encoder., against diffusers; the older .lora.down.weight and
    attention-processor names give the same weights."""
    _, theirs = sd1_loras
    fresh(theirs)
    g = torch.Generator().manual_seed(4)
    peft, old = {}, {}
    for prefix, mods in theirs.lora_modules.items():
        for name, shape in mods.items():
            down, up = factors(shape, 4, g)
            peft |= {f"{prefix}{name}.lora_A.weight": down, f"{prefix}{name}.lora_B.weight": up}
            if prefix == "unet." and ".attn1.to_" in name:  # attention processors: to_out.0 -> to_out_lora
                body, proj = name.rsplit(".attn1.", 1)
                proj = proj.removesuffix(".0")
                old |= {f"{body}.attn1.processor.{proj}_lora.down.weight": down,
                        f"{body}.attn1.processor.{proj}_lora.up.weight": up}
            else:
                old |= {f"{prefix}{name}.lora.down.weight": down, f"{prefix}{name}.lora.up.weight": up}
    save_file(peft, tmp_path / "peft.safetensors")
    save_file(old, tmp_path / "old.safetensors")
    theirs.load_lora_weights(tmp_path, weight_name="peft.safetensors", adapter_name="peft")
    pipe = sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32", lora_dirs=tmp_path)
    ours = run_ours(pipe, "pndm", loras={"peft": 0.6})
    assert_same_run(ours, run_theirs(theirs, ["peft"], [0.6]))
    theirs.delete_adapters(["peft"])
    patched = {k: v.clone() for k, v in pipe.unet.model.state_dict().items()}
    pipe.generate(PROMPT, steps=1, width=WIDTH, height=HEIGHT, loras={"old": 0.6})
    for k, v in pipe.unet.model.state_dict().items():
        assert torch.equal(v, patched[k]), k


# ---- LyCORIS formats against their formulas ----

def lycoris_file(path, shapes, kind, seed):
    """{kohya layer name: weight shape} -> a LoHa / LoKr / DoRA file, and the expected delta of each layer
    (torch, float32, weight 1) computed from the published formulas (ComfyUI's comfy/weight_adapter)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3
    tensors, deltas = {}, {}
    for key, shape in shapes.items():
        out, inp = shape[0], int(np.prod(shape[1:]))
        if kind == "loha":
            t = {"hada_w1_a": r(out, 4), "hada_w1_b": r(4, inp), "hada_w2_a": r(out, 4), "hada_w2_b": r(4, inp),
                 "alpha": torch.tensor(2.0)}
            dw = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * 2.0 / 4
        elif kind == "lokr":  # w1 whole (2, 2), w2 factored with rank 2: kron -> (out, in)
            t = {"lokr_w1": r(2, 2), "lokr_w2_a": r(out // 2, 2), "lokr_w2_b": r(2, inp // 2),
                 "alpha": torch.tensor(1.0)}
            dw = torch.kron(t["lokr_w1"], t["lokr_w2_a"] @ t["lokr_w2_b"]) * 1.0 / 2
        else:
            continue
        tensors |= {f"{key}.{role}": v for role, v in t.items()}
        deltas[key] = dw.reshape(shape)
    save_file(tensors, path)
    return deltas


@pytest.mark.parametrize("kind", ["loha", "lokr"])
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_lycoris_formulas(sd1_folder, tmp_path, kind, backend):
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    pipe = sdkit.load(sd1_folder, backend=backend, device="cpu", dtype="float32")
    names = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": (32, 32),
             "down_blocks.0.resnets.0.conv1.weight": (32, 32, 3, 3)}
    shapes = {"lora_unet_" + n.removesuffix(".weight").replace(".", "_"): s for n, s in names.items()}
    deltas = lycoris_file(tmp_path / f"{kind}.safetensors", shapes, kind, seed=5)
    before = unet_weights(pipe, names)
    pipe.generate(PROMPT, steps=1, width=WIDTH, height=HEIGHT, loras={tmp_path / f"{kind}.safetensors": -1.5})
    after = unet_weights(pipe, names)
    for (name, b), a, d in zip(before.items(), after.values(), deltas.values()):
        np.testing.assert_allclose(a - b, -1.5 * d.numpy(), rtol=0, atol=1e-5, err_msg=name)


def unet_weights(pipe, names):
    """The UNet's weights, float32 numpy in PyTorch's layout, on either backend."""
    if pipe.backend.name == "torch":
        sd = pipe.unet.model.state_dict()
        return {n: sd[n].float().numpy().copy() for n in names}
    from mlx.utils import tree_flatten

    params = dict(tree_flatten(pipe.unet.model.parameters()))
    return {n: (lambda a: a.transpose(0, 3, 1, 2) if a.ndim == 4 else a)(np.array(params[n])) for n in names}


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_dora_formula(sd1_folder, tmp_path, backend):
    """DoRA: W' = W + w (m (W + s dW) / ||W + s dW|| - W), s = alpha / rank; LyCORIS' dora_scale (1, in) holds
    one magnitude per input channel, the norm taken over all other axes (ComfyUI's weight_decompose)."""
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    pipe = sdkit.load(sd1_folder, backend=backend, device="cpu", dtype="float32")
    names = {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight": (32, 64),
             "up_blocks.1.resnets.0.conv1.weight": (32, 96, 3, 3)}
    keys = {"lora_unet_" + n.removesuffix(".weight").replace(".", "_"): s for n, s in names.items()}
    kohya_file(tmp_path / "dora.safetensors", [("", keys)], seed=6, dora=True)
    tensors = load_file(tmp_path / "dora.safetensors")
    before = unet_weights(pipe, names)
    pipe.generate(PROMPT, steps=1, width=WIDTH, height=HEIGHT, loras={tmp_path / "dora.safetensors": 0.7})
    after = unet_weights(pipe, names)
    for (name, shape), key in zip(names.items(), keys):
        t = {role: tensors[f"{key}.{role}"] for role in ("lora_up.weight", "lora_down.weight", "dora_scale")}
        base = torch.from_numpy(before[name])
        merged = base + (t["lora_up.weight"].flatten(1) @ t["lora_down.weight"].flatten(1)).reshape(shape) * 2.0 / 4
        norm = merged.transpose(0, 1).reshape(shape[1], -1).norm(dim=1)  # (in,)
        norm = norm.reshape(1, shape[1], *[1] * (len(shape) - 2)) + torch.finfo(torch.float32).eps
        scale = t["dora_scale"].reshape(norm.shape)
        expected = base + 0.7 * (merged * scale / norm - base)
        np.testing.assert_allclose(after[name], expected.numpy(), rtol=0, atol=1e-5, err_msg=name)


# ---- compiled graphs, restore ----

def test_compiled_mlx_unet_sees_patches(sd1_folder, sd1_loras):
    pytest.importorskip("mlx.core")
    folder, _ = sd1_loras
    eager = sdkit.load(sd1_folder, backend="mlx", device="cpu", dtype="float32", lora_dirs=folder)
    compiled = sdkit.load(sd1_folder, backend="mlx", device="cpu", dtype="float32", lora_dirs=folder, compile=True)
    run = lambda pipe, **kw: pipe.generate(PROMPT, width=WIDTH, height=HEIGHT, steps=2, sampler="euler", seed=SEED,
                                           **kw)[0]
    plain = run(compiled)  # compiled with the base weights first
    with_lora = run(compiled, loras={"style": 1.0})
    assert_close([with_lora], [run(eager, loras={"style": 1.0})])
    assert np.abs(np.asarray(with_lora, np.int16) - np.asarray(plain, np.int16)).max() > 20
    assert run(compiled).tobytes() == plain.tobytes()


# ---- files, names, errors, metadata ----

def test_unknown_key_is_an_error_naming_it(sd1_folder, tmp_path):
    save_file({"lora_unet_no_such_layer.lora_down.weight": torch.ones(2, 8),
               "lora_unet_no_such_layer.lora_up.weight": torch.ones(8, 2)}, tmp_path / "bad.safetensors")
    save_file({"lora_unet_conv_in.oft_blocks": torch.ones(2, 2)}, tmp_path / "oft.safetensors")
    pipe = sdkit.load(sd1_folder, backend="torch", device="cpu", lora_dirs=tmp_path)
    with pytest.raises(CheckpointError, match=r"bad.safetensors: 'lora_unet_no_such_layer.lora_\w+.weight' matches "
                                              r"no layer of this sd1 model"):
        pipe.generate(PROMPT, steps=1, width=WIDTH, height=HEIGHT, loras={"bad": 1})
    with pytest.raises(CheckpointError, match="oft.safetensors: tensor 'lora_unet_conv_in.oft_blocks' is no LoRA"):
        pipe.generate(PROMPT + "<lora:oft>", steps=1, width=WIDTH, height=HEIGHT)
    with pytest.raises(ValueError, match="LoRA 'gone' is neither a file nor a name in"):
        pipe.generate(PROMPT, steps=1, width=WIDTH, height=HEIGHT, loras={"gone": 1})
    (tmp_path / "pickled.pt").write_bytes(b"not even a pickle")
    with pytest.raises(CheckpointError, match="pickles.*never opens them"):
        pipe.generate(PROMPT, steps=1, width=WIDTH, height=HEIGHT, loras={"pickled": 1})
    with pytest.raises(ValueError, match="weight that is no number"):
        pipe.generate(PROMPT + "<lora:bad:x>", steps=1, width=WIDTH, height=HEIGHT)


def test_tags():
    text, found = lora.tags("a <lora:one> b <lora:two:0.5>, <lyco:three:1:-0.25> <lora:four:unet=0.2> <hypernet:h:1>")
    assert text == "a  b ,   <hypernet:h:1>"  # only LoRA tags go, as A1111 removes them
    assert found == [("one", 1.0, 1.0), ("two", 0.5, 0.5), ("three", 1.0, -0.25), ("four", 1.0, 0.2)]


def test_metadata_and_hash(sd1_folder, sd1_loras, monkeypatch):
    folder, _ = sd1_loras
    monkeypatch.setenv("SDKIT_LORA_DIRS", str(folder))
    pipe = sdkit.load(sd1_folder, backend="torch", device="cpu")
    image, = pipe.generate(PROMPT + " <lora:style:0.5>", steps=1, width=WIDTH, height=HEIGHT,
                           loras={"locon": (1, 0.5)})
    data = (folder / "style.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    style = hashlib.sha256(data[8 + n:]).hexdigest()[:12]  # A1111's LoRA hash: the tensors, not the header
    params = sdkit.read_parameters(image)
    assert params["prompt"] == PROMPT + " <lora:style:0.5><lora:locon:1:0.5>"
    assert params["Lora hashes"] == f"locon: {lora.short_hash(folder / 'locon.safetensors')}, style: {style}"
    assert '"locon: ' in image.info["parameters"]
    assert json.dumps(params)  # plain strings


def test_cli_lora_flags_and_from(sd1_folder, sd1_loras, tmp_path, monkeypatch, capsys):
    """--lora / --lora-dir; --from finds a stored LoRA by name, else by its Lora hashes entry, else names it."""
    from sdkit import cli

    folder, _ = sd1_loras
    monkeypatch.chdir(tmp_path)
    run = lambda *args: (cli.main([str(a) for a in args]), *capsys.readouterr())
    fast = ["-m", sd1_folder, "--steps", "2", "-W", "48", "-H", "32", "--backend", "torch", "--device", "cpu"]
    code, _, err = run("a fox", *fast, "-s", "3", "-o", "a.png", "--lora-dir", folder, "--lora", "style:0.5")
    assert code == 0, err
    stored = sdkit.read_parameters(tmp_path / "a.png")
    assert stored["prompt"] == "a fox<lora:style:0.5>"
    assert stored["Lora hashes"] == f"style: {lora.short_hash(folder / 'style.safetensors')}"

    (tmp_path / "renamed").mkdir()
    (tmp_path / "renamed" / "other.safetensors").write_bytes((folder / "style.safetensors").read_bytes())
    code, _, err = run("--from", "a.png", *fast, "-o", "b.png", "--lora-dir", "renamed")
    assert code == 0, err
    assert "sdkit-gen: warning: LoRA 'style' is not in the LoRA folders by name; its hash " in err
    assert Image.open(tmp_path / "b.png").tobytes() == Image.open(tmp_path / "a.png").tobytes()

    (tmp_path / "empty").mkdir()
    code, _, err = run("--from", "a.png", *fast, "-o", "c.png", "--lora-dir", "empty")
    assert code == 0, err
    assert "sdkit-gen: warning: LoRA 'style' (hash " in err and "not applied" in err
    assert sdkit.read_parameters(tmp_path / "c.png")["prompt"] == "a fox"


def test_patching_in_place_keeps_storage(sd1_folder, sd1_loras):
    """A CUDA graph replays kernels on the addresses it captured: patching must not move a weight."""
    folder, _ = sd1_loras
    pipe = sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32", lora_dirs=folder)
    ckpt = pipe.checkpoint
    style = pipe.loras.get(folder / "style.safetensors", lora.Targets.of(ckpt.family, ckpt.weights, ckpt.unet))
    model = pipe.unet.model
    before = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    pipe.unet.patch(lora.patches([(style, 1.0, 1.0)])["unet"])
    after = model.state_dict()
    assert {k: v.data_ptr() for k, v in after.items()} == {k: p for k, (p, _) in before.items()}
    changed = [k for k, (_, v) in before.items() if not torch.equal(v, after[k])]
    assert len(changed) == len({layer.name for layer in style.layers if layer.component == "unet"})
    pipe.unet.patch({})
    assert all(torch.equal(v, model.state_dict()[k]) for k, (_, v) in before.items())


def test_tucker_factors():
    """LoCon's and LoHa's Tucker-factored 3x3 convs, against ComfyUI's formulas (comfy/weight_adapter)."""
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g)
    down, mid, up = r(4, 6, 1, 1), r(4, 4, 3, 3), r(5, 4, 1, 1)
    # comfy/weight_adapter/lora.py: the core folded into down, then up @ down
    folded = torch.mm(down.transpose(0, 1).flatten(1), mid.transpose(0, 1).flatten(1)).reshape(6, 4, 3, 3)
    expected = (up.flatten(1) @ folded.transpose(0, 1).flatten(1)).reshape(5, 6, 3, 3) * 2.0 / 4
    layer = lora.Layer("unet", "w", (5, 6, 3, 3), {"down": down.numpy(), "mid": mid.numpy(), "up": up.numpy(),
                                                    "alpha": np.float32(2.0)})
    np.testing.assert_allclose(layer.delta(1.0), expected.numpy(), rtol=1e-5, atol=1e-5)

    w1a, w1b, t1, w2a, w2b, t2 = r(4, 5), r(4, 6), r(4, 4, 3, 3), r(4, 5), r(4, 6), r(4, 4, 3, 3)
    core = lambda t, a, b: torch.einsum("i j k l, j r, i p -> p r k l", t, b, a)  # comfy/weight_adapter/loha.py
    expected = core(t1, w1a, w1b) * core(t2, w2a, w2b) * 1.0 / 4
    tensors = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_t1": t1, "hada_w2_a": w2a, "hada_w2_b": w2b, "hada_t2": t2}
    layer = lora.Layer("unet", "w", (5, 6, 3, 3), {k: v.numpy() for k, v in tensors.items()} | {"alpha": np.ones(())})
    np.testing.assert_allclose(layer.delta(-0.5), -0.5 * expected.numpy(), rtol=1e-4, atol=1e-4)


def test_the_same_loras_again_patch_nothing(sd1_folder, sd1_loras, monkeypatch):
    """Evictable components (residency.py) stay built while patched: a second call with the same LoRAs computes
    no delta, and the base weights come back after."""
    folder, _ = sd1_loras
    pipe = sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32", lora_dirs=folder)
    assert pipe.unet.lazy.residency is not None  # the case in point: weights read zero-copy, evictable
    calls, delta = [], lora.Layer.delta
    monkeypatch.setattr(lora.Layer, "delta", lambda self, *a: calls.append(self.name) or delta(self, *a))
    run = lambda **kw: pipe.generate(PROMPT, steps=1, width=WIDTH, height=HEIGHT, seed=1, **kw)[0].tobytes()
    base = run()
    first = run(loras={"style": 0.5})
    n = len(calls)
    assert n > 0 and run(loras={"style": 0.5}) == first and len(calls) == n
    assert run() == base and pipe.unet.lazy.residency is not None
