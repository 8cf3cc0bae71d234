import json

import pytest
from transformers import AutoConfig

from vitlm import (
    VitlmDualEncoderConfig,
    VitlmHybridConfig,
    VitlmTextConfig,
    VitlmViTConfig,
    VitlmViTMAEConfig,
    VitlmViTModel,
)
from vitlm.models.configuration_vitlm import MASKED_IMAGE_MODELING_FIELDS

SMALL_VIT = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_attention_heads": 4}
# what vitlm wrote into every ViT config before the MAE head had a config of its own
LEGACY_HEAD_FIELDS = {
    "decoder_hidden_size": 512,
    "decoder_num_hidden_layers": 8,
    "decoder_num_attention_heads": 16,
    "decoder_intermediate_size": 2048,
    "mask_ratio": 0.75,
    "norm_pix_loss": False,
}

VIT_BAD_VALUES = [
    ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
    ({"image_size": 30, "patch_size": 8}, "image_size"),
    ({"image_size": [32, 30], "patch_size": 8}, "image_size"),
    ({"position_embedding_type": "alibi"}, "position_embedding_type"),
    ({"pooling": "max"}, "pooling"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"num_hidden_layers": -1}, "num_hidden_layers"),
    ({"patch_size": 0}, "patch_size"),
    ({"num_attention_heads": 2.5}, "num_attention_heads"),
    ({"hidden_act": "swishy"}, "hidden_act"),
    ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
    ({"drop_path_rate": -0.1}, "drop_path_rate"),
    ({"layer_norm_eps": 0}, "layer_norm_eps"),
    ({"use_cls_token": False}, "pooling"),
    ({"use_distillation_token": True, "use_cls_token": False, "pooling": "mean"}, "use_distillation_token"),
    ({"position_embedding_type": "sincos2d", "hidden_size": 34, "num_attention_heads": 2}, "sincos2d"),
    ({"position_embedding_type": "rope2d", "hidden_size": 36, "num_attention_heads": 6}, "rope2d"),
    ({"rope_theta": 0}, "rope_theta"),
]


@pytest.mark.parametrize("overrides,field", VIT_BAD_VALUES)
def test_bad_vit_values_raise_naming_the_field(overrides, field):
    values = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_attention_heads": 4, **overrides}
    with pytest.raises(ValueError, match=field):
        VitlmViTConfig(**values)


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"image_size": 40, "backbone_depths": [1, 1, 1]}, "image_size"),  # stride 16 does not divide 40
        ({"backbone_depths": []}, "backbone_depths"),
        ({"backbone_depths": [2, 0]}, "backbone_depths"),
        ({"backbone_num_groups": 7}, "backbone_num_groups"),
        ({"backbone_std_conv_eps": 0.0}, "backbone_std_conv_eps"),
    ],
)
def test_bad_hybrid_values_raise_naming_the_field(overrides, field):
    values = {"image_size": 64, "hidden_size": 32, "num_attention_heads": 4, "backbone_depths": [1, 1], **overrides}
    with pytest.raises(ValueError, match=field):
        VitlmHybridConfig(**values)


def test_hybrid_stride_counts_backbone_and_patch():
    config = VitlmHybridConfig(image_size=384, backbone_depths=[3, 4, 9], patch_size=1)
    assert config.backbone_stride == 16 and config.grid_size == (24, 24)
    config = VitlmHybridConfig(image_size=224, backbone_depths=[2, 2, 2, 2], patch_size=1)
    assert config.backbone_stride == 32 and config.grid_size == (7, 7)
    assert config.backbone_widths == [256, 512, 1024, 2048]


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"eos_token_id": 100}, "eos_token_id"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"max_position_embeddings": -5}, "max_position_embeddings"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
    ],
)
def test_bad_text_values_raise_naming_the_field(overrides, field):
    values = {"vocab_size": 100, "bos_token_id": 98, "eos_token_id": 99, "hidden_size": 32, "num_attention_heads": 4}
    with pytest.raises(ValueError, match=field):
        VitlmTextConfig(**{**values, **overrides})


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"loss_type": "triplet"}, "loss_type"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"vision_config": {"model_type": "resnet"}}, "vision_config.model_type"),
        ({"vision_config": "vit-base"}, "vision_config"),
        ({"text_config": 3}, "text_config"),
        ({"logit_scale_init_value": float("nan")}, "logit_scale_init_value"),
        ({"vision_config": {"hidden_size": 30, "num_attention_heads": 4}}, "hidden_size"),
    ],
)
def test_bad_dual_encoder_values_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        VitlmDualEncoderConfig(**overrides)


