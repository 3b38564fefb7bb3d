"""The ComfyUI face of the pack: V3 node schemas and adapters from ComfyUI objects to core/."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .gradient_check_node import GradientCheck

NODES: list[type[io.ComfyNode]] = [GradientCheck]


class PromptOptimExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> PromptOptimExtension:
    return PromptOptimExtension()
