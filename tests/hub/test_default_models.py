"""The demo's default models ship as data (no model code in the package), yet once pushed they load with
`trust_remote_code=True` where vitlm is not installed, computing exactly what they compute with vitlm."""

import json
import os
import subprocess
import sys
import textwrap

import PIL.Image
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file

from tests.hub.conftest import USER
from vitlm.demo.app import DETECTION_EXAMPLES
from vitlm.demo.models import DEFAULT_MODELS, TASKS, ModelStore

IMAGE, QUERIES = DETECTION_EXAMPLES[1][0], ["a red circle", "a pink cross", "a blue square"]
# task -> the Auto classes a user of the pushed repo reaches for
AUTO_CLASSES = {
    "zero-shot-image-classification": ("AutoModelForZeroShotImageClassification", "AutoProcessor"),
    "zero-shot-object-detection": ("AutoModelForZeroShotObjectDetection", "AutoProcessor"),
    "masked-image-modeling": ("AutoModelForMaskedImageModeling", "AutoImageProcessor"),
    "image-segmentation": ("AutoModelForSemanticSegmentation", "AutoProcessor"),
}

REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["vitlm"] = None  # the pushed repos must carry all the code they run
    import torch, transformers
    from PIL import Image
    from safetensors.torch import load_file, save_file

    cases, image = json.load(open(sys.argv[1])), Image.open(sys.argv[2])
    tensors = {}
    for case in cases:
        repo, (model_class, processor_class) = case["repo"], case["auto_classes"]
        model = getattr(transformers, model_class).from_pretrained(repo, trust_remote_code=True, dtype=torch.float32)
        processor = getattr(transformers, processor_class).from_pretrained(repo, trust_remote_code=True)
        # every class comes from the repo's code: config, model, processor, its tokenizer and image processor
        parts = [getattr(processor, name, None) for name in ("tokenizer", "image_processor")]
        for loaded in (model.config, model, processor, *filter(None, parts)):
            assert type(loaded).__module__.startswith("transformers_modules"), type(loaded).__module__
        assert type(model).__name__ == case["class_name"], type(model).__name__
        text = {"text": case["text"], "padding": True} if case["text"] else {}
        inputs = dict(processor(images=image, **text, return_tensors="pt"))
        inputs.update(load_file(case["extra_inputs"]))
        with torch.no_grad():
            outputs = model.eval()(**inputs)
        tensors.update({f"{repo}:input:{name}": value for name, value in inputs.items()})
        tensors.update({f"{repo}:{name}": value for name, value in outputs.items() if torch.is_tensor(value)})
    save_file({name: value.clone().contiguous() for name, value in tensors.items()}, sys.argv[3])
    """
)


def test_pushed_default_models_load_without_vitlm(hub, tmp_path):
    store = ModelStore(device="cpu")
    image = PIL.Image.open(IMAGE)
    cases, expected = [], {}
    for task, spec in TASKS.items():
        loaded = store.get(task, "default")  # what the demo runs (in float32), from the package's data files
        repo = f"{USER}/shapes-{task}"
        # pushed as shipped, in float16: both sides then compute in float32 on weights converted at load time (a
        # float32 file is read in place, at an offset whose alignment can change the last bit of a matrix product)
        shipped = spec.model_class.from_pretrained(DEFAULT_MODELS / spec.folder)
        assert shipped.dtype == torch.float16
        shipped.push_to_hub(repo)
        loaded.processor.push_to_hub(repo)
        code = {name for name in HfApi().list_repo_files(repo) if name.endswith(".py")}
        assert {entry.split(".")[0] + ".py" for entry in shipped.config.auto_map.values()} <= code, repo

        text = QUERIES if task != "masked-image-modeling" else None
        encoded = loaded.processor(images=image, **({"text": text, "padding": True} if text else {}))
        inputs = dict(encoded.convert_to_tensors("pt"))
        extra = {}
        if task == "masked-image-modeling":  # which patches are masked: random, the same in both processes
            grid = loaded.model.config.grid_size
            extra["noise"] = torch.rand(1, grid[0] * grid[1], generator=torch.Generator().manual_seed(0))
        save_file(extra, tmp_path / f"{task}.safetensors")
        with torch.no_grad():
            outputs = loaded.model(**inputs, **extra)
        expected.update({f"{repo}:input:{name}": value for name, value in {**inputs, **extra}.items()})
        expected.update({f"{repo}:{name}": value for name, value in outputs.items() if torch.is_tensor(value)})
        cases.append(
            {
                "repo": repo,
                "auto_classes": AUTO_CLASSES[task],
                "class_name": spec.model_class.__name__,
                "text": text,
                "extra_inputs": str(tmp_path / f"{task}.safetensors"),
            }
        )
    (tmp_path / "cases.json").write_text(json.dumps(cases))

    env = {**os.environ, "HF_HOME": str(tmp_path / "fresh-home")}  # an empty cache: everything comes from the Hub
    env.pop("PYTHONPATH", None)
    command = [sys.executable, "-c", REMOTE_SCRIPT, str(tmp_path / "cases.json"), IMAGE, str(tmp_path / "remote.st")]
    # no stdin: transformers may ask whether to run a repo's code, and must take "no" at once rather than wait
    result = subprocess.run(command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = load_file(tmp_path / "remote.st")
    assert remote.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(remote[name], value), name


def json_strings(value):
    if isinstance(value, dict):
        yield from (text for item in value.values() for text in json_strings(item))
    elif isinstance(value, list):
        yield from (text for item in value for text in json_strings(item))
    elif isinstance(value, str):
        yield value


def test_shipped_models_name_no_path_of_the_machine_that_trained_them():
    """A shipped folder is installed anywhere: a path it names (a base model, a data set) must not be an absolute one,
    which on another machine is missing or, worse, something else."""
    for path in DEFAULT_MODELS.rglob("*.json"):
        if path.name in ("tokenizer.json", "vocab.json"):  # vocabularies: "/" is a token
            continue
        absolute = [text for text in json_strings(json.loads(path.read_text())) if os.path.isabs(text)]
        assert not absolute, f"{path} names {absolute}"


def test_shipped_models_fit_their_budget():
    """The wheel carries the default models: together at most 35 MB (the segmentation issue's budget)."""
    total = sum(path.stat().st_size for path in DEFAULT_MODELS.rglob("*") if path.is_file())
    assert total <= 35_000_000, f"the default models take {total / 1e6:.1f} MB"
