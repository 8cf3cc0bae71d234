"""The one weight-mapping mechanism: rule tables, their reverse, and the report that makes a wrong mapping fail."""

import re

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

from tests.convert.test_from_transformers import SMALL, randomized
from vitlm import VitlmViTModel
from vitlm.convert import UnsupportedSourceError, uninitialized
from vitlm.convert.from_transformers import CLIP, VIT, vit_config
from vitlm.convert.weights import SCALAR, TRANSPOSE, Rule, load_weights, map_weights, nest, reverse


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return randomized(ViTModel(ViTConfig(image_size=32, patch_size=8, **SMALL)))


def load_vit(vit, state_dict):
    config = vit_config(vit.config, pooler=True, source="test")
    return load_weights(uninitialized(VitlmViTModel, config), state_dict, VIT, "test")


def test_the_table_maps_every_weight(vit):
    model = load_vit(vit, vit.state_dict())
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, actual = vit(pixels).pooler_output, model(pixel_values=pixels).pooler_output
    assert (expected - actual).abs().max() < 1e-5


@pytest.mark.parametrize(
    "key, reported",
    [
        ("head.weight", "no rule maps: ['head.weight']"),
        # a rule covers it, but vitlm's layer holds no such weight
        ("layers.1.mlp.gate.weight", "no place in the target: ['encoder.layers.1.mlp.gate.weight (from layers.1"),
    ],
)
def test_an_extra_source_weight_is_refused_by_name(vit, key, reported):
    state_dict = {**vit.state_dict(), key: torch.zeros(4)}
    with pytest.raises(UnsupportedSourceError, match="^test: .*" + re.escape(reported)):
        load_vit(vit, state_dict)


@pytest.mark.parametrize(
    "key, reported",
    [
        ("layers.0.mlp.fc1.weight", "target weights missing: ['encoder.layers.0.mlp.fc1.weight (from layers.0.mlp"),
        ("embeddings.cls_token", "target weights missing: ['embeddings.cls_token (from embeddings.cls_token)']"),
        # one of the three tensors that merge into vitlm's fused qkv
        ("layers.1.attention.k_proj.bias", "missing from a merge: ['layers.1.attention.k_proj.bias']"),
    ],
)
def test_a_missing_source_weight_is_refused_by_name(vit, key, reported):
    state_dict = {name: tensor for name, tensor in vit.state_dict().items() if name != key}
    with pytest.raises(UnsupportedSourceError, match=re.escape(reported)):
        load_vit(vit, state_dict)


def test_two_weights_landing_on_one_place_are_refused():
    rules = [Rule("a.*.", "x.*."), Rule("b.*.", "x.*.")]
    with pytest.raises(UnsupportedSourceError, match=r"mapped twice: \['a.0.w and b.0.w'\]"):
        map_weights({"a.0.w": torch.zeros(1), "b.0.w": torch.ones(1)}, rules, "test")


def test_the_reversed_table_gives_back_the_source_state_dict():
    """Merges become splits and the leading dimensions of CLIP's class token and position table come off again."""
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={**SMALL, "vocab_size": 99, "max_position_embeddings": 8},
        vision_config={**SMALL, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    state_dict = randomized(CLIPModel(config)).state_dict()
    mapped = map_weights(state_dict, CLIP, "test")
    assert mapped["vision_model.embeddings.cls_token"].shape == (1, 1, 32)
    assert mapped["text_model.encoder.layers.1.attention.qkv.weight"].shape == (96, 32)
    back = map_weights(mapped, reverse(CLIP), "test")
    assert back.keys() == state_dict.keys()
    assert all(torch.equal(back[key], tensor) for key, tensor in state_dict.items())


def test_rules_carry_numbers_and_the_rest_of_the_key():
    rules = nest([Rule("stages.*.blocks.*.", "stages.*.*."), Rule("proj", "projection.weight", TRANSPOSE)], "bb.", "")
    mapped = map_weights({"bb.stages.1.blocks.12.conv.weight": torch.zeros(1), "bb.proj": torch.eye(2, 3)}, rules, "t")
    assert mapped.keys() == {"stages.1.12.conv.weight", "projection.weight"}
    assert mapped["projection.weight"].shape == (3, 2)


def test_malformed_rules_and_irreversible_transforms_are_refused():
    with pytest.raises(ValueError, match="same number of `\\*`"):
        Rule("blocks.*.attn.", "attention.")
    with pytest.raises(ValueError, match="key or prefix"):
        Rule("norm.", "layernorm.weight")
    with pytest.raises(ValueError, match="no inverse"):
        reverse([Rule("logit_scale", "logit_scale", SCALAR)])
    with pytest.raises(ValueError, match="nothing to map back"):
        reverse([Rule("pos_embed", None)])
