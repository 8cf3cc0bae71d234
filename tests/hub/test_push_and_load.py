"""Every family and head pushed with `push_to_hub` loads back from the Hub in a fresh process, with vitlm and as
remote code without it, through the Auto classes and pipelines, computing exactly what the pushed objects compute."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import pipeline

from tests.conftest import main_output, model_inputs, pixel_batch, tiny_clip_config, tiny_config
from tests.hub.conftest import (
    DUAL_FILES,
    IMAGE_PROCESSOR_FILES,
    PROCESSOR_FILES,
    USER,
    VIT_FILES,
    assert_published,
)
from vitlm import (
    VitlmDualEncoderForImageClassification,
    VitlmDualEncoderForObjectDetection,
    VitlmDualEncoderModel,
    VitlmDualEncoderProcessor,
    VitlmHybridForImageClassification,
    VitlmHybridModel,
    VitlmImageProcessor,
    VitlmViTForImageClassification,
    VitlmViTForMaskedImageModeling,
    VitlmViTModel,
)
from vitlm.clip_bpe import clip_tokenizer

LABELS = ["circle", "square", "triangle"]
PROMPTS = ["a red circle", "a blue square"]
TINY_DECODER = dict(
    decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4, decoder_intermediate_size=64
)
VITLM_TOKENIZER = {"tokenization_vitlm.py"}
# the Hub task each pushed repo's card must name (its widget and search filter)
PIPELINE_TAGS = {
    "vit": "image-feature-extraction",
    "vit-classifier": "image-classification",
    "vit-mae": "image-to-image",
    "hybrid": "image-feature-extraction",
    "hybrid-classifier": "image-classification",
    "dual": "zero-shot-image-classification",
    "zero-shot-classifier": "image-classification",
    "detector": "zero-shot-object-detection",
}


@dataclass
class Case:
    """One repo: the model and processor pushed to it, how users load it, and what it must contain."""

    name: str
    model: torch.nn.Module
    processor: object
    auto_class: str
    files: set[str]
    inputs: dict = field(default_factory=dict)
    task: str | None = None
    pipeline_kwargs: dict = field(default_factory=dict)


def image_processor(size=32):
    return VitlmImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def labelled(family):
    return tiny_config(family, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})


def cases(family: str) -> list[Case]:
    torch.manual_seed(0)
    if family == "vit":
        mae = VitlmViTForMaskedImageModeling(tiny_config("vit_mae", **TINY_DECODER))
        return [
            Case(
                "vit",
                VitlmViTModel(tiny_config("vit")),
                image_processor(),
                "AutoModel",
                VIT_FILES | IMAGE_PROCESSOR_FILES,
                task="image-feature-extraction",
            ),
            Case(
                "vit-classifier",
                VitlmViTForImageClassification(labelled("vit")),
                image_processor(),
                "AutoModelForImageClassification",
                VIT_FILES | IMAGE_PROCESSOR_FILES,
                task="image-classification",
                pipeline_kwargs={"top_k": 3},
            ),
            Case(
                "vit-mae",
                mae,
                image_processor(),
                "AutoModelForMaskedImageModeling",
                VIT_FILES | IMAGE_PROCESSOR_FILES | {"modeling_inpainting.py"},
            ),
        ]
    if family == "hybrid":
        hybrid_files = VIT_FILES | IMAGE_PROCESSOR_FILES | {"modeling_hybrid.py"}
        return [
            Case(
                "hybrid",
                VitlmHybridModel(tiny_config("hybrid")),
                image_processor(),
                "AutoModel",
                hybrid_files,
                task="image-feature-extraction",
            ),
            Case(
                "hybrid-classifier",
                VitlmHybridForImageClassification(labelled("hybrid")),
                image_processor(),
                "AutoModelForImageClassification",
                hybrid_files,
                task="image-classification",
                pipeline_kwargs={"top_k": 3},
            ),
        ]
    tokenizer = clip_tokenizer()
    dual = VitlmDualEncoderModel(tiny_clip_config()).eval()
    zero_shot = VitlmDualEncoderForImageClassification.from_dual_encoder(dual, tokenizer, LABELS)
    squash = VitlmImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    return [
        Case(
            "dual",
            dual,
            VitlmDualEncoderProcessor(image_processor(), tokenizer),
            "AutoModelForZeroShotImageClassification",
            DUAL_FILES | PROCESSOR_FILES | VITLM_TOKENIZER,
            task="zero-shot-image-classification",
            pipeline_kwargs={"candidate_labels": PROMPTS},
        ),
        Case(
            "zero-shot-classifier",
            zero_shot,
            image_processor(),
            "AutoModelForImageClassification",
            DUAL_FILES | IMAGE_PROCESSOR_FILES,
            inputs={"pixel_values": pixel_batch(zero_shot.config)},
            task="image-classification",
            pipeline_kwargs={"top_k": 3},
        ),
        Case(
            "detector",
            VitlmDualEncoderForObjectDetection(tiny_clip_config()),
            VitlmDualEncoderProcessor(squash, tokenizer),
            "AutoModelForZeroShotObjectDetection",
            DUAL_FILES | PROCESSOR_FILES | VITLM_TOKENIZER | {"modeling_detection.py", "loss_detection.py"},
            task="zero-shot-object-detection",
            pipeline_kwargs={"candidate_labels": PROMPTS, "threshold": 0.0},
        ),
    ]


LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    remote = sys.argv[1] == "remote"
    if remote:
        sys.modules["vitlm"] = None  # the repos must carry all the code they run
    else:
        import vitlm  # registers the Auto classes
    import torch, transformers
    from PIL import Image
    from safetensors.torch import load_file, save_file

    cases, image = json.load(open(sys.argv[2])), Image.open(sys.argv[3])
    tensors, pipelines = {}, {}
    for case in cases:
        repo = case["repo"]
        model = getattr(transformers, case["auto_class"]).from_pretrained(repo, trust_remote_code=remote).eval()
        package = "transformers_modules" if remote else "vitlm"
        assert type(model).__module__.startswith(package), type(model).__module__
        with torch.no_grad():
            outputs = model(**load_file(case["inputs"]))
        names = ("logits", "logits_per_image", "last_hidden_state")
        tensors[repo] = next(getattr(outputs, n) for n in names if getattr(outputs, n, None) is not None)
        processor_class = transformers.AutoProcessor if case["text"] else transformers.AutoImageProcessor
        processor = processor_class.from_pretrained(repo, trust_remote_code=remote)
        text = {"text": case["text"], "padding": True} if case["text"] else {}
        encoded = processor(images=image, **text, return_tensors="pt")
        tensors.update({f"{repo}:{name}": value for name, value in encoded.items()})
        if case["task"]:
            run = transformers.pipeline(case["task"], model=repo, trust_remote_code=remote)
            pipelines[repo] = run(image, **case["pipeline_kwargs"])
    save_file({name: value.contiguous() for name, value in tensors.items()}, sys.argv[4])
    json.dump(pipelines, open(sys.argv[5], "w"))
    """
)


