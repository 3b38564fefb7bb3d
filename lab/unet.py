"""The lab denoiser: ComfyUI's own SD1.x UNet class, trained at 1/5 of SD1's width and expanded exactly.

ComfyUI recognizes an SD1.x checkpoint by its UNet having 320 base channels and a 768-wide context.
Training 320 channels on a CPU is slow, so the lab trains the same architecture with 64 channels and
writes every channel f = 5 times: channel c of the wide network is a copy of channel c // f of the
narrow one. That copy is exact for every layer of this UNet:
- a weight reading copied channels is divided by f (f copies summed give the narrow sum back);
- GroupNorm (32 groups) and LayerNorm see each narrow channel f times, so means and variances agree;
- attention heads keep their channels (8 heads: head h = narrow channels 8h.., wide channels 40h..), and
  the query is scaled by 1/sqrt(f) to undo both the f-fold dot product and the wider head's 1/sqrt(d);
- the timestep's 64 sinusoid frequencies are every f-th of the 320 (cos, then sin), so the wide
  network's first time layer reads those columns and gives the others zero weight.
A first model at 32 channels (4 per attention head) barely listened to the caption; 64 gives 8 per head.
lab tests compare the narrow network with the expanded checkpoint loaded by ComfyUI.
"""
from __future__ import annotations

import torch

SD1_WIDTH = 320
FACTOR = 5
WIDTH = SD1_WIDTH // FACTOR  # 64 channels trained
CONTEXT = 768  # SD1.x text-state width


def unet_config(width: int = WIDTH) -> dict:
    """Two levels (8x8 and 4x4 latents for 64 px images), one res block + transformer each, a middle block."""
    return dict(image_size=32, in_channels=4, out_channels=4, model_channels=width, num_res_blocks=[1, 1],
                channel_mult=(1, 2), num_heads=8, num_head_channels=-1, transformer_depth=[1, 1],
                transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1, context_dim=CONTEXT,
                use_spatial_transformer=True, legacy=False, use_linear_in_transformer=False)


def build_unet(width: int = WIDTH, device="cpu") -> torch.nn.Module:
    """ComfyUI's UNetModel with PyTorch's default initialization (ComfyUI's ops skip initialization)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**unet_config(width), device=device, operations=comfy.ops.disable_weight_init)
    reset_parameters(unet)
    return unet


def reset_parameters(module: torch.nn.Module):
    """Run torch's own initializers on ComfyUI's no-init layers; zero the layers SD zero-initializes."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.Embedding)
    for m in module.modules():
        for kind in kinds:
            if isinstance(m, kind):
                kind.reset_parameters(m)
                break
    for name, p in module.named_parameters():  # residual outputs start at zero, as in SD's UNet
        if name.startswith("out.2.") or ".out_layers.3." in name or ".proj_out." in name:
            torch.nn.init.zeros_(p)


def _sinusoid_columns(narrow: int, wide: int) -> torch.Tensor:
    """For each wide sinusoid feature, the narrow feature with the same frequency and phase, or -1."""
    half_n, half_w, step = narrow // 2, wide // 2, wide // narrow
    source = torch.full((wide,), -1, dtype=torch.long)
    for i in range(half_n):
        source[step * i] = i  # cos
        source[half_w + step * i] = half_n + i  # sin
    return source


def expand_state_dict(narrow: dict[str, torch.Tensor], wide_shapes: dict[str, torch.Size],
                      factor: int = FACTOR) -> dict[str, torch.Tensor]:
    """The wide UNet's weights from the narrow one's (see the module docstring)."""
    out = {}
    for key, shape in wide_shapes.items():
        t = narrow[key].float()
        if key == "time_embed.0.weight":
            source = _sinusoid_columns(t.shape[1], shape[1])
            t = torch.where(source >= 0, t[:, source.clamp(min=0)], torch.zeros(()))
            t = t.repeat_interleave(factor, dim=0)
        else:
            for dim, (n, w) in enumerate(zip(t.shape, shape)):
                if w == n:
                    continue
                if w != factor * n:
                    raise ValueError(f"{key}: dimension {dim} is {n} narrow, {w} wide; expected x{factor}")
                t = t.repeat_interleave(factor, dim=dim)
                if dim == 1:  # an input dimension: the copies sum back to the narrow value
                    t = t / factor
        if key.endswith(("attn1.to_q.weight", "attn2.to_q.weight")):
            t = t / factor ** 0.5
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{key}: expanded to {tuple(t.shape)}, expected {tuple(shape)}")
        out[key] = t
    return out


def wide_shapes() -> dict[str, torch.Size]:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    meta = UNetModel(**unet_config(SD1_WIDTH), device=torch.device("meta"), operations=comfy.ops.disable_weight_init)
    return {k: v.shape for k, v in meta.state_dict().items()}
