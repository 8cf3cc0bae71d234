"""transformers' BEiT -> vitlm: models built with transformers' own classes and random weights, saved with
transformers' `BeitImageProcessor`, converted through `load("hf:<folder>")`; at the native resolution and at
others (`interpolate_pos_encoding=True` on both sides: the relative position bias resized bilinearly, as
transformers does)."""

import pytest
import torch
from transformers import BeitConfig, BeitForImageClassification, BeitImageProcessor, BeitModel

from vitlm import VitlmViTForImageClassification, VitlmViTModel
from vitlm.convert import UnsupportedSourceError, load
from vitlm.convert.from_transformers import convert_beit

TOLERANCE = 1e-4
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32)


def randomized(model, seed=0):
    """Every weight perturbed (relative position tables, layer scales and mask token included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def max_diff(actual, expected):
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


def pixels(size, batch_size=2, seed=0):
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_beit_base_classifier_at_full_size_and_another_resolution(tmp_path):
    """BEiT-B/16 (per-layer relative position bias, layer scale, mean pooling), logits at 224 and 288 pixels."""
    config = BeitConfig(
        use_relative_position_bias=True, use_mean_pooling=True, layer_scale_init_value=0.1, num_labels=5
    )
    source = randomized(BeitForImageClassification(config))
    source.save_pretrained(tmp_path)
    BeitImageProcessor(size={"height": 224, "width": 224}, do_center_crop=False).save_pretrained(tmp_path)
    model = load(f"hf:{tmp_path}").model
    assert type(model) is VitlmViTForImageClassification
    assert (model.config.relative_position_bias, model.config.key_bias) == ("per_layer", False)
    for size in (224, 288):
        x = pixels(size)
        interpolate = size != 224
        with torch.no_grad():
            expected = source(x, interpolate_pos_encoding=interpolate).logits
            actual = model(x, interpolate_pos_encoding=interpolate).logits
        assert max_diff(actual, expected) <= TOLERANCE


@pytest.mark.parametrize(
    "options",
    [
        {"use_shared_relative_position_bias": True, "use_mean_pooling": False},
        {"use_absolute_position_embeddings": True, "use_relative_position_bias": False},
        {"use_relative_position_bias": True, "layer_scale_init_value": 0.0},
    ],
)
def test_beit_model_variants(options):
    config = BeitConfig(**TINY, patch_size=8, use_mask_token=True, **options)
    source = randomized(BeitModel(config))
    model = convert_beit(source)
    assert type(model) is VitlmViTModel
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 3:9] = True
    for size in (32, 48):
        x, interpolate = pixels(size), size != 32
        with torch.no_grad():
            expected = source(x, interpolate_pos_encoding=interpolate)
            actual = model(x, interpolate_pos_encoding=interpolate)
        assert max_diff(actual.last_hidden_state, expected.last_hidden_state) <= TOLERANCE
        assert max_diff(actual.pooler_output, expected.pooler_output) <= TOLERANCE
    with torch.no_grad():  # the mask token is carried over
        expected = source(pixels(32), bool_masked_pos=mask).last_hidden_state
        assert max_diff(model(pixels(32), bool_masked_pos=mask).last_hidden_state, expected) <= TOLERANCE


def test_a_beit_without_its_pooler_is_refused():
    source = BeitModel(BeitConfig(**TINY, patch_size=8), add_pooling_layer=False)
    with pytest.raises(UnsupportedSourceError, match="without its pooler"):
        convert_beit(source)


@pytest.mark.parametrize("classifier", [False, True])
def test_export_back_to_transformers_beit(tmp_path, classifier):
    """vitlm -> transformers' BEiT gives the source's state dict and outputs back."""
    from transformers import AutoModel, AutoModelForImageClassification

    from vitlm.convert.to_transformers import export

    source_class = BeitForImageClassification if classifier else BeitModel
    config = BeitConfig(**TINY, patch_size=8, use_relative_position_bias=True, use_mask_token=True, num_labels=3)
    source = randomized(source_class(config))
    source.save_pretrained(tmp_path / "in")
    BeitImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False).save_pretrained(tmp_path / "in")
    folder = export(load(f"hf:{tmp_path / 'in'}"), tmp_path / "out")
    exported = (AutoModelForImageClassification if classifier else AutoModel).from_pretrained(folder).eval()
    assert type(exported) is source_class
    state = exported.state_dict()
    for key, tensor in source.state_dict().items():
        assert torch.equal(state[key], tensor), key
    x = pixels(32)
    with torch.no_grad():
        expected, actual = source(x), exported(x)
    name = "logits" if classifier else "pooler_output"
    assert max_diff(getattr(actual, name), getattr(expected, name)) <= TOLERANCE
