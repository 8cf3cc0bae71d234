"""Swin converters: timm's `swin_*` and transformers' `SwinModel` / `SwinForImageClassification` -> vitlm, and
`vitlm export` back to transformers; full-size parity in float32 with random weights, refusals, the CLI."""

import re

import pytest
import timm
import torch
from transformers import AutoImageProcessor, SwinConfig, SwinForImageClassification, SwinModel

import vitlm  # noqa: F401  (registers the Auto classes)
from tests.conftest import tiny_config
from vitlm import VitlmSwinForImageClassification, VitlmSwinModel
from vitlm.cli import main
from vitlm.convert import UnsupportedSourceError, load
from vitlm.convert.from_timm import convert_model, vitlm_config
from vitlm.convert.from_transformers import convert_swin
from vitlm.convert.to_transformers import to_swin_model
from vitlm.presets import preset_path

TOLERANCE = 1e-4


def perturbed(model):
    """Random weights, each moved off its initial value, so that a swapped or dropped norm or bias shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model.eval()


def pixels(batch_size, size, seed=0):
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_same_predictions(actual, expected):
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= TOLERANCE
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))
    assert len(set(expected.argmax(-1).tolist())) > 1  # the logits tell the inputs apart: not a vacuous check


@pytest.fixture(scope="module")
def timm_swin_tiny():
    model = perturbed(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False))
    return model, convert_model(model, vitlm_config(model, "timm"), "timm").eval()


@torch.no_grad()
def test_timm_swin_tiny_parity_at_224_and_448(timm_swin_tiny):
    """16 inputs at the native resolution; at 448 (every stage's map a multiple of the window, where timm's
    shift-then-pad and the original's pad-then-shift agree), timm rebuilt for the size with the same weights."""
    timm_model, model = timm_swin_tiny
    assert model.config.window_size == 7 and model.config.depths == [2, 2, 6, 2]
    inputs = pixels(16, 224)
    assert_same_predictions(model(inputs).logits, timm_model(inputs))
    timm_model.set_input_size(img_size=(448, 448), window_size=7)
    try:
        inputs = pixels(16, 448, seed=1)
        assert_same_predictions(model(inputs).logits, timm_model(inputs))
    finally:
        timm_model.set_input_size(img_size=(224, 224), window_size=7)


@torch.no_grad()
def test_timm_swin_base_384_parity():
    timm_model = perturbed(timm.create_model("swin_base_patch4_window12_384", pretrained=False))
    model = convert_model(timm_model, vitlm_config(timm_model, "timm"), "timm").eval()
    assert model.config.window_size == 12 and model.config.image_size == 384
    inputs = pixels(16, 384)
    # in chunks: one pass of 16 images at 384 holds gigabytes of activations
    logits = [(model(chunk).logits, timm_model(chunk)) for chunk in inputs.split(4)]
    assert_same_predictions(torch.cat([ours for ours, _ in logits]), torch.cat([theirs for _, theirs in logits]))


@torch.no_grad()
def test_timm_swin_base_model_parity():
    """Without a classifier: the pooled features are timm's pre-logits."""
    timm_model = perturbed(
        timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, img_size=56, depths=(2, 2))
    )
    model = convert_model(timm_model, vitlm_config(timm_model, "timm"), "timm").eval()
    assert type(model) is VitlmSwinModel
    inputs = pixels(2, 56)
    torch.testing.assert_close(model(inputs).pooler_output, timm_model(inputs), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(
    "kwargs,feature",
    [
        (dict(always_partition=True), "always_partition=True"),
        (dict(head_dim=16), "head dimension"),
        (dict(window_size=(7, 7, 14, 7)), "window sizes that differ between blocks"),
        (dict(img_size=112), "window sizes that differ between blocks"),  # the last stage's window clamped to 4
        (dict(img_size=(224, 448)), "a non-square feature map"),
        (dict(global_pool="max"), "global_pool='max'"),
    ],
)
def test_timm_swin_options_vitlm_cannot_represent_are_refused(kwargs, feature):
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, device="meta", **kwargs)
    with pytest.raises(UnsupportedSourceError, match=re.escape(feature)):
        vitlm_config(model, "test")