def run_fresh_processes(tmp_path, cases_file, image_file) -> dict:
    """Run LOAD_SCRIPT with vitlm and, at the same time, as remote code without it, each with an empty cache."""
    processes = {}
    for mode in ("native", "remote"):
        env = {**os.environ, "HF_HOME": str(tmp_path / f"home-{mode}")}
        env.pop("PYTHONPATH", None)
        outputs = [str(tmp_path / f"{mode}.safetensors"), str(tmp_path / f"{mode}.json")]
        command = [sys.executable, "-c", LOAD_SCRIPT, mode, str(cases_file), str(image_file), *outputs]
        # no stdin: a pipeline may ask whether to run a repo's code (transformers probes for a video processor) and
        # must take "no" at once rather than wait for an answer
        processes[mode] = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    results = {}
    for mode, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{mode}: {stderr.decode()[-3000:]}"
        results[mode] = (
            load_file(tmp_path / f"{mode}.safetensors"),
            json.loads((tmp_path / f"{mode}.json").read_text()),
        )
    return results


def encode(processor, image, text) -> dict:
    return processor(images=image, **({"text": text, "padding": True} if text else {}), return_tensors="pt")


@pytest.mark.parametrize("family", ["vit", "hybrid", "dual"])
def test_pushed_repos_load_identically_in_fresh_processes(hub, tmp_path, family):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    image.save(tmp_path / "image.png")
    described, expected_tensors, expected_pipelines = [], {}, {}
    for case in cases(family):
        repo = f"{USER}/{case.name}"
        model = case.model.eval()
        model.push_to_hub(repo, private=True)
        case.processor.push_to_hub(repo)
        assert_published(repo, case.files)
        info = HfApi().model_info(repo)  # the card's metadata, as the Hub reads it
        assert (info.library_name, info.pipeline_tag) == ("vitlm", PIPELINE_TAGS[case.name]), repo
        assert {"vitlm", model.config.model_type} <= set(info.tags), (repo, info.tags)
        assert info.card_data.license is None, repo  # vitlm claims no license for the user's weights

        inputs = case.inputs or model_inputs(model)
        save_file(inputs, tmp_path / f"{case.name}.safetensors")
        text = PROMPTS if hasattr(case.processor, "tokenizer") else None
        with torch.no_grad():
            expected_tensors[repo] = main_output(model(**inputs))
        expected_tensors.update({f"{repo}:{k}": v for k, v in encode(case.processor, image, text).items()})
        if case.task:  # the reference: the same pipeline on a local copy of what was pushed
            model.save_pretrained(tmp_path / case.name)
            case.processor.save_pretrained(tmp_path / case.name)
            local = pipeline(case.task, model=str(tmp_path / case.name))
            expected_pipelines[repo] = json.loads(json.dumps(local(image, **case.pipeline_kwargs)))
        described.append(
            {
                "repo": repo,
                "auto_class": case.auto_class,
                "inputs": str(tmp_path / f"{case.name}.safetensors"),
                "text": text,
                "task": case.task,
                "pipeline_kwargs": case.pipeline_kwargs,
            }
        )
    # each model's weights went up as one LFS object, PUT over plain HTTP: no Xet
    assert sum(method == "PUT" for method, _, _ in hub.requests) == len(described)
    (tmp_path / "cases.json").write_text(json.dumps(described))

    results = run_fresh_processes(tmp_path, tmp_path / "cases.json", tmp_path / "image.png")
    for mode, (tensors, pipelines) in results.items():
        assert tensors.keys() == expected_tensors.keys(), mode
        for name, value in expected_tensors.items():
            assert torch.equal(tensors[name], value), (mode, name)
        assert pipelines == expected_pipelines, mode
