"""ComfyUI entry point of the prompt-optim node pack.

ComfyUI imports this module from custom_nodes/. The nodes use ComfyUI's V3 node API
(comfy_api.latest); on a ComfyUI too old to have it, the pack logs one line and loads no nodes,
and ComfyUI keeps running.
"""
import logging

# web/results.js draws each node's text result (scores, rewrites, reports) on the node after a run
WEB_DIRECTORY = "./web"

try:
    import comfy_api.latest  # noqa: F401  (V3 node API, ComfyUI >= 0.3.75)
except ImportError as error:
    logging.getLogger("prompt-optim").error(
        "prompt-optim: this ComfyUI lacks the V3 node API (comfy_api.latest: %s); update ComfyUI to "
        "0.3.75 or newer. No prompt-optim nodes were loaded.", error)
    NODE_CLASS_MAPPINGS = {}
    NODE_DISPLAY_NAME_MAPPINGS = {}
else:
    from .nodes import comfy_entrypoint  # noqa: F401

