import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import pixel_batch, tiny_config
from vitlm import (
    VitlmDualEncoderModel,
    VitlmHybridForImageClassification,
    VitlmImageProcessor,
    VitlmViTForImageClassification,
    VitlmViTModel,
)
from vitlm.attention_maps import attention_heatmaps, attention_map

MODELS = [
    ("vit", VitlmViTForImageClassification, {}),
    ("vit", VitlmViTModel, {"use_distillation_token": True}),
    ("vit", VitlmViTModel, {"use_cls_token": False, "pooling": "mean"}),
    ("hybrid", VitlmHybridForImageClassification, {}),
    ("dual", VitlmDualEncoderModel, {}),
]


def build(family, model_class, overrides):
    torch.manual_seed(0)
    return model_class(tiny_config(family, **overrides)).eval()


@pytest.mark.parametrize("method", ["rollout", "cls"])
@pytest.mark.parametrize("family,model_class,overrides", MODELS)
def test_maps_have_the_image_size_and_a_maximum_of_one(family, model_class, overrides, method):
    model = build(family, model_class, overrides)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    maps = attention_map(model, image, VitlmImageProcessor(size=32, crop_size=32), method=method)
    assert maps.heatmap.shape == (37, 53) and maps.heatmap.dtype == np.float32
    assert maps.heatmap.min() >= 0 and maps.heatmap.max() == pytest.approx(1.0)
    assert maps.overlay.size == image.size and maps.overlay.mode == "RGB"


def upsampled(patch_scores):
    """(batch, 4, 4) patch scores -> (batch, 32, 32), scaled to a maximum of 1, as the maps are."""
    pixels = torch.nn.functional.interpolate(
        patch_scores[:, None], size=(32, 32), mode="bilinear", align_corners=False
    )
    return pixels[:, 0] / pixels[:, 0].amax(dim=(1, 2), keepdim=True)


def test_cls_map_is_the_last_layers_class_token_attention():
    model = build("vit", VitlmViTModel, {})
    pixel_values = pixel_batch(model.config)
    attentions = model(pixel_values, output_attentions=True).attentions
    expected = upsampled(attentions[-1].mean(1)[:, 0, 1:].reshape(2, 4, 4))
    torch.testing.assert_close(attention_heatmaps(model, pixel_values, "cls"), expected)


def test_rollout_multiplies_residual_attention_through_the_layers():
    model = build("vit", VitlmViTModel, {})
    pixel_values = pixel_batch(model.config)
    attentions = [a.mean(1) for a in model(pixel_values, output_attentions=True).attentions]
    identity = torch.eye(attentions[0].shape[-1])
    flow = identity
    for attention in attentions:
        flow = (0.5 * attention + 0.5 * identity) @ flow  # rows of 0.5 A + 0.5 I already sum to 1
    expected = upsampled(flow[:, 0, 1:].reshape(2, 4, 4))
    torch.testing.assert_close(attention_heatmaps(model, pixel_values, "rollout"), expected)


def test_bad_arguments_are_refused():
    model = build("vit", VitlmViTModel, {})
    with pytest.raises(ValueError, match="method"):
        attention_heatmaps(model, pixel_batch(model.config), "gradcam")
    with pytest.raises(ValueError, match="alpha"):
        attention_map(model, Image.new("RGB", (8, 8)), VitlmImageProcessor(size=32, crop_size=32), alpha=2)


def test_mean_pooled_models_read_the_patch_queries_and_detectors_their_tower():
    from vitlm import VitlmDualEncoderForObjectDetection

    model = build("vit", VitlmViTModel, {"pooling": "mean"})  # a [CLS] token, but pooling over the patches
    pixel_values = pixel_batch(model.config)
    attention = model(pixel_values, output_attentions=True).attentions[-1].mean(1)
    expected = upsampled(attention[:, 1:, 1:].mean(1).reshape(2, 4, 4))
    torch.testing.assert_close(attention_heatmaps(model, pixel_values, "cls"), expected)
    detector = build("dual", VitlmDualEncoderForObjectDetection, {})
    assert attention_heatmaps(detector, pixel_values, "rollout").shape == (2, 32, 32)
