"""ComfyUI's "prompt" chunk (the node graph it ran, API format) as an Infotext, for the graphs that have one.

A ComfyUI graph is a program, not a record of settings: only the basic text-to-image shape is read, where every
value is a literal on a known node:

    CheckpointLoaderSimple -> [LoraLoader ...] -> KSampler (or KSamplerAdvanced) <- EmptyLatentImage
                 clip -> [CLIPSetLastLayer] -> CLIPTextEncode (positive, negative)

Anything else (two samplers as in hires fix, image inputs, prompts built by other nodes, custom nodes on the way)
is refused in one line naming what was found, rather than guessed at.
"""

from __future__ import annotations

import json

from .foreign import Refused, comfy_sampler, comfy_schedule, file_stem, setting_text, settings_text, with_lora_tags
from .metadata import Infotext

_SAMPLERS = ("KSampler", "KSamplerAdvanced")
_BASIC = ("sdkit reads a basic text-to-image graph (one KSampler fed by CLIPTextEncode prompts, an "
          "EmptyLatentImage and a checkpoint loader, with LoraLoader or CLIPSetLastLayer between)")


def read(text: str | None) -> Infotext:
    """`text`: the "prompt" chunk, None when the file has only the "workflow" one."""
    if text is None:
        raise Refused("made with ComfyUI, but it stores only the editor's workflow, not the graph it ran ('prompt' "
                      "chunk)")
    try:
        graph = json.loads(text)
    except ValueError:
        graph = None
    if not isinstance(graph, dict) or not all(isinstance(n, dict) for n in graph.values()):
        raise Refused("made with ComfyUI, but its 'prompt' chunk is not a node graph")
    samplers = [id_ for id_, n in graph.items() if n.get("class_type") in _SAMPLERS]
    if len(samplers) != 1:
        _refuse(f"this one has {len(samplers)} sampler nodes")
    return _Reader(graph).infotext(samplers[0])


class _Reader:
    def __init__(self, graph: dict):
        self.graph = graph
        self.loras: dict[int, list] = {}  # LoraLoader node -> [name, clip strength, model strength]
        self.clip_skip = None

    def infotext(self, sampler_id: str) -> Infotext:
        s = self.node(sampler_id)
        advanced = s["class_type"] == "KSamplerAdvanced"
        seed = self.literal(s, "noise_seed" if advanced else "seed", int)
        steps = self.literal(s, "steps", int)
        if advanced:
            if self.literal(s, "add_noise", str) != "enable" or self.literal(s, "start_at_step", int) != 0 \
                    or self.literal(s, "end_at_step", int) < steps:
                _refuse("its KSamplerAdvanced runs only part of the steps")
        elif (denoise := self.literal(s, "denoise", (int, float))) != 1:
            _refuse(f"its KSampler denoises {denoise:.3g} of the way (image to image)")

        latent = self.linked(s, "latent_image", ("EmptyLatentImage",))
        checkpoint = self.model_source(s)
        prompts = [self.prompt(s, key, checkpoint) for key in ("positive", "negative")]

        settings = {"Steps": steps, "Sampler": comfy_sampler(self.literal(s, "sampler_name", str)),
                    "Schedule type": comfy_schedule(self.literal(s, "scheduler", str)),
                    "CFG scale": self.literal(s, "cfg", (int, float)), "Seed": seed,
                    "Size": f"{self.literal(latent, 'width', int)}x{self.literal(latent, 'height', int)}",
                    "Model": file_stem(self.literal(checkpoint, "ckpt_name", str)),
                    "Clip skip": self.clip_skip}
        loras = []
        for name, te, unet in self.loras.values():  # None: the LoRA is not on that path, so weight 0 there
            te, unet = te or 0, unet or 0
            weight = unet if te == unet else f"{setting_text(te)}:{setting_text(unet)}"  # A1111's NAME:TE:UNET
            loras.append((name, weight))
        return Infotext(with_lora_tags(prompts[0], loras), prompts[1], settings_text(settings))

    def model_source(self, sampler: dict) -> dict:
        """The checkpoint loader behind the sampler's model input, collecting LoRA model strengths on the way."""
        node = self.linked(sampler, "model", ("CheckpointLoaderSimple", "LoraLoader", "LoraLoaderModelOnly"))
        while node["class_type"] != "CheckpointLoaderSimple":
            self.lora(node)[2] = self.literal(node, "strength_model", (int, float))
            node = self.linked(node, "model", ("CheckpointLoaderSimple", "LoraLoader", "LoraLoaderModelOnly"))
        return node

    def prompt(self, sampler: dict, key: str, checkpoint: dict) -> str:
        encode = self.linked(sampler, key, ("CLIPTextEncode",))
        text = self.literal(encode, "text", str)
        node = self.linked(encode, "clip", ("CheckpointLoaderSimple", "LoraLoader", "CLIPSetLastLayer"))
        while node["class_type"] != "CheckpointLoaderSimple":
            if node["class_type"] == "CLIPSetLastLayer":
                skip = -self.literal(node, "stop_at_clip_layer", int)  # -2: A1111's Clip skip 2
                if self.clip_skip not in (None, skip):
                    _refuse("its prompts use different CLIP layers")
                self.clip_skip = skip
            else:
                self.lora(node)[1] = self.literal(node, "strength_clip", (int, float))
            node = self.linked(node, "clip", ("CheckpointLoaderSimple", "LoraLoader", "CLIPSetLastLayer"))
        if node is not checkpoint:
            _refuse("its prompts are encoded by another checkpoint's text encoder than the sampler's model")
        return text

    def lora(self, node: dict) -> list:
        name = file_stem(self.literal(node, "lora_name", str))
        return self.loras.setdefault(id(node), [name, None, None])

    def node(self, id_) -> dict:
        node = self.graph.get(str(id_))
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            _refuse(f"node {id_} is missing")
        return node

    def linked(self, node: dict, key: str, classes: tuple[str, ...]) -> dict:
        link = node["inputs"].get(key)
        if not (isinstance(link, list) and len(link) == 2):
            _refuse(f"its {node['class_type']} has no '{key}' input")
        source = self.node(link[0])
        if source.get("class_type") not in classes:
            _refuse(f"its {node['class_type']}'s {key} comes from a {source.get('class_type')} node")
        return source

    def literal(self, node: dict, key: str, kind):
        value = node["inputs"].get(key)
        if isinstance(value, list):
            _refuse(f"its {node['class_type']}'s {key} comes from another node")
        if not isinstance(value, kind) or isinstance(value, bool):
            _refuse(f"its {node['class_type']} has no {key}")
        return value


def _refuse(what: str):
    raise Refused(f"made with ComfyUI: {_BASIC}; {what}")
