"""core.shared.diffusers_adapter on tiny random diffusers/transformers models (no ComfyUI involved)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from core.shared.conditioning import TextConditioning  # noqa: E402
from core.shared.diffusers_adapter import DiffusersDenoiser, TransformersTextEncoder  # noqa: E402
from core.shared.text_encoder import LearnableTokens  # noqa: E402
from devtools.comfy_path import comfyui_root  # noqa: E402


@pytest.fixture(scope="module")
def text_encoder():
    vocab = comfyui_root() / "comfy" / "sd1_tokenizer"  # ComfyUI ships CLIP's BPE files
    tokenizer = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"))
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, eos_token_id=49407)
    return TransformersTextEncoder(tokenizer, CLIPTextModel(config).eval())


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_x0_matches_the_schedulers_own_formula(kind):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(32, 64), cross_attention_dim=32, norm_num_groups=8,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    scheduler = diffusers.DDPMScheduler(prediction_type=kind)
    denoiser = DiffusersDenoiser(unet, scheduler)
    x0, noise, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    t = torch.tensor([700, 150])
    a = scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t = scheduler.add_noise(x0, noise, t)
    with torch.no_grad():
        out = unet(x_t, t, encoder_hidden_states=cond).sample
        reference = (x_t - (1 - a).sqrt() * out) / a.sqrt() if kind == "epsilon" else a.sqrt() * x_t - (1 - a).sqrt() * out
        sigma = ((1 - a) / a).sqrt().reshape(-1)
        ours = denoiser.predict_x0(x_t / a.sqrt(), sigma, TextConditioning(cond))  # k-diffusion form
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(denoiser.timestep(sigma), t.double())
    assert abs(denoiser.fraction_of(denoiser.sigma_at(0.25)) - 0.25) < 1e-6


def test_spliced_word_reproduces_the_prompt_and_gets_gradient(text_encoder):
    enc = text_encoder
    cat = enc.word_embeddings("l", "cat")
    with torch.no_grad():
        reference = enc.encode("a photo of a cat").cross_attn
        at_end = enc.encode("a photo of a", LearnableTokens({"l": cat}, "end")).cross_attn
        at_start = enc.encode("photo of a cat", LearnableTokens({"l": enc.word_embeddings("l", "a")}, "start")).cross_attn
    torch.testing.assert_close(at_end, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(at_start, reference, atol=1e-5, rtol=1e-5)
    token = torch.randn(1, 32, requires_grad=True)
    enc.encode("a photo of a", LearnableTokens({"l": token})).cross_attn.square().sum().backward()
    assert token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no room"):
        enc.encode("cat " * 75, LearnableTokens({"l": token}))
