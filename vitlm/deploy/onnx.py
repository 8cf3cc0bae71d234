"""ONNX export of vitlm models, checked with onnxruntime against PyTorch before the folder is written.

What a model exports follows its pipeline task (`pipeline_tag`), so a new family or head with a known task exports
without changes here:

- dual encoder: `image_encoder.onnx` (`pixel_values` -> `image_embeds`) and `text_encoder.onnx` (`input_ids`,
  `attention_mask` -> `text_embeds`), both embeddings L2-normalized;
- cached zero-shot classifier and image classifiers: `model.onnx`, `pixel_values` -> `logits`;
- open-vocabulary detector: `model.onnx`, `pixel_values`, `input_ids`, `attention_mask` (`num_queries` texts per
  image, in order) -> `logits`, `pred_boxes`;
- ViT, hybrid and text towers: `model.onnx`, `pixel_values` (or `input_ids`, `attention_mask`) ->
  `last_hidden_state`, `pooler_output`.

The batch (and the detector's number of queries, and the text length up to the context) is dynamic; the image size
is the config's. The folder also holds the model's config and processor files. onnx and onnxruntime (the `deploy`
extra) are imported only here, when exporting.
"""

import copy
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# the files a model folder's processor (image processor, tokenizer) is saved as
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)
# onnxruntime against PyTorch, fp32: the largest absolute difference accepted in any output
TOLERANCE = 1e-4


@dataclass(frozen=True)
class OnnxGraph:
    """One exported file: its input and output names, and what it computes from the model and those inputs."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[..., tuple[torch.Tensor, ...]]


def _image_embeds(model, pixel_values):
    features = model.get_image_features(pixel_values, return_dict=True).pooler_output
    return (nn.functional.normalize(features, dim=-1),)


def _text_embeds(model, input_ids, attention_mask):
    features = model.get_text_features(input_ids, attention_mask, return_dict=True).pooler_output
    return (nn.functional.normalize(features, dim=-1),)


def _logits(model, pixel_values):
    return (model(pixel_values, return_dict=True).logits,)


def _detections(model, pixel_values, input_ids, attention_mask):
    outputs = model(pixel_values, input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
    return outputs.logits, outputs.pred_boxes


def _features(model, *inputs):
    outputs = model(*inputs, return_dict=True)
    return outputs.last_hidden_state, outputs.pooler_output


TEXT = ("input_ids", "attention_mask")
FEATURES = ("last_hidden_state", "pooler_output")
GRAPHS = {
    "zero-shot-image-classification": [
        OnnxGraph("image_encoder", ("pixel_values",), ("image_embeds",), _image_embeds),
        OnnxGraph("text_encoder", TEXT, ("text_embeds",), _text_embeds),
    ],
    "image-classification": [OnnxGraph("model", ("pixel_values",), ("logits",), _logits)],
    "zero-shot-object-detection": [OnnxGraph("model", ("pixel_values", *TEXT), ("logits", "pred_boxes"), _detections)],
    "image-feature-extraction": [OnnxGraph("model", ("pixel_values",), FEATURES, _features)],
    "feature-extraction": [OnnxGraph("model", TEXT, FEATURES, _features)],
}


class _GraphModule(nn.Module):
    """The model with `graph.run` as its forward: what `torch.onnx.export` traces."""

    def __init__(self, model, graph: OnnxGraph):
        super().__init__()
        self.model = model
        self.graph = graph

    def forward(self, *inputs):
        return self.graph.run(self.model, *inputs)


def graphs_for(model) -> list[OnnxGraph]:
    """The graphs a model (or model class) exports as, by its pipeline task; a ValueError for one that no ONNX graph
    represents."""
    model_class = model if isinstance(model, type) else type(model)
    task = getattr(model_class, "pipeline_tag", None)
    if task not in GRAPHS:
        raise ValueError(
            f"a {model_class.__name__} ({task or 'no task'}) does not export to ONNX; the tasks that do: "
            f"{', '.join(GRAPHS)} (an inpainting model masks at random: export its encoder, loaded with AutoModel)"
        )
    return GRAPHS[task]


def example_inputs(model, names, batch_size: int, num_queries: int = 3, length: int = 7, seed: int = 0) -> dict:
    """Random inputs named `names` for `model`: images at the config's size, right-padded texts ending in
    end-of-text (`num_queries` per image for the detector)."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    vision = getattr(config, "vision_config", config)
    text = config if config.model_type == "vitlm_text" else getattr(config, "text_config", None)
    inputs = {}
    if "pixel_values" in names:
        height, width = (vision.image_size,) * 2 if isinstance(vision.image_size, int) else vision.image_size
        inputs["pixel_values"] = torch.randn(batch_size, vision.num_channels, height, width, generator=generator)
    if "input_ids" in names:
        texts = batch_size * num_queries if "pixel_values" in names else batch_size
        length = min(length, text.max_position_embeddings)
        ids = torch.randint(0, text.vocab_size, (texts, length), generator=generator)
        ids[ids == text.eos_token_id] = 0
        ends = torch.randint(1, length, (texts,), generator=generator)
        ends[0] = length - 1  # one text fills the length, the others are padded
        positions = torch.arange(length)
        ids[positions >= ends[:, None]] = text.pad_token_id if text.pad_token_id is not None else 0
        ids[torch.arange(texts), ends] = text.eos_token_id
        inputs["input_ids"] = ids
        inputs["attention_mask"] = (positions <= ends[:, None]).long()
    return inputs


