"""A pushed model's card names vitlm as its library, in the same commit as the weights, and keeps what the repo's
own card says."""

from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download

from tests.conftest import tiny_config
from tests.hub.conftest import USER
from vitlm import VitlmViTForImageClassification, VitlmViTModel

OWN_CARD = """---
license: mit
tags:
- shapes
datasets:
- alice/shapes
---

# My shapes classifier

Fine-tuned on my own shapes.
"""


def commits(hub) -> int:
    return sum(method == "POST" and path.endswith("/commit/main") for method, path, _ in hub.requests)


def test_a_push_keeps_the_repos_own_card_and_adds_vitlms_metadata(hub):
    repo, api = f"{USER}/own-card", HfApi()
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=OWN_CARD.encode(), path_in_repo="README.md", repo_id=repo)
    commits_before = commits(hub)
    VitlmViTForImageClassification(tiny_config("vit", num_labels=3)).push_to_hub(repo, tags=["finetuned"])

    assert commits(hub) == commits_before + 1  # the card goes up with the weights
    readme = Path(hf_hub_download(repo, "README.md")).read_text()
    assert readme.endswith(OWN_CARD.split("---\n", 2)[2])  # the text as written
    info = api.model_info(repo)
    assert (info.library_name, info.pipeline_tag) == ("vitlm", "image-classification")
    assert info.tags == ["shapes", "finetuned", "vitlm", "vitlm_vit"]
    assert (info.card_data.license, info.card_data.datasets) == ("mit", ["alice/shapes"])


def test_save_pretrained_with_push_to_hub_writes_the_same_card(hub, tmp_path):
    repo = f"{USER}/saved-and-pushed"
    VitlmViTModel(tiny_config("vit")).save_pretrained(tmp_path / "vit", push_to_hub=True, repo_id=repo)
    info = HfApi().model_info(repo)
    assert (info.library_name, info.pipeline_tag) == ("vitlm", "image-feature-extraction")
    assert (tmp_path / "vit" / "README.md").read_text() == Path(hf_hub_download(repo, "README.md")).read_text()
