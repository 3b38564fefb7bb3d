"""Cross-field checks in a node's `validate_inputs`, so they fail when the graph is queued, before any run.

ComfyUI calls `validate_inputs` with the widget values it names (a value arriving through a link is not
known yet and comes as None: then `execute` checks it), and skips its own range and option checks for
exactly those inputs, so `queued_check` repeats them from the node's schema first. The result is what
ComfyUI expects: True, or a message, which it shows at each named input.
"""
from __future__ import annotations

from typing import Callable

from .errors import NodeInputError


def _declared(node_cls, name: str):
    inputs = node_cls.INPUT_TYPES()
    for section in ("required", "optional"):
        if name in inputs.get(section, {}):
            spec = inputs[section][name]
            return spec[0], (spec[1] if len(spec) > 1 else {})
    raise KeyError(f"{node_cls.__name__} has no input {name!r}")


def declared_range_error(node_cls, node: str, values: dict) -> str | None:
    """ComfyUI's own min/max and option checks for `values`, with its wording, or None."""
    for name, value in values.items():
        kind, options = _declared(node_cls, name)
        choices = kind if isinstance(kind, list) else options.get("options") if kind == "COMBO" else None
        if choices is not None and value not in choices:
            return str(NodeInputError(node, name, f"{value!r} is not one of {list(choices)}."))
        if "min" in options and value < options["min"]:
            return str(NodeInputError(node, name, f"value {value} smaller than min of {options['min']}."))
        if "max" in options and value > options["max"]:
            return str(NodeInputError(node, name, f"value {value} bigger than max of {options['max']}."))
    return None


def queued_check(node_cls, node: str, values: dict, check: Callable[..., None]) -> bool | str:
    """Run `check(**values)` (it raises NodeInputError) when every value is known; True or the message."""
    known = {name: value for name, value in values.items() if value is not None}
    message = declared_range_error(node_cls, node, known)
    if message is not None:
        return message
    if len(known) < len(values):
        return True  # a linked value: execute() checks it
    try:
        check(**values)
    except NodeInputError as e:
        return str(e)
    return True
