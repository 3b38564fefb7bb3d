"""CLIP Text Encode (one image per line): many prompts as one batched CONDITIONING, row i = line i.

One sampler run then draws every prompt (e.g. all of a rewriter's rewrites) in one batch instead of once
per list item, which is several times faster on a GPU and on a CPU alike. Prompts whose token lengths
differ (a long prompt takes 154 tokens instead of 77) are brought to a common length by repeating each
one's tokens, as ComfyUI itself does when it batches conditionings: attention over k copies of every
key gives the same weights, so each row conditions its image exactly as CLIP Text Encode would.
"""
from __future__ import annotations

import math

import torch
from comfy_api.latest import io

from ..comfy.errors import NodeInputError, require_prompt

CATEGORY = "prompt_optim/conditioning"

NODE = "CLIP Text Encode, One Image per Line"


def _repeat_to(tensor: torch.Tensor, length: int) -> torch.Tensor:
    return tensor.repeat(1, length // tensor.shape[1], *([1] * (tensor.dim() - 2)))


def batch_conditionings(encoded: list[list]) -> list:
    """[[cond (1, L_i, D), extras_i], ...] (one CONDITIONING per prompt) -> [[cond (N, L, D), extras]]."""
    for i, conditioning in enumerate(encoded):
        if len(conditioning) != 1 or conditioning[0][0].shape[0] != 1:
            raise NodeInputError(NODE, "clip", f"line {i + 1} encoded to {len(conditioning)} conditionings (hooks "
                                 "or scheduled prompts); this node batches plain prompts only.")
    conds = [c[0][0] for c in encoded]
    length = math.lcm(*(c.shape[1] for c in conds))
    extras = {}
    for key in encoded[0][0][1]:
        values = [c[0][1].get(key) for c in encoded]
        if all(isinstance(v, torch.Tensor) and v.shape[0] == 1 for v in values):
            if len({tuple(v.shape[1:]) for v in values}) != 1:
                raise NodeInputError(NODE, "text", f"the prompts' '{key}' tensors differ in shape; encode them "
                                     "separately (CLIP Text Encode on a list).")
            extras[key] = torch.cat(values)
        elif all(v is None for v in values) or all(not isinstance(v, torch.Tensor) and v == values[0] for v in values):
            extras[key] = values[0]
        else:
            raise NodeInputError(NODE, "text", f"the prompts' '{key}' entries differ and cannot be batched; encode "
                                 "them separately (CLIP Text Encode on a list).")
    return [[torch.cat([_repeat_to(c, length) for c in conds]), extras]]


class TextEncodeBatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PromptOptim_TextEncodeBatch",
            display_name=NODE,
            category=CATEGORY,
            description="Encodes each line of the text as its own prompt and stacks them into one conditioning, "
                        "row i for line i. With a latent of the same batch size, one sampler run draws image i "
                        "from prompt i: e.g. the GFlowNet Prompt Rewriter's 'text' output sampled in one batch "
                        "instead of one sampler run per rewrite.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder, e.g. the checkpoint loader's CLIP output."),
                io.String.Input("text", multiline=True, default="",
                                tooltip="One prompt per line; empty lines are skipped."),
            ],
            outputs=[
                io.Conditioning.Output(tooltip="One row per line, in order. The latent's batch size must equal the "
                                               "number of lines (the 'count' output), or ComfyUI repeats or cuts the "
                                               "rows to fit."),
                io.Int.Output(display_name="count", tooltip="Number of prompts: wire it to the latent's batch_size."),
            ],
        )

    @classmethod
    def execute(cls, clip, text) -> io.NodeOutput:
        if clip is None:
            raise NodeInputError(NODE, "clip", "no text encoder: the checkpoint has none; load one with a CLIP "
                                 "loader.")
        prompts = [line.strip() for line in require_prompt(NODE, "text", text).splitlines() if line.strip()]
        encoded = [clip.encode_from_tokens_scheduled(clip.tokenize(p)) for p in prompts]
        return io.NodeOutput(batch_conditionings(encoded), len(prompts))


NODES = [TextEncodeBatch]
