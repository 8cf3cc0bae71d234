"""Saved models reload identically: directly, through the Auto classes, and as remote code without vitlm."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
    AutoModelForSemanticSegmentation,
    AutoModelForZeroShotImageClassification,
)

from tests.conftest import main_output, model_inputs, tiny_clip_config, tiny_config
from vitlm import (
    VitlmDualEncoderForSemanticSegmentation,
    VitlmDualEncoderModel,
    VitlmDualEncoderProcessor,
    VitlmHybridForImageClassification,
    VitlmHybridModel,
    VitlmImageProcessor,
    VitlmPiTForImageClassification,
    VitlmPiTModel,
    VitlmSwinForImageClassification,
    VitlmSwinModel,
    VitlmViTForImageClassification,
    VitlmViTForInpaintingSynthesis,
    VitlmViTForMaskedImageModeling,
    VitlmViTForSemanticSegmentation,
    VitlmViTMAEConfig,
    VitlmViTModel,
)
from vitlm.clip_bpe import clip_tokenizer

CASES = [
    ("vit", VitlmViTModel, AutoModel),
    ("vit", VitlmViTForImageClassification, AutoModelForImageClassification),
    ("hybrid", VitlmHybridModel, AutoModel),
    ("hybrid", VitlmHybridForImageClassification, AutoModelForImageClassification),
    ("dual", VitlmDualEncoderModel, AutoModel),
    ("dual", VitlmDualEncoderModel, AutoModelForZeroShotImageClassification),
    ("vit_mae", VitlmViTForMaskedImageModeling, AutoModelForMaskedImageModeling),
    ("pit", VitlmPiTModel, AutoModel),
    ("pit", VitlmPiTForImageClassification, AutoModelForImageClassification),
    ("swin", VitlmSwinModel, AutoModel),
    ("swin", VitlmSwinForImageClassification, AutoModelForImageClassification),
    ("dinov2", VitlmViTModel, AutoModel),
    ("dinov2", VitlmViTForImageClassification, AutoModelForImageClassification),
    ("beit", VitlmViTForImageClassification, AutoModelForImageClassification),
    ("vit_synthesis", VitlmViTForInpaintingSynthesis, AutoModelForMaskedImageModeling),
    ("segmenter", VitlmViTForSemanticSegmentation, AutoModelForSemanticSegmentation),
    ("dual", VitlmDualEncoderForSemanticSegmentation, AutoModelForSemanticSegmentation),
]
CODE_FILES = {"configuration_vitlm.py", "layers.py", "modeling_vit.py"}


def saved_model(tmp_path, family, model_class):
    torch.manual_seed(0)
    model = model_class(tiny_config(family)).eval()
    folder = tmp_path / f"{family}-{model_class.__name__}"
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("family,model_class,auto_class", CASES)
def test_save_and_reload_give_identical_outputs(tmp_path, family, model_class, auto_class):
    model, folder = saved_model(tmp_path, family, model_class)
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors"} | CODE_FILES <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    inputs = model_inputs(model)
    with torch.no_grad():
        expected = main_output(model(**inputs))
        for loaded in (model_class.from_pretrained(folder), auto_class.from_pretrained(folder)):
            assert type(loaded) is model_class
            assert torch.equal(main_output(loaded.eval()(**inputs)), expected)


def test_auto_map_lists_every_auto_class_of_the_family(tmp_path):
    _, folder = saved_model(tmp_path, "vit", VitlmViTModel)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_vitlm.VitlmViTConfig",
        "AutoModel": "modeling_vit.VitlmViTModel",
        "AutoModelForImageClassification": "modeling_vit.VitlmViTForImageClassification",
    }
    _, folder = saved_model(tmp_path, "dual", VitlmDualEncoderModel)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForZeroShotImageClassification"] == "modeling_dual_encoder.VitlmDualEncoderModel"
    assert {"modeling_hybrid.py", "modeling_dual_encoder.py"} <= {p.name for p in folder.iterdir()}
    # an MAE repo answers to the Auto classes vitlm registers for it, and only those, with or without vitlm
    _, folder = saved_model(tmp_path, "vit_mae", VitlmViTForMaskedImageModeling)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_vitlm.VitlmViTMAEConfig",
        "AutoModel": "modeling_inpainting.VitlmViTMAEModel",
        "AutoModelForMaskedImageModeling": "modeling_inpainting.VitlmViTForMaskedImageModeling",
    }
    for auto_class, module_and_class in auto_map.items():
        if auto_class != "AutoConfig":
            registered = getattr(transformers, auto_class)._model_mapping[VitlmViTMAEConfig]
            assert module_and_class.endswith(f".{registered.__name__}")


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["vitlm"] = None  # the remote code must not need vitlm
    import torch, transformers
    from safetensors.torch import load_file, save_file

    results = {}
    for case in json.loads(sys.argv[1]):
        auto_class = getattr(transformers, case["auto_class"])
        model = auto_class.from_pretrained(case["folder"], trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(model).__name__ == case["class_name"], type(model).__name__
        inputs = load_file(case["inputs"])
        with torch.no_grad():
            outputs = model(**inputs)
        names = ("logits", "logits_per_image", "last_hidden_state")
        name = next(n for n in names if getattr(outputs, n, None) is not None)
        results[case["key"]] = getattr(outputs, name).contiguous()

    processor = transformers.AutoProcessor.from_pretrained(sys.argv[3], trust_remote_code=True)
    assert type(processor).__name__ == "VitlmDualEncoderProcessor", type(processor).__name__
    assert type(processor.tokenizer).__name__ == "VitlmCLIPTokenizer", type(processor.tokenizer).__name__
    assert type(processor.image_processor).__module__.startswith("transformers_modules")
    encoded = processor(images=[sys.argv[4]], text=json.loads(sys.argv[5]), padding=True, return_tensors="pt")
    results.update({name: encoded[name].contiguous() for name in ("pixel_values", "input_ids")})
    save_file(results, sys.argv[2])
    """
)


