"""Settings errors that say which setting they concern, so a node can point at its own input by name."""
from __future__ import annotations


class SettingsError(ValueError):
    """A setting out of range or inconsistent. `field` is the settings field (None: not one field)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

    def message_for(self, name: str) -> str:
        """The message with the field's own name, where it starts the message, replaced by `name`."""
        text = str(self)
        if self.field and text.startswith(self.field + " "):
            return name + text[len(self.field):]
        return text
