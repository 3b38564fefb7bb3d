"""One error type that names the node and the input at fault, so users know what to change."""
from __future__ import annotations


class NodeInputError(ValueError):
    def __init__(self, node: str, input_name: str, message: str):
        self.node, self.input_name = node, input_name
        super().__init__(f"[{node}] input '{input_name}': {message}")


def require_prompt(node: str, input_name: str, text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise NodeInputError(node, input_name, "the prompt is empty; type the text to encode.")
    return text