def _dynamic_shapes(model, graph: OnnxGraph) -> dict:
    batch = torch.export.Dim("batch")
    shapes = {"pixel_values": {0: batch}}
    if "input_ids" in graph.inputs:
        text = getattr(model.config, "text_config", model.config)
        length = torch.export.Dim("length", max=text.max_position_embeddings)
        # the detector's texts are its queries, `num_queries` per image: their count is a dimension of its own
        texts = torch.export.Dim("texts") if "pixel_values" in graph.inputs else batch
        shapes["input_ids"] = shapes["attention_mask"] = {0: texts, 1: length}
    return {name: shapes[name] for name in graph.inputs}


def export_graph(model, graph: OnnxGraph, path: Path, int8: bool = False) -> float:
    """Write `graph` of `model` to `path` and return onnxruntime's largest absolute difference from PyTorch on new
    inputs (batches of 1 and 3); a ValueError if the fp32 graph differs by more than `TOLERANCE`. `int8` quantizes
    the linear layers' weights to int8 with onnxruntime's dynamic quantization (activations quantized at run time)."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    module = _GraphModule(model, graph).eval()
    trace_inputs = example_inputs(model, graph.inputs, batch_size=2)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            tuple(trace_inputs[name] for name in graph.inputs),
            input_names=list(graph.inputs),
            output_names=list(graph.outputs),
            dynamic_shapes=(tuple(_dynamic_shapes(model, graph).values()),),  # forward(*inputs): one argument
            dynamo=True,
            verbose=False,
        )
    if int8:
        fp32_path = path.with_suffix(".fp32.onnx")
        program.save(str(fp32_path))
        quantize_dynamic(fp32_path, path, weight_type=QuantType.QInt8, per_channel=True)
        fp32_path.unlink()
    else:
        program.save(str(path))

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    difference = 0.0
    for seed, batch_size in enumerate((1, 3), start=1):
        inputs = example_inputs(model, graph.inputs, batch_size, num_queries=2, length=5, seed=seed)
        with torch.no_grad():
            expected = module(*inputs.values())
        actual = session.run(list(graph.outputs), {name: tensor.numpy() for name, tensor in inputs.items()})
        for name, reference, value in zip(graph.outputs, expected, actual, strict=True):
            difference = max(difference, (torch.from_numpy(value) - reference).abs().max().item())
            if not int8 and difference > TOLERANCE:
                raise ValueError(
                    f"the exported {path.name} differs from PyTorch by {difference:.2e} in `{name}` (more than "
                    f"{TOLERANCE}); it was not written"
                )
    return difference


def load_model(folder: str | Path):
    """The vitlm model saved in `folder`, by its config's architecture."""
    from transformers import AutoConfig

    from .. import models

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    architecture = (AutoConfig.from_pretrained(folder).architectures or [""])[0]
    model_class = getattr(models, architecture, None) if architecture.startswith("Vitlm") else None
    if model_class is None:
        raise ValueError(f"{folder} holds a {architecture or 'model of no architecture'}, not a vitlm model")
    graphs_for(model_class)  # refused before loading the weights
    return model_class.from_pretrained(folder)


def export_onnx(model_or_folder, out_dir: str | Path, processor=None, int8: bool = False, overwrite: bool = False):
    """Export a vitlm model (or a saved model folder) to ONNX in `out_dir`, with its config and processor files.

    Every graph is run with onnxruntime on new inputs and compared with PyTorch before the folder is written (fp32:
    at most `TOLERANCE` apart, or nothing is written); `out_dir` is written atomically, as `vitlm convert` writes.
    `int8`: the linear layers' weights in int8 (onnxruntime's dynamic quantization), for faster CPU inference.
    Returns {file name: largest absolute difference from PyTorch}."""
    from ..convert import check_out_dir, staged_folder

    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite, reads=[model_or_folder])
    folder = None
    if isinstance(model_or_folder, (str, Path)):
        folder, model_or_folder = Path(model_or_folder), load_model(model_or_folder)
    model = model_or_folder
    graphs = graphs_for(model)  # refuses before any work
    if model.dtype != torch.float32:  # exported in fp32, leaving the caller's model as it is
        model = copy.deepcopy(model).float()
    was_training = model.training
    report = {}
    try:
        model.eval()
        with staged_folder(out_dir) as staging:
            for graph in graphs:
                report[f"{graph.name}.onnx"] = export_graph(model, graph, staging / f"{graph.name}.onnx", int8=int8)
            model.config.to_json_file(staging / "config.json")  # metadata (labels, sizes); no model code
            if processor is not None:
                processor.save_pretrained(staging)
            elif folder is not None:
                for name in PROCESSOR_FILES:
                    if (folder / name).is_file():
                        shutil.copy2(folder / name, staging / name)
    finally:
        model.train(was_training)
    return report


__all__ = ["GRAPHS", "OnnxGraph", "TOLERANCE", "example_inputs", "export_graph", "export_onnx", "graphs_for"]
