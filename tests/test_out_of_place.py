"""nodes/comfy/out_of_place.py on ComfyUI's own blocks that add residuals in place (Flux's single-stream block,
T5's feed-forward layer): without it their backward fails; with it the forward is bit-identical, the gradient
matches finite differences, and the blocks are left as they were."""
import pytest
import torch


def _single_stream_block():
    import comfy.ops
    from comfy.ldm.flux.layers import SingleStreamBlock

    torch.manual_seed(0)
    block = SingleStreamBlock(64, 2, 4.0, operations=comfy.ops.manual_cast)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.05)
    x = torch.randn(1, 6, 64, dtype=torch.float64)
    vec = torch.randn(1, 64, dtype=torch.float64)
    pe = torch.zeros(1, 1, 6, 16, 2, 2, dtype=torch.float64)
    pe[..., 0, 0] = pe[..., 1, 1] = 1.0  # identity rotation
    return block.double(), (lambda b, v: b(v, vec=vec, pe=pe)), x


def _t5_feed_forward():
    import comfy.ops
    from comfy.text_encoders.t5 import T5LayerFF

    torch.manual_seed(0)
    block = T5LayerFF(32, 48, "gelu_pytorch_tanh", True, torch.float64, None, comfy.ops.manual_cast)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)
    return block, (lambda b, v: b(v)), torch.randn(1, 5, 32, dtype=torch.float64)


@pytest.mark.parametrize("make", [_single_stream_block, _t5_feed_forward], ids=["flux_single_stream", "t5_ff"])
def test_in_place_blocks_become_differentiable(pack, make):
    import importlib

    out_of_place = importlib.import_module(f"{pack.package}.nodes.comfy.out_of_place").out_of_place_adds
    block, run, x = make()
    with torch.no_grad():
        reference = run(block, x.clone())
    weight = torch.randn_like(reference)

    x1 = x.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (run(block, x1 * 1.0) * weight).sum().backward()

    x2 = x.clone().requires_grad_(True)
    with out_of_place(block):
        out = run(block, x2 * 1.0)
        assert type(out) is torch.Tensor and torch.equal(out.detach(), reference)
        (out * weight).sum().backward()
    assert "forward" not in block.__dict__
    direction = torch.randn_like(x)
    eps = 1e-6
    with torch.no_grad():
        plus, minus = run(block, x + eps * direction), run(block, x - eps * direction)
    finite = float(((plus - minus) * weight).sum() / (2 * eps))
    torch.testing.assert_close(float((x2.grad * direction).sum()), finite, rtol=1e-6, atol=1e-9)
