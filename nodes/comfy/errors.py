"""One error type that names the node and the input at fault, so users know what to change."""
from __future__ import annotations


class NodeInputError(ValueError):
    def __init__(self, node: str, input_name: str, message: str):
        self.node, self.input_name = node, input_name
        super().__init__(f"[{node}] input '{input_name}': {message}")


def settings_input_error(node: str, error, inputs: dict[str, str] | None = None,
                         fallback: str | None = None) -> NodeInputError:
    """A core settings error (core.shared.settings_error.SettingsError) as a NodeInputError naming the node's input:
    `inputs` maps settings fields to input names where they differ; `fallback` is blamed when the error
    concerns no single field."""
    name = (inputs or {}).get(error.field, error.field) or fallback or "settings"
    return NodeInputError(node, name, error.message_for(name))


def require_prompt(node: str, input_name: str, text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise NodeInputError(node, input_name, "the prompt is empty; type the text to encode.")
    return text
