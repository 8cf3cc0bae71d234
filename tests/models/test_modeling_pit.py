"""PiT: its distillation head, resolutions and input checks, the config's rules, its stages' config views, Trainer
fine-tuning on the tiny preset, and a dual encoder with a PiT image tower."""

import copy

import pytest
import torch
from datasets import Dataset
from transformers import AutoConfig, Trainer, TrainingArguments

from tests.conftest import pixel_batch, tiny_clip_config, tiny_config
from vitlm import (
    VitlmDualEncoderForImageClassification,
    VitlmDualEncoderModel,
    VitlmPiTConfig,
    VitlmPiTForImageClassification,
    VitlmPiTModel,
)
from vitlm.clip_bpe import clip_tokenizer


def tiny_pit(model_class=VitlmPiTForImageClassification, seed=0, **overrides):
    torch.manual_seed(seed)
    return model_class(tiny_config("pit", **overrides)).eval()


def test_distilled_logits_and_loss_average_both_heads():
    model = tiny_pit(use_distillation_token=True, num_labels=3)
    pixel_values, labels = pixel_batch(model.config, 2), torch.tensor([0, 2])
    output = model(pixel_values, labels=labels, output_hidden_states=True)
    tokens = model.vit.layernorm(output.hidden_states[-1])
    torch.testing.assert_close(output.cls_logits, model.classifier(tokens[:, 0]))
    torch.testing.assert_close(output.distillation_logits, model.distillation_classifier(tokens[:, 1]))
    torch.testing.assert_close(output.logits, (output.cls_logits + output.distillation_logits) / 2)
    cross_entropy = torch.nn.functional.cross_entropy
    expected = (cross_entropy(output.cls_logits, labels) + cross_entropy(output.distillation_logits, labels)) / 2
    torch.testing.assert_close(output.loss, expected)


def test_the_pooled_output_is_the_normed_class_token_of_the_last_stage():
    model = tiny_pit(VitlmPiTModel)
    with torch.no_grad():
        output = model(pixel_batch(model.config, 2))
    assert model.pooled_size == model.config.hidden_size == 32
    # 32 pixels, 8-pixel patches every 4: a 7x7 grid, pooled to 4x4 for the second stage
    assert output.last_hidden_state.shape == (2, 1 + 16, 32)
    assert torch.equal(output.pooler_output, output.last_hidden_state[:, 0])


def test_other_resolutions_need_interpolation_and_resize_the_table():
    model = tiny_pit(VitlmPiTModel)
    pixel_values = pixel_batch(model.config, 2, height=48, width=40)
    with pytest.raises(ValueError, match=r"patch grid 11x9 differs from the model's 7x7.*interpolate_pos_encoding"):
        model(pixel_values)
    with torch.no_grad():
        output = model(pixel_values, interpolate_pos_encoding=True, output_hidden_states=True)
    assert [h.shape[1] for h in output.hidden_states] == [1 + 11 * 9, 1 + 11 * 9, 1 + 6 * 5]
    # the native resolution is untouched by the flag
    native = pixel_batch(model.config, 2)
    with torch.no_grad():
        assert torch.equal(model(native, interpolate_pos_encoding=True).pooler_output, model(native).pooler_output)


@pytest.mark.parametrize(
    "pixel_values,message",
    [
        (torch.randn(2, 3, 34, 32), "image size 34x32 is not divisible by the model's stride of 4 pixels"),
        (torch.randn(2, 3, 4, 32), "image size 4x32 is smaller than the model's 8-pixel patches"),
        (torch.randn(2, 1, 32, 32), "`pixel_values` has 1 channels, the model expects 3"),
        (torch.randn(3, 32, 32), r"must be a \(batch, channels, height, width\) tensor"),
    ],
)
def test_bad_pixel_values_are_refused_naming_the_problem(pixel_values, message):
    with pytest.raises(ValueError, match=message):
        tiny_pit(VitlmPiTModel)(pixel_values, interpolate_pos_encoding=True)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"depths": [1, 1, 1]}, "one entry per stage"),
        ({"hidden_sizes": [16, 24]}, "multiple of the previous one"),
        ({"num_heads": [3, 4]}, r"`hidden_sizes` \(16\) must be divisible by `num_heads` \(3\) at stage 0"),
        ({"stride": 3}, r"`patch_size` \(8\) must be a multiple of `stride` \(3\)"),
        ({"image_size": 30}, "divisible by `stride`"),
        ({"mlp_ratio": 0.01}, "`mlp_ratio`"),
        ({"hidden_size": 64}, "`hidden_size` of a vitlm_pit config follows from its architecture"),
        ({"use_cls_token": False}, "`use_cls_token` of a vitlm_pit config"),
    ],
)
def test_config_refuses_what_the_model_cannot_build(changes, message):
    config = tiny_config("pit")
    before = config.to_dict()
    with pytest.raises(ValueError, match=message):
        config.update(changes)
    assert config.to_dict() == before


