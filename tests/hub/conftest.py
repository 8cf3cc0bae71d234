"""A local Hub per test, and a client environment pointing at it: a fresh HF_HOME, HF_ENDPOINT and HF_TOKEN."""

import importlib.util
import sys
import tempfile
from pathlib import Path

import datasets.config
import huggingface_hub.constants
import huggingface_hub.hf_api
import pytest
import transformers.utils.hub
from huggingface_hub import HfApi, hf_hub_download

from tests.hub.local_hub import LocalHub

USER, TOKEN = "alice", "hf_alice_token"
STRANGER, STRANGER_TOKEN = "bob", "hf_bob_token"  # a valid user who does not own alice's repos
# folders of this machine that must not leak into a pushed file
LOCAL_ROOTS = {tempfile.gettempdir(), str(Path.home()), sys.prefix, str(Path(__file__).parents[2])}
# what a pushed vitlm repo holds: safetensors weights, JSON configs and the code for trust_remote_code, nothing else
MODEL_FILES = {
    ".gitattributes",
    "README.md",
    "config.json",
    "model.safetensors",
    "configuration_vitlm.py",
    "layers.py",
}
VIT_FILES = MODEL_FILES | {"modeling_vit.py"}
DUAL_FILES = VIT_FILES | {"modeling_hybrid.py", "modeling_pit.py", "modeling_swin.py", "modeling_dual_encoder.py"}
IMAGE_PROCESSOR_FILES = {
    "preprocessor_config.json",
    "image_processing_vitlm.py",
    "box_utils.py",
    "inpainting_utils.py",
}
# a dual encoder's processor: processor_config.json holds the image processor's settings too
PROCESSOR_FILES = IMAGE_PROCESSOR_FILES - {"preprocessor_config.json"} | {
    "processor_config.json",
    "processing_vitlm.py",
    "tokenizer.json",
    "tokenizer_config.json",
}
CLEARED = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE", "HF_DATASETS_CACHE")


def refresh_settings(module, monkeypatch):
    """Recompute a module's import-time settings (its UPPER_CASE names) from the environment as it is now.

    huggingface_hub.constants and datasets.config read HF_ENDPOINT, HF_HOME, HF_HUB_DISABLE_XET, ... once, when the
    test session imports them; a second copy of the module, executed now, gives the values a process started with
    this environment would have. Subprocesses need none of this: they inherit the environment."""
    spec = importlib.util.spec_from_file_location(f"{module.__name__}_refreshed", module.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    for name, value in vars(fresh).items():
        if name.isupper() and getattr(module, name, None) != value:
            monkeypatch.setattr(module, name, value)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running `LocalHub` (alice's and bob's tokens); the process is alice, with HF_HOME under tmp_path."""
    with LocalHub(tmp_path / "hub-storage", {TOKEN: USER, STRANGER_TOKEN: STRANGER}) as server:
        for name in CLEARED:
            monkeypatch.delenv(name, raising=False)
        environment = {
            "HF_ENDPOINT": server.url,
            "HF_TOKEN": TOKEN,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_DISABLE_XET": "1",  # see local_hub's docstring: the client would otherwise upload through Xet
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        refresh_settings(huggingface_hub.constants, monkeypatch)
        refresh_settings(datasets.config, monkeypatch)
        # clients created at import time keep the endpoint they were created with
        monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", server.url)
        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
        yield server


def assert_published(repo: str, expected_files: set[str], repo_type: str = "model"):
    """The repo holds exactly `expected_files` (so no pickles or stray files), and no JSON file names a local path."""
    files = set(HfApi().list_repo_files(repo, repo_type=repo_type))
    assert files == expected_files, (repo, {"unexpected": files - expected_files, "missing": expected_files - files})
    for name in sorted(f for f in files if f.endswith(".json")):
        text = Path(hf_hub_download(repo, name, repo_type=repo_type)).read_text()
        leaked = [root for root in LOCAL_ROOTS if root.rstrip("/") + "/" in text]
        assert not leaked, f"{repo}/{name} names local paths under {leaked}"