def test_dual_encoder_config_round_trips_a_hybrid_vision_tower(tmp_path):
    vision = VitlmHybridConfig(image_size=64, hidden_size=32, num_attention_heads=4, backbone_depths=[1, 1])
    config = VitlmDualEncoderConfig(vision_config=vision, projection_dim=16, loss_type="sigmoid")
    config.save_pretrained(tmp_path)
    loaded = VitlmDualEncoderConfig.from_pretrained(tmp_path)
    assert type(loaded.vision_config) is VitlmHybridConfig
    assert loaded.vision_config.backbone_depths == [1, 1]
    assert loaded.vision_config.grid_size == (8, 8)
    assert loaded.loss_type == "sigmoid" and loaded.projection_dim == 16
    assert loaded.to_dict()["vision_config"] == config.to_dict()["vision_config"]


def test_in_place_mutation_is_caught_when_the_config_is_saved_or_a_model_built(tmp_path):
    # a list changed in place escapes the check on assignment; saving and building a model catch it
    config = VitlmViTConfig(image_size=[32, 32], patch_size=8, hidden_size=32, num_attention_heads=4)
    config.image_size[0] = 30
    with pytest.raises(ValueError, match="image_size"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()
    with pytest.raises(ValueError, match="image_size"):
        VitlmViTModel(config)
    config.image_size[0] = float("nan")
    with pytest.raises(ValueError, match="image_size"):
        VitlmViTModel(config)


def test_nested_tower_errors_name_the_tower_and_the_field():
    with pytest.raises(ValueError, match=r"`text_config`: `layer_norm_eps` must be a number"):
        VitlmDualEncoderConfig(text_config={"layer_norm_eps": float("inf")})
    config = VitlmDualEncoderConfig()
    with pytest.raises(ValueError, match="use_cls_token"):
        config.vision_config.use_cls_token = "false"
    assert config.vision_config.use_cls_token is True


def test_plain_vit_hybrid_and_dual_encoder_configs_have_no_head_fields():
    configs = [VitlmViTConfig(), VitlmHybridConfig(), VitlmDualEncoderConfig()]
    for config in [*configs, configs[2].vision_config]:
        assert not set(MASKED_IMAGE_MODELING_FIELDS) & set(config.to_dict()), type(config).__name__
        assert not set(MASKED_IMAGE_MODELING_FIELDS) & set(config.to_dict().get("vision_config", {}))


@pytest.mark.parametrize("config_class", [VitlmViTConfig, VitlmHybridConfig, VitlmTextConfig, VitlmDualEncoderConfig])
def test_configs_without_the_head_refuse_its_fields_pointing_at_the_mae_config(config_class):
    with pytest.raises(ValueError, match="decoder_hidden_size.*VitlmViTMAEConfig"):
        config_class(decoder_hidden_size=64)
    config = config_class()
    with pytest.raises(ValueError, match="mask_ratio.*VitlmViTMAEConfig"):
        config.update({"mask_ratio": 0.5})
    with pytest.raises(ValueError, match="norm_pix_loss.*VitlmViTMAEConfig"):
        config.norm_pix_loss = True
    with pytest.raises(ValueError, match="decoder_num_hidden_layers"):
        config.update_from_string("decoder_num_hidden_layers=2")
    assert not hasattr(config, "mask_ratio") and not hasattr(config, "norm_pix_loss")
    with pytest.raises(ValueError, match="decoder_hidden_size.*VitlmViTMAEConfig"):  # one field is no legacy config
        config_class.from_dict({"decoder_hidden_size": 64})


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"decoder_hidden_size": 30, "decoder_num_attention_heads": 3}, "decoder_hidden_size"),  # not divisible by 4
        ({"decoder_hidden_size": 32, "decoder_num_attention_heads": 3}, "decoder_hidden_size"),
        ({"decoder_num_hidden_layers": 0}, "decoder_num_hidden_layers"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"mask_ratio": 0.99, "use_cls_token": False, "pooling": "mean"}, "mask_ratio"),
        ({"norm_pix_loss": "false"}, "norm_pix_loss"),
        ({"hidden_size": 30}, "hidden_size"),  # the encoder's rules hold too
    ],
)
def test_bad_mae_values_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        VitlmViTMAEConfig(**{**SMALL_VIT, "decoder_hidden_size": 32, "decoder_num_attention_heads": 4, **overrides})


