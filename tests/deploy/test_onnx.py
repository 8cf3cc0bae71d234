"""ONNX export: onnxruntime's outputs equal PyTorch's (<= 1e-4, fp32) for new batch sizes, for the dual encoder's two
towers, the cached zero-shot classifier, the detector and a hybrid classifier; int8 graphs keep the shipped model's
embeddings; `vitlm export --onnx` writes a loadable folder and refuses what does not export."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

import vitlm
from tests.conftest import pixel_batch, text_batch
from tests.models.test_contracts import build
from vitlm import (
    VitlmDualEncoderForImageClassification,
    VitlmDualEncoderForObjectDetection,
    VitlmDualEncoderModel,
    VitlmHybridForImageClassification,
    VitlmViTForMaskedImageModeling,
)
from vitlm.cli import main
from vitlm.deploy.onnx import TOLERANCE, export_onnx

ZERO_SHOT = Path(vitlm.__file__).parent / "demo" / "default_models" / "zero-shot"


def run(path, **inputs) -> list[torch.Tensor]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(output) for output in session.run(None, {k: v.numpy() for k, v in inputs.items()})]


def assert_close(actual, expected):
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= TOLERANCE


@torch.no_grad()
def test_the_dual_encoders_towers_give_pytorchs_normalized_embeddings(tmp_path):
    model = build(VitlmDualEncoderModel)
    report = export_onnx(model, tmp_path / "onnx")
    assert set(report) == {"image_encoder.onnx", "text_encoder.onnx"}
    assert all(difference <= TOLERANCE for difference in report.values())
    pixel_values = pixel_batch(model.config, batch_size=4, seed=7)
    input_ids, attention_mask = text_batch(model.config, batch_size=5, length=11, seed=7)
    (image_embeds,) = run(tmp_path / "onnx" / "image_encoder.onnx", pixel_values=pixel_values)
    (text_embeds,) = run(tmp_path / "onnx" / "text_encoder.onnx", input_ids=input_ids, attention_mask=attention_mask)
    expected = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    assert_close(image_embeds, expected.image_embeds)
    assert_close(text_embeds, expected.text_embeds)
    assert (tmp_path / "onnx" / "config.json").is_file()


@torch.no_grad()
def test_the_detector_takes_any_number_of_images_and_queries(tmp_path):
    model = build(VitlmDualEncoderForObjectDetection)
    export_onnx(model, tmp_path / "onnx")
    pixel_values = pixel_batch(model.config, batch_size=3, seed=3)
    input_ids, attention_mask = text_batch(model.config, batch_size=12, length=9, seed=3)  # 4 queries per image
    logits, boxes = run(
        tmp_path / "onnx" / "model.onnx", pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask
    )
    expected = model(pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    assert logits.shape == (3, expected.logits.shape[1], 4)
    assert_close(logits, expected.logits)
    assert_close(boxes, expected.pred_boxes)


@pytest.mark.parametrize("model_class", [VitlmDualEncoderForImageClassification, VitlmHybridForImageClassification])
@torch.no_grad()
def test_classifiers_export_their_logits_from_a_saved_folder_through_the_cli(model_class, tmp_path, capsys):
    model = build(model_class)
    model.save_pretrained(tmp_path / "model")
    assert main(["export", "--onnx", str(tmp_path / "model"), str(tmp_path / "onnx")]) == 0
    assert "max abs difference" in capsys.readouterr().out
    pixel_values = pixel_batch(model.config, batch_size=1, seed=5)
    (logits,) = run(tmp_path / "onnx" / "model.onnx", pixel_values=pixel_values)
    assert_close(logits, model(pixel_values).logits)
    assert sorted(path.name for path in (tmp_path / "onnx").iterdir()) == ["config.json", "model.onnx"]


@torch.no_grad()
def test_int8_graphs_keep_the_shipped_models_embeddings(tmp_path):
    from transformers import AutoModel, AutoProcessor

    from vitlm.data.shapes import CATEGORIES, generate

    assert main(["export", "--onnx", "--int8", str(ZERO_SHOT), str(tmp_path / "int8")]) == 0
    model, processor = (
        AutoModel.from_pretrained(ZERO_SHOT).float().eval(),
        AutoProcessor.from_pretrained(tmp_path / "int8"),
    )
    images = list(generate(32, seed=5, split="test", image_size=64, max_objects=1)["image"])
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    texts = processor.tokenizer([f"a {name}" for name in CATEGORIES], padding=True, return_tensors="pt")
    (image_embeds,) = run(tmp_path / "int8" / "image_encoder.onnx", pixel_values=pixel_values)
    (text_embeds,) = run(tmp_path / "int8" / "text_encoder.onnx", **texts)
    expected = model(**texts, pixel_values=pixel_values)
    for actual, reference in ((image_embeds, expected.image_embeds), (text_embeds, expected.text_embeds)):
        cosine = nn.functional.cosine_similarity(actual, reference)
        assert cosine.min() >= 0.99
        assert not np.allclose(actual.numpy(), reference.numpy(), atol=1e-6)  # the weights are int8
    graph = onnx.load(tmp_path / "int8" / "image_encoder.onnx").graph
    int8_weights = [w for w in graph.initializer if w.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 4 * model.config.vision_config.num_hidden_layers  # qkv, proj, fc1, fc2 per block


def test_a_masked_image_model_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys):
    build(VitlmViTForMaskedImageModeling).save_pretrained(tmp_path / "mae")
    capsys.readouterr()  # saving's progress bar
    assert main(["export", "--onnx", str(tmp_path / "mae"), str(tmp_path / "onnx")]) == 2
    error = capsys.readouterr().err
    assert "does not export to ONNX" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "onnx").exists()


def test_int8_without_onnx_is_refused(tmp_path, capsys):
    assert main(["export", "--int8", str(ZERO_SHOT), str(tmp_path / "out")]) == 2
    assert "add --onnx" in capsys.readouterr().err
