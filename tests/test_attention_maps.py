import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import pixel_batch, tiny_config
from vitlm import (
    VitlmDualEncoderModel,
    VitlmHybridForImageClassification,
    VitlmImageProcessor,
    VitlmPiTForImageClassification,
    VitlmViTForImageClassification,
    VitlmViTModel,
)
from vitlm.attention_maps import attention_heatmaps, attention_map, pooling_matrix

MODELS = [
    ("vit", VitlmViTForImageClassification, {}),
    ("vit", VitlmViTModel, {"use_distillation_token": True}),
    ("vit", VitlmViTModel, {"use_cls_token": False, "pooling": "mean"}),
    ("hybrid", VitlmHybridForImageClassification, {}),
    ("dual", VitlmDualEncoderModel, {}),
    ("pit", VitlmPiTForImageClassification, {}),
    ("pit", VitlmPiTForImageClassification, {"use_distillation_token": True}),
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


def test_pooling_matrix_averages_the_neighbourhood_the_pooling_convolution_reads():
    matrix = pooling_matrix((3, 4), (2, 2), prefix=1, device="cpu")
    assert matrix.shape == (1 + 4, 1 + 12)
    assert matrix[0].tolist() == [1.0] + [0.0] * 12
    # pooled (0, 0) reads rows 0-1, columns 0-1 (the rest is padding); pooled (1, 1) rows 1-2, columns 1-3
    expected = {(1, 0): [(0, 0), (0, 1), (1, 0), (1, 1)], (4, 0): [(r, c) for r in (1, 2) for c in (1, 2, 3)]}
    for (row, _), cells in expected.items():
        weights = torch.zeros(13)
        weights[[1 + r * 4 + c for r, c in cells]] = 1 / len(cells)
        torch.testing.assert_close(matrix[row], weights)


def test_pit_rollout_carries_the_flow_through_token_pooling():
    model = build("pit", VitlmPiTForImageClassification, {})
    config = model.config
    pixel_values = pixel_batch(config)
    attentions = [a.mean(1) for a in model(pixel_values, output_attentions=True).attentions]
    grids = config.stage_grids(*pixel_values.shape[-2:])
    flow, stage = torch.eye(attentions[0].shape[-1]), 0
    for attention in attentions:
        if attention.shape[-1] != flow.shape[-2]:
            flow = pooling_matrix(grids[stage], grids[stage + 1], 1, "cpu") @ flow
            stage += 1
        flow = (0.5 * attention + 0.5 * torch.eye(attention.shape[-1])) @ flow
    assert stage == len(config.depths) - 1 > 0
    scores = flow[:, 0, 1:].reshape(2, *grids[0])
    expected = torch.nn.functional.interpolate(scores[:, None], size=pixel_values.shape[-2:], mode="bilinear")[:, 0]
    expected = expected.clamp(min=0) / expected.clamp(min=0).amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(attention_heatmaps(model, pixel_values, "rollout"), expected)