def test_the_decoder_config_is_derived_from_the_encoders():
    config = VitlmViTMAEConfig(
        **SMALL_VIT,
        qkv_bias=False,
        hidden_act="quick_gelu",
        drop_path_rate=0.1,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=3,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=24,
    )
    decoder = config.decoder_config()
    assert type(decoder) is VitlmViTConfig
    sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    assert [getattr(decoder, name) for name in sizes] == [16, 3, 2, 24]
    assert (decoder.qkv_bias, decoder.hidden_act, decoder.drop_path_rate) == (False, "quick_gelu", 0.0)
    mae = VitlmViTMAEConfig.from_encoder_config(VitlmViTConfig(**SMALL_VIT), mask_ratio=0.5)
    assert (mae.mask_ratio, mae.hidden_size, mae.decoder_hidden_size) == (0.5, 32, 512)
    with pytest.raises(ValueError, match="plain ViT encoder"):
        VitlmViTMAEConfig.from_encoder_config(VitlmHybridConfig())


def saved_config(tmp_path, values) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(values))
    return str(tmp_path)


def test_configs_saved_before_the_mae_config_load_without_the_head_fields(tmp_path):
    """Older vitlm wrote the head's fields (at their defaults) into every ViT config: they load as they did."""
    vit = saved_config(tmp_path / "vit", {"model_type": "vitlm_vit", **SMALL_VIT, **LEGACY_HEAD_FIELDS})
    hybrid = saved_config(tmp_path / "hybrid", {"model_type": "vitlm_hybrid", **LEGACY_HEAD_FIELDS})
    dual = {"vision_config": {"model_type": "vitlm_vit", **SMALL_VIT, **LEGACY_HEAD_FIELDS}}
    dual = saved_config(tmp_path / "dual", {"model_type": "vitlm_dual_encoder", **dual})
    for folder, config_class in ((vit, VitlmViTConfig), (hybrid, VitlmHybridConfig), (dual, VitlmDualEncoderConfig)):
        for config in (AutoConfig.from_pretrained(folder), config_class.from_pretrained(folder)):
            assert type(config) is config_class
            vision = getattr(config, "vision_config", config)
            assert not any(hasattr(vision, name) for name in MASKED_IMAGE_MODELING_FIELDS)
    assert AutoConfig.from_pretrained(vit).hidden_size == 32


def test_a_masked_image_model_saved_before_the_mae_config_loads_as_one(tmp_path):
    values = {"model_type": "vitlm_vit", "architectures": ["VitlmViTForMaskedImageModeling"], **SMALL_VIT}
    folder = saved_config(tmp_path, {**values, **LEGACY_HEAD_FIELDS, "decoder_hidden_size": 64, "mask_ratio": 0.5})
    for config in (AutoConfig.from_pretrained(folder), VitlmViTMAEConfig.from_pretrained(folder)):
        assert type(config) is VitlmViTMAEConfig and config.model_type == "vitlm_vit_mae"
        assert (config.decoder_hidden_size, config.mask_ratio, config.hidden_size) == (64, 0.5, 32)
    config = VitlmViTConfig.from_pretrained(folder)  # its encoder's config, as for an MAE config
    assert type(config) is VitlmViTConfig and config.hidden_size == 32
    assert not any(hasattr(config, name) for name in MASKED_IMAGE_MODELING_FIELDS)


def test_an_mae_config_loads_as_its_encoders_config(tmp_path):
    """An MAE checkpoint's encoder serves other heads (a classifier fine-tuned from it): its plain config drops the
    head's fields."""
    VitlmViTMAEConfig(**SMALL_VIT, decoder_hidden_size=64, mask_ratio=0.5).save_pretrained(tmp_path)
    config = VitlmViTConfig.from_pretrained(tmp_path)
    assert type(config) is VitlmViTConfig and config.hidden_size == 32
    assert not any(hasattr(config, name) for name in MASKED_IMAGE_MODELING_FIELDS)
    assert type(AutoConfig.from_pretrained(tmp_path)) is VitlmViTMAEConfig
