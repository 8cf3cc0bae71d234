"""Running vitlm models outside training: ONNX export (`onnx.py`, `vitlm export --onnx`) and int8 inference
(`quantize.py`). onnx and onnxruntime (the `deploy` extra) are imported only when exporting."""

from .quantize import quantize

__all__ = ["quantize"]
