import pytest
import torch
from timm.layers import StdConv2dSame, create_pool2d

from tests.conftest import pixel_batch, tiny_config
from vitlm import VitlmHybridModel
from vitlm.models.modeling_hybrid import VitlmStdConv2d, pad_same


@pytest.mark.parametrize("size", [(31, 32), (64, 45), (7, 7)])
@pytest.mark.parametrize("kernel_size,stride", [(7, 2), (3, 2), (3, 1), (1, 2)])
def test_std_conv_same_matches_timm(size, kernel_size, stride):
    """The BiT/R50+ViT weights were trained with TensorFlow SAME padding: odd pads go right and bottom."""
    torch.manual_seed(0)
    ours = VitlmStdConv2d(4, 6, kernel_size, stride=stride, eps=1e-8)
    reference = StdConv2dSame(4, 6, kernel_size, stride=stride, eps=1e-8, bias=False)
    reference.weight.data.copy_(ours.weight.data)
    x = torch.randn(2, 4, *size)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(31, 32), (16, 16)])
def test_same_max_pool_matches_timm(size):
    x = torch.randn(1, 2, *size) - 10  # negative values would expose zero padding
    ours = torch.nn.functional.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)
    torch.testing.assert_close(ours, create_pool2d("max", kernel_size=3, stride=2, padding="same")(x))


def test_hybrid_cuts_the_feature_map_into_patches():
    config = tiny_config("hybrid")
    model = VitlmHybridModel(config).eval()
    outputs = model(pixel_batch(config))
    grid = config.grid_size
    assert outputs.last_hidden_state.shape == (2, config.num_prefix_tokens + grid[0] * grid[1], config.hidden_size)
    features = model.embeddings.stem.backbone(pixel_batch(config))
    assert features.shape[1:] == (config.backbone_widths[-1], grid[0] * config.patch_size, grid[1] * config.patch_size)
