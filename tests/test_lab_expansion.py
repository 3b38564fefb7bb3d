"""The lab's exact expansion into SD1.x's layout (lab/unet.py, lab/text_encoder.py), on random weights:
ComfyUI's own modules built from the expanded weights compute what the narrow modules compute."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _comfy(comfy):
    """lab/ builds ComfyUI's modules: import them only once the session's ComfyUI is configured (importing
    ComfyUI earlier would fix its model folders before the test base directory is set)."""


def _randomize(module: torch.nn.Module, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():  # every weight non-zero, so every mapping is exercised
        p.data = torch.randn(p.shape, generator=gen) * 0.05


def test_wide_unet_computes_the_narrow_one():
    from lab.unet import SD1_WIDTH, build_unet, expand_state_dict, wide_shapes
    narrow = build_unet()
    _randomize(narrow, 0)
    wide = build_unet(SD1_WIDTH)
    wide.load_state_dict(expand_state_dict(narrow.state_dict(), wide_shapes()))
    gen = torch.Generator().manual_seed(1)
    x, t, ctx = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([3.0, 870.0]), torch.randn(2, 9, 768, generator=gen)
    with torch.no_grad():
        a, b = narrow(x, t, context=ctx), wide(x, t, context=ctx)
    assert a.abs().mean() > 1e-3
    assert (a - b).abs().max() < 1e-4 * a.abs().max()  # float32 rounding only


def test_expansion_rules_fail_loudly_and_pick_matching_frequencies():
    from lab.unet import FACTOR, SD1_WIDTH, WIDTH, _sinusoid_columns, build_unet, expand_state_dict, wide_shapes
    source = _sinusoid_columns(WIDTH, SD1_WIDTH)
    half_n, half_w = WIDTH // 2, SD1_WIDTH // 2
    # frequency of wide cos feature j is exp(-ln(1e4) j / half_w); narrow i: exp(-ln(1e4) i / half_n)
    for j in range(SD1_WIDTH):
        i = int(source[j])
        if i < 0:
            continue
        jj, ii = (j, i) if j < half_w else (j - half_w, i - half_n)
        assert (j < half_w) == (i < half_n) and jj / half_w == pytest.approx(ii / half_n)
    assert int((source >= 0).sum()) == WIDTH and FACTOR * WIDTH == SD1_WIDTH
    narrow = build_unet().state_dict()
    bad = {**narrow, "input_blocks.0.0.weight": torch.zeros(33, 4, 3, 3)}
    with pytest.raises(ValueError, match="input_blocks.0.0.weight"):
        expand_state_dict(bad, wide_shapes())


@pytest.mark.parametrize("layers, mlp_width", [(1, 0), (3, 48)])
def test_expanded_text_encoder_is_comfyuis_sd1_clip(layers, mlp_width):
    """Through ComfyUI's SD1 CLIP (12 layers, causal mask, quick_gelu MLPs, final norm) with the expanded
    weights: the v1 shape (one attention-only block) and a deeper one with narrow MLPs."""
    import comfy.sd1_clip

    from lab.text_encoder import LabTextEncoder
    from lab.train import Tokenizer, world_token_ids

    tokenizer = Tokenizer()
    text = LabTextEncoder(world_token_ids(tokenizer), layers=layers, mlp_width=mlp_width)
    _randomize(text, 2)
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    missing, unexpected = clip.transformer.load_state_dict(
        {k[len("cond_stage_model.transformer."):]: v for k, v in text.expand().items()}, strict=False)
    assert not unexpected and set(missing) <= {"text_projection.weight"}, (missing, unexpected)
    ids = tokenizer(["a small red circle on the left, white background", ""])
    with torch.no_grad():
        mine = text(ids)
        theirs = clip.transformer(ids, intermediate_output=None)[0]
    assert (mine - theirs).abs().max() < 1e-4, (mine - theirs).abs().max()
    with pytest.raises(ValueError, match="not in the lab vocabulary"):
        text(tokenizer(["a purple hexagon"]))
    # the full-vocabulary copy (the rewriter's renderer) encodes any text as the expanded checkpoint does
    full = text.with_full_vocabulary()
    ids = tokenizer(["a purple hexagon Rephrase :", "a small red circle on the left, white background"])
    with torch.no_grad():
        mine, theirs = full(ids), clip.transformer(ids, intermediate_output=None)[0]
    assert (mine - theirs).abs().max() < 1e-4, (mine - theirs).abs().max()


def test_compact_text_encoder_reads_both_key_layouts():
    """v1 files name the one block's weights without a block index; both layouts load to the same encoder,
    and the recorded attention weights reproduce the fused attention's output."""
    from lab.text_encoder import LabTextEncoder
    from lab.train import Tokenizer, world_token_ids

    tokenizer = Tokenizer()
    text = LabTextEncoder(world_token_ids(tokenizer), layers=2, mlp_width=16)
    _randomize(text, 3)
    named = {"text." + k: v for k, v in text.state_dict().items()}
    one_block = LabTextEncoder(world_token_ids(tokenizer))
    _randomize(one_block, 4)
    v1 = {"text." + k.replace("blocks.0.", ""): v for k, v in one_block.state_dict().items()}
    ids = tokenizer(["a small red circle on the left, white background", "a square"])
    with torch.no_grad():
        for original, state, layers in ((text, named, 2), (one_block, v1, 1)):
            loaded = LabTextEncoder.from_compact(state)
            assert len(loaded.blocks) == layers
            assert torch.equal(loaded(ids), original(ids))
            recorded: list = []
            again = loaded.encode_embeddings(loaded.embed(ids), recorded)
            assert len(recorded) == layers and (again - original(ids)).abs().max() < 1e-5
            assert torch.allclose(recorded[0].sum(-1), torch.ones(()), atol=1e-5)
            assert float(recorded[0].triu(1).abs().max()) == 0.0  # causal: no query sees a later key
