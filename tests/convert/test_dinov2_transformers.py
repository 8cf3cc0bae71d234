"""transformers' DINOv2 (with and without registers) <-> vitlm: models built with transformers' own classes and
random weights, saved with transformers' own `BitImageProcessor`, converted through `load("hf:<folder>")`, and exported
back with `export`."""

import pytest
import torch
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    BitImageProcessor,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    Dinov2WithRegistersModel,
)

from vitlm import VitlmViTConfig, VitlmViTForImageClassification, VitlmViTModel
from vitlm.convert import UnsupportedSourceError, load
from vitlm.convert.to_transformers import export, to_dinov2_model, to_vit_model

TOLERANCE = 1e-4
# facebook/dinov2-small's architecture (with registers: facebook/dinov2-with-registers-small's)
SMALL = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518, patch_size=14)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)


def randomized(model, seed=0):
    """Every weight perturbed, the register and mask tokens transformers initializes to zeros included."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def converted(tmp_path, source):
    source.save_pretrained(tmp_path)
    BitImageProcessor(crop_size={"height": 56, "width": 56}).save_pretrained(tmp_path)
    return load(f"hf:{tmp_path}")


def max_diff(actual, expected):
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


def pixels(size, batch_size=1, seed=0):
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "model_class,config_class", [(Dinov2Model, Dinov2Config), (Dinov2WithRegistersModel, Dinov2WithRegistersConfig)]
)
def test_full_size_parity_at_the_native_and_another_resolution(tmp_path, model_class, config_class):
    """DINOv2-S/14 at 518 pixels and at 224 (transformers interpolates its table, antialiased with registers)."""
    source = randomized(model_class(config_class(**SMALL)))
    model = converted(tmp_path, source).model
    assert type(model) is VitlmViTModel and model.config.layerscale_value == 1.0
    assert model.config.num_register_tokens == getattr(source.config, "num_register_tokens", 0)
    for size in (518, 224):
        x = pixels(size)
        with torch.no_grad():
            expected, actual = source(x), model(x, interpolate_pos_encoding=size != 518)
        assert max_diff(actual.last_hidden_state, expected.last_hidden_state) <= TOLERANCE
        assert max_diff(actual.pooler_output, expected.pooler_output) <= TOLERANCE


@pytest.mark.parametrize(
    "model_class,config_class",
    [
        (Dinov2ForImageClassification, Dinov2Config),
        (Dinov2WithRegistersForImageClassification, Dinov2WithRegistersConfig),
    ],
)
@pytest.mark.parametrize("swiglu", [False, True])
def test_classifier_parity_and_export_back(tmp_path, model_class, config_class, swiglu):
    """The classifier reads [CLS] and the patches' mean (`pooling="cls_mean"`); SwiGLU's gate and value become one
    fc1. Exported back, the state dict is the source's (with a zero mask token) and so are the logits."""
    source = randomized(model_class(config_class(**TINY, num_labels=5, use_swiglu_ffn=swiglu)))
    conversion = converted(tmp_path / "in", source)
    model = conversion.model
    assert type(model) is VitlmViTForImageClassification and model.config.pooling == "cls_mean"
    assert model.config.mlp_type == ("swiglu" if swiglu else "mlp")
    x = pixels(56, batch_size=3)
    with torch.no_grad():
        assert max_diff(model(x).logits, source(x).logits) <= TOLERANCE
        assert max_diff(model(pixels(84), interpolate_pos_encoding=True).logits, source(pixels(84)).logits) <= (
            TOLERANCE
        )
    folder = export(conversion, tmp_path / "out")
    assert type(AutoImageProcessor.from_pretrained(folder)).__name__.startswith("ViTImageProcessor")
    exported = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(exported) is model_class
    state, original = exported.state_dict(), source.state_dict()
    for key, tensor in original.items():
        if not key.endswith("mask_token"):
            assert torch.equal(state[key], tensor), key
    with torch.no_grad():
        assert max_diff(exported(x).logits, source(x).logits) <= TOLERANCE


def test_base_model_exports_to_dinov2_with_registers(tmp_path):
    source = randomized(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**TINY)))
    folder = export(converted(tmp_path / "in", source), tmp_path / "out")
    exported = AutoModel.from_pretrained(folder).eval()
    assert type(exported) is Dinov2WithRegistersModel
    x = pixels(56, batch_size=2)
    with torch.no_grad():
        assert max_diff(exported(x).last_hidden_state, source(x).last_hidden_state) <= TOLERANCE


@pytest.mark.parametrize(
    "options,problem",
    [
        ({"layerscale_value": 1e-5, "pooling": "mean", "use_cls_token": False}, "mean pooling"),
        ({"layerscale_value": 1e-5, "num_register_tokens": 2}, "without antialiasing"),
        ({"layerscale_value": 1e-5, "mlp_type": "swiglu", "intermediate_size": 40}, "a SwiGLU MLP other"),
        ({"layerscale_value": 1e-5, "intermediate_size": 33}, "MLP width 33"),
        ({"layerscale_value": 1e-5, "prefix_position_embeddings": False}, "no position for [CLS]"),
        ({"layerscale_value": 1e-5, "use_mask_token": True}, "a mask token"),
    ],
)
def test_what_dinov2_cannot_represent_is_refused(options, problem):
    config = VitlmViTConfig(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    config.update({"intermediate_size": 128, **options})
    with pytest.raises(UnsupportedSourceError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        to_dinov2_model(VitlmViTModel(config))


@pytest.mark.parametrize(
    "options,problem",
    [
        ({"layerscale_value": 1e-5}, "layer scale"),
        ({"num_register_tokens": 1}, "register tokens"),
        ({"mlp_type": "swiglu"}, "a swiglu MLP"),
        ({"interpolate_antialias": True}, "antialiased position resizing"),
        ({"norm_after_pooling": True, "pooling": "mean"}, "after pooling"),
        ({"use_mask_token": True}, "a mask token"),
        ({"relative_position_bias": "shared"}, "a relative position bias"),
        ({"key_bias": False}, "without a key bias"),
    ],
)
def test_vit_export_refuses_the_self_supervised_options(options, problem):
    """transformers' ViT has none of them: exporting one anyway would compute something else."""
    config = VitlmViTConfig(
        image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, representation_size=8
    )
    config.update(options)
    with pytest.raises(UnsupportedSourceError, match=problem):
        to_vit_model(VitlmViTModel(config))
