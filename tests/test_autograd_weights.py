"""core.shared.autograd_weights: inference-mode weights usable by autograd with no copy of them."""
import torch

from core.shared.autograd_weights import autograd_ready


def _inference_model() -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.inference_mode():  # as ComfyUI loads checkpoints
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
        model.register_buffer("scale", torch.full((3,), 2.0))
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    return model


def _forward(model, x):
    return model(x) * model.scale


def test_weights_are_shared_not_copied_and_restored_afterwards():
    model = _inference_model()
    originals = {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    assert all(t.is_inference() for t in originals.values())
    x = torch.randn(4, 6, requires_grad=True)
    with torch.inference_mode(False), autograd_ready(model) as scope:
        inside = dict([*model.named_parameters(), *model.named_buffers()])
        for name, tensor in inside.items():
            assert not tensor.is_inference(), name
            assert tensor.data_ptr() == originals[name].data_ptr(), f"{name} was copied"
            assert not tensor.requires_grad, f"{name} must stay frozen"
        _forward(model, x).square().sum().backward()
    assert scope.extra_bytes == 0
    assert scope.aliased_bytes == sum(t.numel() * t.element_size() for t in originals.values())
    after = dict([*model.named_parameters(), *model.named_buffers()])
    assert all(after[name] is originals[name] for name in originals), "the module must get its own tensors back"
    # the gradient equals the one through ordinary (non-inference) weights
    plain = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    plain.load_state_dict({k: v.clone() for k, v in model.state_dict().items() if k != "scale"})
    x2 = x.detach().clone().requires_grad_(True)
    (plain(x2) * 2.0).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)


def test_a_weight_moved_inside_the_scope_keeps_its_new_place():
    model = _inference_model()
    first = model[0].weight
    with torch.inference_mode(False), autograd_ready(model):
        moved = model[0].weight.detach().double().float()  # as an offload would: same values, new memory
        model[0].weight.data = moved
    assert model[0].weight is not first and model[0].weight.data_ptr() == moved.data_ptr()
    assert model[2].weight.is_inference(), "untouched weights are restored"


class _Packed(torch.Tensor):
    """Stands for another pack's tensor subclass (quantized weights), which cannot be re-viewed as plain."""


def test_tensor_subclasses_are_copied_and_counted():
    model = _inference_model()
    with torch.inference_mode():
        packed = model[2].weight.data.as_subclass(_Packed)
    model[2]._parameters["weight"] = torch.nn.Parameter(packed, requires_grad=False)
    with torch.inference_mode(False), autograd_ready(model) as scope:
        assert model[2].weight.data_ptr() != packed.data_ptr()
    assert scope.extra_bytes == packed.numel() * packed.element_size()
    assert model[2].weight.data_ptr() == packed.data_ptr()