def test_remote_code_loads_without_vitlm(tmp_path):
    """Models of every family and head, and the dual encoder's processor, load and compute the same without vitlm."""
    processor = VitlmDualEncoderProcessor(VitlmImageProcessor(size=40, crop_size=32), clip_tokenizer())
    processor.save_pretrained(tmp_path / "processor")
    image_file, texts = tmp_path / "image.png", ["A photo of a café &amp; a cat 😀", "two dogs"]
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image_file)
    encoded = processor(images=[str(image_file)], text=texts, padding=True, return_tensors="pt")
    cases, expected = [], {"pixel_values": encoded["pixel_values"], "input_ids": encoded["input_ids"]}
    for index, (family, model_class, auto_class) in enumerate(CASES):
        model, folder = saved_model(tmp_path, family, model_class)
        inputs = model_inputs(model)
        save_file(inputs, tmp_path / f"inputs-{index}.safetensors")
        with torch.no_grad():
            expected[str(index)] = main_output(model(**inputs))
        cases.append(
            {
                "key": str(index),
                "folder": str(folder),
                "auto_class": auto_class.__name__,
                "class_name": model_class.__name__,
                "inputs": str(tmp_path / f"inputs-{index}.safetensors"),
            }
        )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            REMOTE_SCRIPT,
            json.dumps(cases),
            str(tmp_path / "remote.safetensors"),
            str(tmp_path / "processor"),
            str(image_file),
            json.dumps(texts),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = load_file(tmp_path / "remote.safetensors")
    for key, value in expected.items():
        assert torch.equal(remote[key], value), key


WITHOUT_TORCHVISION_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["torchvision"] = None  # not a dependency: `pip install vitlm` or `vitlm[demo]` brings none
    import transformers
    import vitlm
    from PIL import Image

    folder, image = sys.argv[1], Image.open(sys.argv[2])
    model = transformers.AutoModelForZeroShotImageClassification.from_pretrained(folder)
    assert type(model) is vitlm.VitlmDualEncoderModel, type(model)
    assert type(transformers.AutoProcessor.from_pretrained(folder)) is vitlm.VitlmDualEncoderProcessor
    classify = transformers.pipeline("zero-shot-image-classification", model=folder)
    print(json.dumps(sorted(result["label"] for result in classify(image, candidate_labels=["a cat", "a dog"]))))
    """
)


def test_vitlm_works_without_torchvision(tmp_path):
    """`import vitlm` failed where torchvision is not installed (the README's `pip install -e ".[demo]"`): it
    registered a video processor through transformers' placeholder AutoVideoProcessor, which raises."""
    torch.manual_seed(0)
    VitlmDualEncoderModel(tiny_clip_config()).save_pretrained(tmp_path / "model")
    VitlmDualEncoderProcessor(VitlmImageProcessor(size=40, crop_size=32), clip_tokenizer()).save_pretrained(
        tmp_path / "model"
    )
    Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    command = [sys.executable, "-c", WITHOUT_TORCHVISION_SCRIPT, str(tmp_path / "model"), str(tmp_path / "image.png")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    # no stdin: a question on the terminal (whether to run a repo's code) fails at once
    result = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["a cat", "a dog"]