def test_timm_swin_s3_is_refused_before_loading_weights():
    with pytest.raises(UnsupportedSourceError, match="window sizes that differ"):
        load("timm:swin_s3_tiny_224")


@pytest.fixture(scope="module")
def transformers_swin_tiny():
    config = SwinConfig(num_labels=1000, drop_path_rate=0.0)  # Swin-T, window 7, 224
    return perturbed(SwinForImageClassification(config))


@torch.no_grad()
def test_transformers_swin_to_vitlm_and_back(transformers_swin_tiny):
    """Swin-T at full size: transformers -> vitlm -> transformers. The round trip gives the original state dict;
    logits agree at 256 (stage maps of 64/32/16/8 tokens: the last one is padded to two windows and shifted) and at
    the native 224. 256 runs first: transformers clamps a window for good once it has seen a small map."""
    reference = transformers_swin_tiny
    model = convert_swin(reference)
    assert type(model) is VitlmSwinForImageClassification
    back = to_swin_model(model).eval()
    assert type(back) is SwinForImageClassification
    original, returned = reference.state_dict(), back.state_dict()
    assert original.keys() == returned.keys()
    assert all(torch.equal(original[key], returned[key]) for key in original)
    for size in (256, 224):
        inputs = pixels(16, size, seed=size)
        expected = reference(inputs).logits
        assert_same_predictions(model(inputs).logits, expected)
        assert_same_predictions(back(inputs).logits, expected)


@torch.no_grad()
def test_transformers_swin_base_model_outputs_match():
    reference = perturbed(SwinModel(SwinConfig(image_size=64, embed_dim=32, depths=[2, 2], num_heads=[2, 4])))
    model = convert_swin(reference)
    assert type(model) is VitlmSwinModel
    inputs = pixels(2, 64)
    expected, actual = reference(inputs), model(inputs)
    for name in ("last_hidden_state", "pooler_output"):
        torch.testing.assert_close(getattr(actual, name), getattr(expected, name), rtol=0, atol=TOLERANCE)
    assert type(to_swin_model(model)) is SwinModel


def test_transformers_swin_with_absolute_positions_is_refused():
    with pytest.raises(UnsupportedSourceError, match="use_absolute_embeddings"):
        convert_swin(
            SwinModel(
                SwinConfig(
                    image_size=32, embed_dim=8, depths=[1], num_heads=[1], window_size=4, use_absolute_embeddings=True
                )
            )
        )


def test_export_refuses_what_transformers_swin_cannot_hold(tmp_path):
    config = tiny_config("swin", window_size=[4, 2])
    with pytest.raises(UnsupportedSourceError, match=re.escape("non-square windows [4, 2]")):
        to_swin_model(VitlmSwinForImageClassification(config))


def test_cli_exports_a_saved_swin_to_transformers(tmp_path):
    torch.manual_seed(0)
    model = VitlmSwinForImageClassification(tiny_config("swin")).eval()
    model.save_pretrained(tmp_path / "vitlm")
    AutoImageProcessor.from_pretrained(preset_path("swin-tiny-test")).save_pretrained(tmp_path / "vitlm")
    assert main(["export", str(tmp_path / "vitlm"), str(tmp_path / "hf")]) == 0
    exported = SwinForImageClassification.from_pretrained(tmp_path / "hf").eval()
    inputs = pixels(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported(inputs).logits, model(inputs).logits, rtol=0, atol=1e-5)


def test_hf_source_converts_a_saved_transformers_swin_folder(tmp_path):
    from transformers import ViTImageProcessor

    reference = perturbed(
        SwinForImageClassification(
            SwinConfig(image_size=32, embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=4)
        )
    )
    reference.save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    converted = load(f"hf:{tmp_path}")
    assert type(converted.model) is VitlmSwinForImageClassification
    assert converted.model.config.id2label == reference.config.id2label
    inputs = pixels(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted.model(inputs).logits, reference(inputs).logits, rtol=0, atol=TOLERANCE)
