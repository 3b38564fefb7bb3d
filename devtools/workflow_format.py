"""Convert ComfyUI's UI workflow files (what the graph editor saves) to API-format prompts.

The graph editor saves nodes with positional `widgets_values`; /prompt wants named inputs. The
mapping follows /object_info's input order, as the frontend's own graphToPrompt does (the browser
test compares the two on every workflow in workflows/).
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}
MUTED, BYPASSED = 2, 4


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_widget(name: str, spec) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in options:
        return bool(options["control_after_generate"])
    return spec[0] == "INT" and name in SEED_NAMES


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (MUTED, BYPASSED):
            raise ValueError(f"node {node['id']} ({node['type']}) is muted or bypassed; not supported here")
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node type {node['type']!r} (node {node['id']}) is not installed")
        linked = {}
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                _, origin, slot, *_ = links[inp["link"]]
                linked[inp["name"]] = [str(origin), slot]
        values = list(node.get("widgets_values") or [])
        inputs = {}
        order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
        for section in ("required", "optional"):
            for name in order.get(section, []):
                spec = info["input"][section][name]
                if _is_widget(spec) and values:
                    inputs[name] = values.pop(0)
                    if _has_control_widget(name, spec) and values:
                        values.pop(0)
                if name in linked:
                    inputs[name] = linked[name]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