def test_config_derives_the_tower_fields_and_round_trips(tmp_path):
    config = VitlmPiTConfig(
        depths=[3, 6, 4], hidden_sizes=[256, 512, 1024], num_heads=[4, 8, 16], patch_size=14, stride=7
    )
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (1024, 16, 13)
    assert config.intermediate_sizes == [1024, 2048, 4096] and config.grid_size == (31, 31)
    assert config.stem_stride == 7 and config.num_stages == 3 and config.num_prefix_tokens == 1
    config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).to_diff_dict() == config.to_diff_dict()
    assert "hidden_size" not in config.to_dict()  # derived, never saved


def test_switching_the_attention_implementation_reaches_every_stage():
    model = tiny_pit(VitlmPiTModel)
    model.set_attn_implementation("eager")
    stage_configs = [layer.attention.config for stage in model.stages for layer in stage.layers]
    assert {config._attn_implementation for config in stage_configs} == {"eager"}
    assert [config.hidden_size for config in stage_configs] == [16, 32]
    # a copy of the model (and of its stage config views) computes the same
    copied = copy.deepcopy(model)
    pixel_values = pixel_batch(model.config, 2)
    with torch.no_grad():
        assert torch.equal(copied(pixel_values).pooler_output, model(pixel_values).pooler_output)


def test_trainer_fine_tunes_the_tiny_preset(tmp_path):
    model = tiny_pit(num_labels=4)
    pixel_values = pixel_batch(model.config, batch_size=8)
    labels = [0, 1, 2, 3] * 2
    data = Dataset.from_dict({"pixel_values": pixel_values.numpy(), "labels": labels}).with_format("torch")
    with torch.no_grad():
        before = model(pixel_values, labels=torch.tensor(labels)).loss
    args = TrainingArguments(
        tmp_path,
        per_device_train_batch_size=8,
        max_steps=15,
        learning_rate=3e-3,
        report_to=[],
        use_cpu=True,
        seed=0,
        save_strategy="no",
    )
    Trainer(model=model, args=args, train_dataset=data).train()
    model.eval()
    with torch.no_grad():
        after = model(pixel_values, labels=torch.tensor(labels)).loss
    assert after < 0.5 * before, (before, after)


def test_dual_encoder_with_a_pit_tower_trains_and_classifies_zero_shot():
    vision = tiny_config("pit").to_dict()
    config = tiny_clip_config(vision_config=vision)
    torch.manual_seed(0)
    model = VitlmDualEncoderModel(config)
    assert type(model.vision_model) is VitlmPiTModel and model.visual_projection.in_features == 32

    tokenizer = clip_tokenizer()
    classes = ["red circle", "blue square"]
    texts = tokenizer([f"a photo of a {name}." for name in classes] * 2, padding=True, return_tensors="pt")
    pixel_values = pixel_batch(config, batch_size=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = model(pixel_values=pixel_values, **texts, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses

    model.eval()
    classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(
        model, tokenizer, classes, ["a photo of a {}."]
    )
    with torch.no_grad():
        logits = classifier(pixel_values).logits
        expected = model(
            pixel_values=pixel_values,
            **tokenizer([f"a photo of a {name}." for name in classes], padding=True, return_tensors="pt"),
        ).logits_per_image
    assert logits.shape == (4, 2)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
