"""CLIP Text Encode that keeps its text: the prompt rides along in the conditioning, so reward-driven nodes
downstream (DATE) score images against the same words without retyping them."""
from __future__ import annotations

import node_helpers
from comfy_api.latest import io

from ..comfy.errors import NodeInputError, require_prompt

CATEGORY = "prompt_optim/conditioning"

PROMPT_TEXT_KEY = "prompt_optim_text"  # the prompt a conditioning was encoded from, for rewards downstream
ENCODE_NODE = "CLIP Text Encode, keep text"


def stored_prompt(conditioning) -> str | None:
    """The first prompt text stored in a conditioning's entries, or None."""
    stored = [entry[1].get(PROMPT_TEXT_KEY) for entry in conditioning if entry[1].get(PROMPT_TEXT_KEY)]
    return stored[0] if stored else None


class TextEncodeKeepText(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PromptOptim_TextEncodeKeepText",
            display_name=ENCODE_NODE,
            category=CATEGORY,
            description="CLIP Text Encode that also stores the prompt text in the conditioning, so reward-driven "
                        "nodes downstream (DATE) score images against the same text without retyping it (its "
                        "plain words: weights such as (red:1.3) read as red; embedding:name is left out). "
                        "Samples exactly like CLIP Text Encode.",
            inputs=[io.Clip.Input("clip", tooltip="The text encoder (from the checkpoint loader)."),
                    io.String.Input("text", multiline=True, dynamic_prompts=True, tooltip="The prompt.")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, text) -> io.NodeOutput:
        require_prompt(ENCODE_NODE, "text", text)
        if clip is None:
            raise NodeInputError(ENCODE_NODE, "clip", "no CLIP: the checkpoint has no text encoder.")
        conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        return io.NodeOutput(node_helpers.conditioning_set_values(conditioning, {PROMPT_TEXT_KEY: text}))


NODES = [TextEncodeKeepText]
