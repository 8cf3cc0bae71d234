"""Each push is a commit users can pin, and what was downloaded once loads again offline."""

import huggingface_hub.constants
import numpy as np
import torch
from huggingface_hub import HfApi
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from tests.conftest import main_output, model_inputs, tiny_config
from tests.hub.conftest import USER, refresh_settings
from vitlm import VitlmImageProcessor, VitlmViTForImageClassification


def pushed_classifier(repo, seed):
    torch.manual_seed(seed)
    model = VitlmViTForImageClassification(tiny_config("vit", num_labels=3)).eval()
    return model, model.push_to_hub(repo).oid


def test_a_pinned_revision_keeps_the_first_weights(hub):
    repo = f"{USER}/vit-revisions"
    first, first_commit = pushed_classifier(repo, seed=0)
    second, second_commit = pushed_classifier(repo, seed=1)
    assert len({first_commit, second_commit}) == 2 and all(len(c) == 40 for c in (first_commit, second_commit))
    assert HfApi().model_info(repo).sha == second_commit

    inputs = model_inputs(first)
    with torch.no_grad():
        expected = {commit: main_output(m(**inputs)) for commit, m in [(first_commit, first), (second_commit, second)]}
        assert not torch.equal(*expected.values())
        for revision, commit in [(first_commit, first_commit), (None, second_commit), ("main", second_commit)]:
            loaded = AutoModelForImageClassification.from_pretrained(repo, revision=revision).eval()
            assert torch.equal(main_output(loaded(**inputs)), expected[commit]), revision


def test_offline_loads_come_from_the_cache_without_a_request(hub, monkeypatch):
    repo = f"{USER}/vit-offline"
    model, _ = pushed_classifier(repo, seed=0)
    VitlmImageProcessor(size=32, crop_size=32).push_to_hub(repo)
    AutoModelForImageClassification.from_pretrained(repo)  # the one download
    AutoImageProcessor.from_pretrained(repo)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refresh_settings(huggingface_hub.constants, monkeypatch)  # as a process started with HF_HUB_OFFLINE=1
    requests_before = len(hub.requests)
    loaded = AutoModelForImageClassification.from_pretrained(repo).eval()
    classifier = pipeline("image-classification", model=repo)
    assert len(hub.requests) == requests_before  # nothing asked of the Hub
    inputs = model_inputs(model)
    with torch.no_grad():
        assert torch.equal(main_output(loaded(**inputs)), main_output(model(**inputs)))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    assert len(classifier(image)) == 3
