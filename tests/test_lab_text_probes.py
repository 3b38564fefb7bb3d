"""The probes that hold the lab text encoder to CLIP's behaviour with an appended token (lab/text_probes.py),
checked on encoders whose answer is known in closed form."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _comfy(comfy):
    """The probes read captions through ComfyUI's SD1 tokenizer: import it once ComfyUI is configured."""


def _encoder(layers: int = 1, mlp_width: int = 0, seed: int = 0):
    from lab.text_encoder import LabTextEncoder
    from lab.train import Tokenizer, world_token_ids

    tokenizer = Tokenizer()
    encoder = LabTextEncoder(world_token_ids(tokenizer), layers=layers, mlp_width=mlp_width)
    gen = torch.Generator().manual_seed(seed)
    for p in encoder.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.05
    return encoder, tokenizer


def test_attention_share_with_uniform_attention_is_one_over_the_query_position():
    """With zero queries and keys every causal query spreads its weight evenly: the padding query at position
    p gives the token 1/(p + 1), and no logit stands out."""
    from lab.text_probes import attention_share, saturation

    encoder, tokenizer = _encoder()
    with torch.no_grad():
        for name in ("q", "k"):
            getattr(encoder.blocks[0], name).up.zero_()
            getattr(encoder.blocks[0], name).bias.zero_()
    ids = tokenizer(["a circle"])  # BOS a circle EOS: the token goes to position 3, the end token to 4
    share = attention_share(encoder, ids, torch.randn(768))
    expected = sum(1 / (p + 1) for p in range(5, 77)) / len(range(5, 77))
    assert share == [pytest.approx(expected, rel=1e-5)]
    assert saturation(encoder, ids) == (0.0, 0.0)


@pytest.mark.slow
def test_padding_sensitivity_is_the_jacobians_largest_singular_value():
    """Power iteration against the full Jacobian's spectral norm (the full Jacobian is the slow part)."""
    from lab.text_probes import sensitivity, with_token

    encoder, tokenizer = _encoder(layers=2, mlp_width=16)
    x, position = with_token(encoder, tokenizer(["a red square"]), torch.randn(768) * 0.02)
    x = x.detach()
    rows = slice(position + 2, None)

    def padding(v):
        moved = torch.cat([x[:, :position], v.view(1, 1, -1), x[:, position + 1:]], 1)
        return encoder.encode_embeddings(moved, [])[0, rows].flatten()  # unfused attention: forward-mode AD

    jacobian = torch.autograd.functional.jacobian(padding, x[0, position], vectorize=True, strategy="forward-mode")
    expected = float(torch.linalg.matrix_norm(jacobian.detach(), ord=2))
    assert expected > 0.01
    assert sensitivity(encoder, x, position, rows) == pytest.approx(expected, rel=1e-3)
    # without attention output (and no MLP) nothing reaches later rows: the token is inert
    silent, _ = _encoder()
    with torch.no_grad():
        silent.blocks[0].o.up.zero_()
    x, position = with_token(silent, tokenizer(["a red square"]), torch.randn(768) * 0.02)
    assert sensitivity(silent, x.detach(), position, rows) == 0.0


def test_an_inserted_row_shifts_the_caption_and_keeps_its_length():
    from lab.text_probes import with_token

    encoder, tokenizer = _encoder()
    ids = tokenizer(["a red square"])  # BOS a red square EOS pad...
    row = torch.randn(768)
    with torch.no_grad():
        x, position = with_token(encoder, ids, row)
        tokens = encoder.token_embedding[encoder.local_ids(ids)][0]
        inputs = x[0] - encoder.position_embedding
    assert position == 4 and x.shape == (1, 77, 768)
    assert torch.allclose(inputs[:4], tokens[:4], atol=1e-6) and torch.allclose(inputs[4], row, atol=1e-6)
    assert torch.allclose(inputs[5:], tokens[4:-1], atol=1e-6)


def test_training_extra_rows_land_up_to_the_end_token_and_logits_are_penalized():
    """lab.train's text options. Off: the plain encoder's context, no penalty, nothing drawn from the
    generator (v1's training unchanged). On: every row lands between the start and the end token, word rows
    are the image's own attribute words, the context is the encoder's with those rows, and the penalty is
    the mean squared causal logit."""
    from lab.text_encoder import end_position
    from lab.train import TextOptions, attribute_word_ids, encode_for_training, extra_rows
    from lab.world import Scene

    encoder, tokenizer = _encoder(layers=2, mlp_width=8)
    ids = tokenizer(["a circle", "a small blue triangle on the left", ""])
    scenes = [Scene("circle", "yellow", "large", "left", "black"), Scene("triangle", "blue", "small", "left", "white"),
              Scene("square", "green", "large", "center", "white")]
    words = [attribute_word_ids(tokenizer, s) for s in scenes]
    assert words[0] == [int(tokenizer([w])[0, 1]) for w in ("yellow", "large", "black")]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        context, penalty = encode_for_training(encoder, ids, TextOptions(), gen, words)
        assert torch.equal(context, encoder(ids)) and float(penalty) == 0.0
        assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())

        word_rows = 0
        for seed in range(8):
            positions, rows = extra_rows(encoder, ids, 1.0, torch.Generator().manual_seed(seed), words)
            assert all(1 <= p <= end_position(ids[b]) for b, p in enumerate(positions))
            for b, row in enumerate(rows):
                own = encoder.token_embedding[encoder.local_ids(torch.tensor(words[b]))]
                word_rows += int(any(torch.equal(row, r) for r in own))
        assert 0 < word_rows < 24  # about half the rows are the image's own words, the rest noise
        options = TextOptions(layers=2, mlp_width=8, extra_token_rate=1.0, logit_penalty=0.1)
        context, penalty = encode_for_training(encoder, ids, options, torch.Generator().manual_seed(7), words)
        logits: list = []
        expected = encoder.encode_embeddings(encoder.embed_inserting(ids, positions, rows), None, logits)
        assert torch.allclose(context, expected, atol=1e-5)
        squared = torch.stack([(l.square().sum() / l.numel()) for l in logits]).mean()
        assert float(penalty) == pytest.approx(float(squared), rel=1e-5) and float(penalty) > 0
        positions, _ = extra_rows(encoder, ids, 0.0, torch.Generator().manual_seed(1), words)
        assert positions == [None, None, None]


def test_textual_inversion_without_training_reads_as_its_untrained_control():
    """lab/textual_inversion.py on the committed lab model with zero steps: the token is still its initial
    row, so its samples are the untrained control's exactly (the control the acceptance compares with)."""
    import math

    from lab.checkpoint import LDM_FILE
    from lab.preview import load_compact
    from lab.textual_inversion import invert

    unet, text, vae = load_compact(LDM_FILE, "cpu")
    result = invert(unet, text.with_full_vocabulary(), vae, steps=0, samples=3)
    assert result.target_share == result.untrained_share and result.shape_kept > 0
    assert math.isnan(result.first_loss) and math.isnan(result.final_loss)
