"""The hybrid CNN+ViT (R50+ViT-B/16 of the ViT paper, timm's `vit_*_r50_*` / `vit_*_r26_*`).

A ResNetV2 (BiT) backbone with weight-standardized convolutions, GroupNorm and TensorFlow "SAME" padding replaces the
ViT's patch stem; its feature map is cut into patches. Everything after the stem is the ViT's.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_vitlm import VitlmHybridConfig
from .layers import check_pixel_values
from .modeling_vit import VitlmViTForImageClassification, VitlmViTModel


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one side: the output has ceil(size / stride) positions, an odd pad going
    right / bottom."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel_size: int, stride: int, value: float = 0.0) -> torch.Tensor:
    (top, bottom), (left, right) = (same_padding(size, kernel_size, stride) for size in x.shape[-2:])
    return F.pad(x, (left, right, top, bottom), value=value) if top or bottom or left or right else x


class VitlmStdConv2d(nn.Conv2d):
    """Convolution with weight standardization (zero mean, unit variance per output channel) and SAME padding."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, eps=1e-8):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=False)
        self.eps = eps

    def forward(self, x):
        # batch_norm over a (1, out_channels, fan_in) view standardizes every filter in one fused kernel
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=self.eps
        ).reshape_as(self.weight)
        (top, bottom), (left, right) = (
            same_padding(size, self.kernel_size[0], self.stride[0]) for size in x.shape[-2:]
        )
        if top == bottom and left == right:  # symmetric: the convolution pads, without copying the input
            return F.conv2d(x, weight, None, self.stride, padding=(top, left))
        return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, None, self.stride)


class VitlmBottleneck(nn.Module):
    """Non-pre-activation ResNetV2 bottleneck: 1x1 -> 3x3 (strided) -> 1x1, GroupNorm + ReLU, projected shortcut."""

    def __init__(self, config, in_channels, out_channels, stride):
        super().__init__()
        mid_channels = out_channels // 4
        groups, eps = config.backbone_num_groups, config.backbone_std_conv_eps
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = VitlmStdConv2d(in_channels, out_channels, 1, stride=stride, eps=eps)
            self.downsample_norm = nn.GroupNorm(groups, out_channels)
        self.conv1 = VitlmStdConv2d(in_channels, mid_channels, 1, eps=eps)
        self.norm1 = nn.GroupNorm(groups, mid_channels)
        self.conv2 = VitlmStdConv2d(mid_channels, mid_channels, 3, stride=stride, eps=eps)
        self.norm2 = nn.GroupNorm(groups, mid_channels)
        self.conv3 = VitlmStdConv2d(mid_channels, out_channels, 1, eps=eps)
        self.norm3 = nn.GroupNorm(groups, out_channels)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample_norm(self.downsample(x))
        # in place: each ReLU's input is a fresh tensor that nothing else reads, as in timm's GroupNormAct
        x = F.relu(self.norm1(self.conv1(x)), inplace=True)
        x = F.relu(self.norm2(self.conv2(x)), inplace=True)
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut, inplace=True)


class VitlmResNetV2Backbone(nn.Module):
    """7x7/2 stem conv, 3x3/2 max-pool, then stages of bottlenecks; every stage after the first halves the size."""

    def __init__(self, config: VitlmHybridConfig):
        super().__init__()
        self.stem_conv = VitlmStdConv2d(
            config.num_channels, config.backbone_stem_width, 7, stride=2, eps=config.backbone_std_conv_eps
        )
        self.stem_norm = nn.GroupNorm(config.backbone_num_groups, config.backbone_stem_width)
        self.stages = nn.ModuleList()
        in_channels = config.backbone_stem_width
        for index, (depth, out_channels) in enumerate(zip(config.backbone_depths, config.backbone_widths)):
            blocks = []
            for block_index in range(depth):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(VitlmBottleneck(config, in_channels, out_channels, stride))
                in_channels = out_channels
            self.stages.append(nn.Sequential(*blocks))

    def forward(self, pixel_values):
        x = F.relu(self.stem_norm(self.stem_conv(pixel_values)), inplace=True)
        x = F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), kernel_size=3, stride=2)
        for stage in self.stages:
            x = stage(x)
        return x


class VitlmHybridStem(nn.Module):
    """The backbone's feature map, cut into `patch_size` x `patch_size` patches projected to `hidden_size`."""

    def __init__(self, config: VitlmHybridConfig):
        super().__init__()
        self.num_channels = config.num_channels
        self.stride = config.stem_stride
        self.backbone = VitlmResNetV2Backbone(config)
        self.projection = nn.Conv2d(
            config.backbone_widths[-1], config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values):
        check_pixel_values(pixel_values, self.num_channels, self.stride)
        return self.projection(self.backbone(pixel_values))


_HYBRID_AUTO_MAP = {
    "AutoModel": "modeling_hybrid.VitlmHybridModel",
    "AutoModelForImageClassification": "modeling_hybrid.VitlmHybridForImageClassification",
}


class VitlmHybridModel(VitlmViTModel):
    config_class = VitlmHybridConfig
    _remote_auto_map = _HYBRID_AUTO_MAP

    @staticmethod
    def build_stem(config) -> nn.Module:
        return VitlmHybridStem(config)


class VitlmHybridForImageClassification(VitlmViTForImageClassification):
    config_class = VitlmHybridConfig
    base_model_class = VitlmHybridModel
    _remote_auto_map = _HYBRID_AUTO_MAP


__all__ = ["VitlmHybridModel", "VitlmHybridForImageClassification"]
