"""A method's rarely changed settings on an options node of their own, the way ComfyUI splits KSampler's work
into sampler, sigmas and guider nodes: the method node shows the few settings users change (at most about
eight widgets), and an optional `options` socket takes the rest from the method's options node. Nothing
connected means the defaults, which are the authors' released settings, so a workflow without an options
node runs exactly what the method node with every widget at its default ran.

The options travel as a plain dict {input name: value}; the method node merges them over the defaults and
runs the same code as before. The earlier nodes that showed every setting stay registered, marked
deprecated (hidden from search, still loaded and run), so saved workflows keep their values.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from comfy_api.latest import io

from .errors import NodeInputError


@dataclass(frozen=True)
class MethodOptions:
    """A method's options node. `all_inputs` makes the method's full settings inputs (one source for
    tooltips and defaults); `names` are those that live on the options node."""

    socket: type  # io.Custom(...) type of the options socket
    node_id: str
    display_name: str
    category: str
    description: str
    all_inputs: Callable[[], list]
    names: tuple[str, ...]

    def inputs(self) -> list:
        """The options node's inputs, in the method's order, made optional: each has a default."""
        chosen = [i for i in self.all_inputs() if i.id in self.names]
        missing = set(self.names) - {i.id for i in chosen}
        if missing:
            raise KeyError(f"{self.display_name}: no settings inputs named {sorted(missing)}")
        return chosen

    def shown(self) -> list:
        """The settings inputs that stay on the method node."""
        return [i for i in self.all_inputs() if i.id not in self.names]

    def defaults(self) -> dict:
        return {i.id: i.default for i in self.inputs()}

    def socket_input(self) -> io.Input:
        return self.socket.Input("options", optional=True,
                                 tooltip=f"From '{self.display_name}': the method's other settings. Not "
                                         "connected: their defaults (the authors' released settings).")

    def resolve(self, node: str, options: Mapping | None) -> dict:
        """The options node's values over the defaults; a dict from anything else is refused by name."""
        values = self.defaults()
        if options is None:
            return values
        unknown = set(options) - set(values) if isinstance(options, Mapping) else set()
        if not isinstance(options, Mapping) or unknown:
            raise NodeInputError(node, "options", f"expects the output of '{self.display_name}'"
                                                  + (f"; unknown settings {sorted(unknown)}." if unknown else "."))
        values.update(options)
        return values

    def call(self, node: str, run: Callable, options: Mapping | None, shown: dict, *args):
        """run(*args, **settings): the options node's values over their defaults, then the node's shown
        settings; an error about a setting from the options node says where that setting is set."""
        values = self.resolve(node, options) | shown
        try:
            return run(*args, **values)
        except NodeInputError as e:
            raise self.blame(e) from None

    def blame(self, error: NodeInputError) -> NodeInputError:
        """An error about a setting that came from the options node says where that setting is."""
        if error.input_name not in self.names:
            return error
        message = str(error).split(": ", 1)[-1]
        return NodeInputError(error.node, error.input_name,
                              f"{message} (set on '{self.display_name}', connected to 'options')")

    def node(self, class_name: str, validate_inputs: Callable | None = None) -> type:
        """The options node class. `validate_inputs` (a method's queue-time check, named by its signature's
        inputs) moves here when every input it reads is an option."""
        options = self

        def define_schema(cls) -> io.Schema:
            return io.Schema(node_id=options.node_id, display_name=options.display_name, category=options.category,
                             description=options.description, inputs=options.inputs(),
                             outputs=[options.socket.Output(display_name="options",
                                                            tooltip="Into the method node's 'options' input.")])

        def execute(cls, **values) -> io.NodeOutput:
            return io.NodeOutput(MappingProxyType(dict(values)))  # read-only: one output may feed several nodes

        attributes = {"__module__": options.all_inputs.__module__, "__doc__": options.description,
                      "DISPLAY_NAME": options.display_name, "define_schema": classmethod(define_schema),
                      "execute": classmethod(execute)}
        if validate_inputs is not None and reads_only(validate_inputs, self.names):
            attributes["validate_inputs"] = classmethod(validate_inputs)
        return type(class_name, (io.ComfyNode,), attributes)


def reads_only(validate_inputs: Callable, names) -> bool:
    """Whether a validate_inputs(cls, a=None, ...) reads only inputs among `names`."""
    parameters = list(inspect.signature(validate_inputs).parameters)[1:]
    return bool(parameters) and set(parameters) <= set(names)
