"""Core settings errors name the node's input by the error's field, not by reading the message."""
import pytest


@pytest.fixture(scope="module")
def loaded(comfy):
    from devtools.inprocess import pack_module

    return pack_module


@pytest.mark.parametrize("module, settings_class, error_class, values, node_module, input_name, words", [
    # the settings fields whose input has another name
    ("core.minority.optimize", "MinoritySettings", "MinoritySettingsError", {"fraction": 1.5}, "nodes.minority.nodes",
     "optimize_fraction", "optimize_fraction must be at most 1"),
    ("core.minority.optimize", "MinoritySettings", "MinoritySettingsError", {"every": 0}, "nodes.minority.nodes",
     "every_n_steps", "every_n_steps must be a whole number >= 1"),
    ("core.minority.optimize", "MinoritySettings", "MinoritySettingsError", {"target": "x"}, "nodes.minority.nodes",
     "optimize", "optimize must be one of"),
    ("core.minority.optimize", "MinoritySettings", "MinoritySettingsError", {"lr": 0.0}, "nodes.minority.nodes",
     "lr", "lr must be > 0"),
    ("core.ipgo.optimize", "IpgoSettings", "IpgoSettingsError", {"lr": 0.0}, "nodes.ipgo.nodes",
     "learning_rate", "learning_rate must be > 0"),
    ("core.ipgo.optimize", "IpgoSettings", "IpgoSettingsError", {"last_steps": 0}, "nodes.ipgo.nodes",
     "last_steps", "last_steps must be a whole number >= 1"),
    ("core.date.update", "DateSettings", "DateSettingsError", {"rho": -1.0}, "nodes.date.nodes", "rho", "rho must be"),
    ("core.date.update", "UpdateSchedule", "DateSettingsError", {"kind": "step_list", "value": "x"}, "nodes.date.nodes",
     "schedule_value", "cannot read"),
    ("core.date.update", "UpdateSchedule", "DateSettingsError", {"kind": "often", "value": "1"}, "nodes.date.nodes",
     "schedule", "schedule must be one of"),
])
def test_settings_errors_name_the_input(loaded, module, settings_class, error_class, values, node_module,
                                        input_name, words):
    core, node = loaded(module), loaded(node_module)
    errors = loaded("nodes.comfy.errors")
    with pytest.raises(getattr(core, error_class)) as caught:
        getattr(core, settings_class)(**values)
    inputs = node.SETTINGS_INPUTS
    error = errors.settings_input_error("Node", caught.value, inputs, fallback="settings")
    assert error.input_name == input_name and words in str(error), str(error)
    assert str(error).startswith(f"[Node] input '{input_name}': ")
