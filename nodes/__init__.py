"""The ComfyUI face of the pack: V3 node schemas and adapters from ComfyUI objects to core/."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .conditioning.keep_text import NODES as KEEP_TEXT_NODES
from .conditioning.text_batch import NODES as TEXT_BATCH_NODES
from .date.nodes import NODES as DATE_NODES
from .diagnostics.gradient_check import GradientCheck
from .diagnostics.likelihood import NODES as LIKELIHOOD_NODES
from .ipgo.nodes import NODES as IPGO_NODES
from .minority.nodes import NODES as MINORITY_NODES
from .rewards import folder as reward_folder
from .rewards.nodes import NODES as REWARD_NODES
from .rewriter import folder as rewriter_folder
from .rewriter.nodes import NODES as REWRITER_NODES

reward_folder.REWARDS.register()
rewriter_folder.REWRITERS.register()

NODES: list[type[io.ComfyNode]] = [GradientCheck, *REWARD_NODES, *KEEP_TEXT_NODES, *DATE_NODES, *MINORITY_NODES,
                                  *LIKELIHOOD_NODES, *IPGO_NODES, *REWRITER_NODES, *TEXT_BATCH_NODES]


class PromptOptimExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> PromptOptimExtension:
    return PromptOptimExtension()
