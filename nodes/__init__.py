"""The ComfyUI face of the pack: V3 node schemas and adapters from ComfyUI objects to core/."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import reward_folder, rewriter_folder
from .date_nodes import NODES as DATE_NODES
from .gfn_rewriter_node import NODES as REWRITER_NODES
from .gradient_check_node import GradientCheck
from .ipgo_nodes import NODES as IPGO_NODES
from .likelihood_node import NODES as LIKELIHOOD_NODES
from .minority_nodes import NODES as MINORITY_NODES
from .reward_nodes import NODES as REWARD_NODES
from .text_batch_node import NODES as TEXT_BATCH_NODES

reward_folder.REWARDS.register()
rewriter_folder.REWRITERS.register()

NODES: list[type[io.ComfyNode]] = [GradientCheck, *REWARD_NODES, *DATE_NODES, *MINORITY_NODES, *LIKELIHOOD_NODES,
                                  *IPGO_NODES, *REWRITER_NODES, *TEXT_BATCH_NODES]


class PromptOptimExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> PromptOptimExtension:
    return PromptOptimExtension()
