"""int8 inference on CPU with PyTorch's dynamic quantization of the linear layers."""

import copy

import torch
from torch import nn


def quantize(model: nn.Module) -> nn.Module:
    """A copy of `model` for int8 inference on CPU; `model` is left as it is.

    Every `nn.Linear` (attention's fused qkv and output projection, the MLPs, the projections and heads) gets int8
    weights with one scale per output channel, and quantizes its input per call (PyTorch's dynamic quantization); the
    stems' convolutions, LayerNorms, embeddings and a zero-shot classifier's class embeddings stay fp32. The copy takes
    the same calls and returns the same outputs, in eval mode. It is for inference only: it neither trains nor saves
    (quantize after `from_pretrained`). `vitlm export --onnx --int8` is the same for onnxruntime."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"quantize takes a model (torch.nn.Module), got {type(model).__name__}")
    devices = {parameter.device.type for parameter in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"int8 dynamic quantization runs on CPU: move the model there first (it is on {devices})")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = copy.deepcopy(model).float().eval()
    return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


__all__ = ["quantize"]
