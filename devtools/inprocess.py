"""Run API-format graphs in this process through ComfyUI's real executor (no HTTP).

ComfyUI keeps global registries, so one process hosts one ComfyUI: call `start` once.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import uuid
from pathlib import Path

from devtools.base_dir import PACK_NAME
from devtools.comfy_path import configure_comfy_args


class _SharedCore(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Gives the pack ComfyUI loads the same `core` modules the tests import: ComfyUI imports a pack under its
    folder path (`.../custom_nodes/prompt-optim`), so `from ...core.x import` in nodes/ would otherwise load
    a second copy of core/ whose classes differ from the tests' `core.x` ones. Names `<pack>.core[.x]`
    resolve to the module `core[.x]`, one import identity for every core module."""

    MARKER = os.sep + "custom_nodes" + os.sep + PACK_NAME + ".core"

    def find_spec(self, fullname, path=None, target=None):
        at = fullname.find(self.MARKER)
        rest = fullname[at + len(self.MARKER):] if at >= 0 else None
        if rest is None or (rest and not rest.startswith(".")):
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module("core" + spec.name[spec.name.find(self.MARKER) + len(self.MARKER):])

    def exec_module(self, module):
        pass  # already executed under its own name


def pack_package() -> str:
    """The package name ComfyUI gave this pack when it loaded it (its folder path, `.../custom_nodes/prompt-optim`)."""
    return next(name for name in sys.modules if name.endswith(os.sep + "custom_nodes" + os.sep + PACK_NAME))


def pack_module(name: str):
    """A module of the pack as ComfyUI loaded it, e.g. pack_module("nodes.comfy.recast")."""
    return importlib.import_module(f"{pack_package()}.{name}")


class EventLog:
    """Stands in for the websocket side of PromptServer: keeps what the executor would send."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.events: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))


class GraphError(RuntimeError):
    def __init__(self, message: dict):
        self.message = message
        super().__init__(f"{message.get('node_type')} (node {message.get('node_id')}): "
                         f"{message.get('exception_type')}: {message.get('exception_message')}")


class InvalidGraph(ValueError):
    """The graph was refused when queued (ComfyUI's validation, including nodes' validate_inputs)."""

    def __init__(self, error: dict, node_errors: dict):
        self.error, self.node_errors = error, node_errors
        # one line per refused input: ComfyUI's details, e.g. "last_steps - [IPGO ...] input 'last_steps': ..."
        self.details = [e.get("details", "") for node in node_errors.values() for e in node.get("errors", [])]
        super().__init__(f"invalid graph: {error} {node_errors}")


class InProcessComfy:
    def __init__(self, base_dir: Path):
        configure_comfy_args(base_dir)
        import utils.extra_config  # noqa: F401  (must precede `nodes`, which reorders sys.path)
        import execution
        import nodes

        logging.getLogger().setLevel(logging.WARNING)
        if not any(isinstance(finder, _SharedCore) for finder in sys.meta_path):
            sys.meta_path.insert(0, _SharedCore())
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        self.nodes = nodes
        self.execution = execution
        self.server = EventLog()
        self.executor = execution.PromptExecutor(self.server, cache_args={"lru": 0, "ram": 0})

    def run(self, graph: dict) -> dict:
        """Validate and execute an API-format graph; return {node_id: ui output}. Raises GraphError."""
        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(self.execution.validate_prompt(prompt_id, graph, None))
        if not valid:
            raise InvalidGraph(error, node_errors)
        self.executor.execute(graph, prompt_id, {"client_id": "tests"}, outputs)
        if not self.executor.success:
            for event, data in self.executor.status_messages:
                if event == "execution_error":
                    raise GraphError(data)
            raise RuntimeError(f"graph failed: {self.executor.status_messages}")
        return self.executor.history_result["outputs"]

    def node_outputs(self, node_id: str) -> list:
        """The cached outputs of a node from the last run: one list per output slot."""
        entry = self.executor.caches.outputs.get(str(node_id))
        if entry is None:
            raise KeyError(f"node {node_id} has no cached outputs")
        return entry.outputs

    def load_checkpoint(self, name: str):
        """(model, clip, vae) through the real CheckpointLoaderSimple, under inference mode as in a run."""
        import torch

        with torch.inference_mode():
            return self.nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]
