import pytest

from vitlm import VitlmDualEncoderConfig, VitlmHybridConfig, VitlmTextConfig, VitlmViTConfig, VitlmViTModel

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
