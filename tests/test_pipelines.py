"""transformers' own pipelines run vitlm models and processors loaded from a folder."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import transformers.dynamic_module_utils
from PIL import Image
from transformers import pipeline

from tests.conftest import tiny_clip_config, tiny_config
from vitlm import (
    VitlmDualEncoderModel,
    VitlmDualEncoderProcessor,
    VitlmHybridForImageClassification,
    VitlmImageProcessor,
    VitlmPiTForImageClassification,
    VitlmViTForImageClassification,
    VitlmViTModel,
)
from vitlm.clip_bpe import clip_tokenizer


def image_processor_for(config):
    size = config.image_size
    return VitlmImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 56), (64, 33)]]


@pytest.mark.parametrize(
    "family,model_class",
    [
        ("vit", VitlmViTForImageClassification),
        ("hybrid", VitlmHybridForImageClassification),
        ("pit", VitlmPiTForImageClassification),
    ],
)
def test_image_classification_pipeline(tmp_path, images, family, model_class):
    labels = ["circle", "square", "triangle"]
    config = tiny_config(family, id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    torch.manual_seed(0)
    model = model_class(config).eval()
    processor = image_processor_for(config)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    classifier = pipeline("image-classification", model=str(tmp_path))
    results = classifier(images, top_k=3)
    expected = model(**processor(images, return_tensors="pt")).logits.softmax(-1)
    for result, probabilities in zip(results, expected):
        assert [r["label"] for r in result] == [labels[i] for i in probabilities.argsort(descending=True)]
        np.testing.assert_allclose(
            [r["score"] for r in result], probabilities.sort(descending=True).values.tolist(), atol=1e-5
        )


def test_zero_shot_image_classification_pipeline(tmp_path, images):
    config = tiny_clip_config()
    torch.manual_seed(0)
    model = VitlmDualEncoderModel(config).eval()
    processor = VitlmDualEncoderProcessor(image_processor_for(config.vision_config), clip_tokenizer())
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path))
    candidates = ["a red circle", "a blue square", "a green triangle", "a dog"]
    result = classifier(images[0], candidate_labels=candidates, hypothesis_template="{}")
    assert sorted(r["label"] for r in result) == sorted(candidates)
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-5

    inputs = processor(images=images[0], text=candidates, padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**inputs).logits_per_image.softmax(-1)[0]
    np.testing.assert_allclose(
        [dict((r["label"], r["score"]) for r in result)[c] for c in candidates], probabilities.tolist(), atol=1e-5
    )
    with pytest.raises(ValueError, match="got an empty list of texts"):
        classifier(images[0], candidate_labels=[])


def test_image_feature_extraction_pipeline(tmp_path, images):
    config = tiny_config("vit")
    torch.manual_seed(0)
    model = VitlmViTModel(config).eval()
    processor = image_processor_for(config)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    with torch.no_grad():
        outputs = model(**processor(images[0], return_tensors="pt"))
    features = np.array(extractor(images[0]))
    tokens = 1 + (config.image_size // config.patch_size) ** 2
    assert features.shape == (1, tokens, config.hidden_size)
    np.testing.assert_allclose(features, outputs.last_hidden_state.numpy(), atol=1e-5)
    pooled = np.array(extractor(images[0], pool=True))
    np.testing.assert_allclose(pooled.reshape(-1), outputs.pooler_output[0].numpy(), atol=1e-5)


NO_PROMPT_SCRIPT = textwrap.dedent(
    """
    import builtins, json, sys
    sys.modules["vitlm"] = None  # the remote code must not need vitlm
    import transformers, transformers.dynamic_module_utils

    prompts = []
    builtins.input = lambda prompt="": prompts.append(prompt) or "n"
    transformers.dynamic_module_utils.TIME_OUT_REMOTE_CODE = 15
    for task, folder in json.loads(sys.argv[1]):
        loaded = transformers.pipeline(task, model=folder, trust_remote_code=True)
        assert type(loaded.model).__module__.startswith("transformers_modules"), type(loaded.model).__module__
    assert not prompts, prompts
    """
)


@pytest.fixture
def saved_pipeline_models(tmp_path):
    """A saved ViT classifier and a saved dual encoder with its processor: (task, folder) pairs."""
    torch.manual_seed(0)
    config = tiny_config("vit", num_labels=3)
    VitlmViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    image_processor_for(config).save_pretrained(tmp_path / "vit")
    config = tiny_clip_config()
    VitlmDualEncoderModel(config).save_pretrained(tmp_path / "dual")
    processor = VitlmDualEncoderProcessor(image_processor_for(config.vision_config), clip_tokenizer())
    processor.save_pretrained(tmp_path / "dual")
    return [
        ("image-classification", str(tmp_path / "vit")),
        ("zero-shot-image-classification", str(tmp_path / "dual")),
    ]


def test_pipelines_never_ask_to_run_custom_code(saved_pipeline_models, monkeypatch):
    """Pipelines probe `AutoVideoProcessor` for every model, which guessed a remote video processor from the image
    processor's `auto_map` and asked "Do you wish to run the custom code? [y/N]" on the terminal (waiting 15 s)."""
    prompts = []
    monkeypatch.setattr("builtins.input", lambda prompt="": prompts.append(prompt) or "n")
    monkeypatch.setattr(transformers.dynamic_module_utils, "TIME_OUT_REMOTE_CODE", 15)
    for task, folder in saved_pipeline_models:
        assert pipeline(task, model=folder).model.__module__.startswith("vitlm.")
    assert prompts == []


def test_pipelines_load_as_remote_code_without_asking(saved_pipeline_models, tmp_path):
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", NO_PROMPT_SCRIPT, json.dumps(saved_pipeline_models)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
