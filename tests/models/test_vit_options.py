"""The ViT's options for self-supervised checkpoints (DINO, DINOv2, BEiT), each checked against the computation it
names: layer scale, register tokens, SwiGLU, [CLS] + mean pooling, LayerNorm after pooling, positions without the
[CLS] row, antialiased resizing, the mask token; and the configs they refuse."""

import pytest
import torch

from tests.conftest import tiny_config
from vitlm import VitlmViTConfig, VitlmViTMAEConfig, VitlmViTModel
from vitlm.models import VitlmViTForMaskedImageModeling


def built(**options):
    torch.manual_seed(0)
    return VitlmViTModel(tiny_config("vit", **options)).eval()


def pixels(batch_size=2, size=32):
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_registers_follow_cls_without_a_position_and_are_never_pooled():
    model = built(num_register_tokens=3, pooling="mean")
    assert model.embeddings.position_encoding.position_embeddings.shape[1] == 1 + 16  # no rows for the registers
    with torch.no_grad():
        output = model(pixels(), output_hidden_states=True)
        first = output.hidden_states[0]
    assert first.shape[1] == 1 + 3 + 16
    registers = model.embeddings.register_tokens.expand(2, -1, -1)
    assert torch.equal(first[:, 1:4], registers)  # nothing added to them
    assert torch.allclose(output.pooler_output, output.last_hidden_state[:, 4:].mean(1))


def test_cls_mean_pools_cls_and_the_patches_mean_side_by_side():
    model = built(num_register_tokens=2, pooling="cls_mean")
    with torch.no_grad():
        output = model(pixels())
    tokens = output.last_hidden_state
    assert model.pooled_size == 64
    assert torch.equal(output.pooler_output, torch.cat([tokens[:, 0], tokens[:, 3:].mean(1)], dim=-1))


def test_norm_after_pooling_leaves_the_tokens_unnormalized():
    model = built(pooling="mean", norm_after_pooling=True)
    with torch.no_grad():
        output = model(pixels(), output_hidden_states=True)
    assert torch.equal(output.last_hidden_state, output.hidden_states[-1])
    assert torch.allclose(output.pooler_output, model.layernorm(output.hidden_states[-1][:, 1:].mean(1)))


def test_layer_scale_and_swiglu_compute_what_they_name():
    model = built(layerscale_value=0.25, mlp_type="swiglu", hidden_act="silu", intermediate_size=48)
    block = model.encoder.layers[0]
    assert torch.equal(block.layer_scale1.scale, torch.full((32,), 0.25))  # initialized to the value
    assert block.mlp.fc1.out_features == 96 and block.mlp.fc2.in_features == 48
    x = torch.randn(2, 5, 32)
    gate, value = block.mlp.fc1(x).chunk(2, dim=-1)
    with torch.no_grad():
        assert torch.allclose(block.mlp(x), block.mlp.fc2(torch.nn.functional.silu(gate) * value))
        attention = block.attention(block.layer_norm1(x))[0]
        middle = x + 0.25 * attention
        expected = middle + 0.25 * block.mlp(block.layer_norm2(middle))
        assert torch.allclose(block(x), expected, atol=1e-6)


def test_positions_without_the_cls_row_and_antialiased_resizing():
    model = built(prefix_position_embeddings=False)
    table = model.embeddings.position_encoding.position_embeddings
    assert table.shape[1] == 16
    with torch.no_grad():
        first = model(pixels(), output_hidden_states=True).hidden_states[0]
    assert torch.equal(first[:, 0], model.embeddings.cls_token[:, 0].expand(2, -1))  # no position added
    antialiased = built(interpolate_antialias=True)
    plain = built()
    with torch.no_grad():
        small = pixels(size=16)  # a 2x2 grid: the 4x4 table shrinks, where antialiasing differs
        a = antialiased(small, interpolate_pos_encoding=True).last_hidden_state
        b = plain(small, interpolate_pos_encoding=True).last_hidden_state
    assert not torch.allclose(a, b)


def test_the_mask_token_replaces_the_marked_patches():
    model = built(use_mask_token=True)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 5] = True
    with torch.no_grad():
        first = model(pixels(), bool_masked_pos=mask, output_hidden_states=True).hidden_states[0]
        plain = model(pixels(), output_hidden_states=True).hidden_states[0]
    positions = model.embeddings.position_encoding.position_embeddings
    assert torch.allclose(first[:, 1 + 5], (model.embeddings.mask_token[0, 0] + positions[0, 1 + 5]).expand(2, -1))
    assert torch.equal(first[:, 1 + 6], plain[:, 1 + 6])
    with pytest.raises(ValueError, match=r"`bool_masked_pos` must have shape \(2, 16\)"):
        model(pixels(), bool_masked_pos=mask[:, :4])


def test_mae_keeps_the_registers_with_the_visible_patches():
    config = VitlmViTMAEConfig.from_encoder_config(
        tiny_config("vit", num_register_tokens=2),
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    torch.manual_seed(0)
    model = VitlmViTForMaskedImageModeling(config).eval()
    with torch.no_grad():
        output = model(pixels(), noise=torch.rand(2, 16, generator=torch.Generator().manual_seed(1)))
    assert output.logits.shape == (2, 16, 8 * 8 * 3) and torch.isfinite(output.loss)


@pytest.mark.parametrize(
    "options,field",
    [
        ({"pooling": "cls_mean", "use_cls_token": False}, "use_cls_token"),
        ({"pooling": "cls_mean", "representation_size": 8}, "cls_mean"),
        ({"pooling": "cls_mean", "norm_after_pooling": True}, "cls_mean"),
        ({"layerscale_value": 0.0}, "layerscale_value"),
        ({"layerscale_value": 2.0}, "layerscale_value"),
        ({"num_register_tokens": 2000}, "num_register_tokens"),
        ({"mlp_type": "geglu"}, "mlp_type"),
        ({"use_mask_token": "yes"}, "use_mask_token"),
    ],
)
def test_invalid_options_are_refused_naming_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        VitlmViTConfig(**options)
