"""A bad token, a missing repo, revision or file: users get an error naming the problem, from the Python API and in
one line from the CLI, and the local Hub refuses what the Hub refuses."""

import re

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError
from transformers import AutoImageProcessor, AutoModel, ViTConfig, ViTImageProcessor, ViTModel

from tests.conftest import tiny_config
from tests.hub.conftest import STRANGER_TOKEN, USER
from vitlm import VitlmViTModel
from vitlm.cli import main


@pytest.fixture
def private_repo(hub):
    repo = f"{USER}/private-vit"
    VitlmViTModel(tiny_config("vit")).push_to_hub(repo, private=True)  # weights and config, no processor
    return repo


def test_python_api_errors_name_the_problem(private_repo):
    with pytest.raises(OSError, match=f"{USER}/missing is not a local folder"):
        AutoModel.from_pretrained(f"{USER}/missing")
    with pytest.raises(OSError, match=f"(?s){private_repo} is not a local folder.*token"):
        AutoModel.from_pretrained(private_repo, token=False)  # anonymous: a private repo looks missing
    with pytest.raises(OSError, match="nope is not a valid git identifier"):
        AutoModel.from_pretrained(private_repo, revision="nope")
    with pytest.raises(OSError, match="preprocessor_config.json"):
        AutoImageProcessor.from_pretrained(private_repo)
    with pytest.raises(RemoteEntryNotFoundError, match="nope.txt"):
        hf_hub_download(private_repo, "nope.txt")

    model = VitlmViTModel(tiny_config("vit"))
    with pytest.raises(HfHubHTTPError, match="Invalid credentials in Authorization header"):
        model.push_to_hub(private_repo, token="hf_not_a_token")
    with pytest.raises(HfHubHTTPError, match="403 Forbidden: You don't have the rights"):
        model.push_to_hub(private_repo, token=STRANGER_TOKEN)


def test_the_local_hub_refuses_like_the_hub(private_repo):
    with pytest.raises(RepositoryNotFoundError) as anonymous:
        hf_hub_download(private_repo, "config.json", token=False)
    with pytest.raises(RepositoryNotFoundError) as stranger:
        hf_hub_download(private_repo, "config.json", token=STRANGER_TOKEN)
    assert (anonymous.value.response.status_code, stranger.value.response.status_code) == (401, 404)
    assert hf_hub_download(private_repo, "config.json")  # the owner's token


def error_line(capsys, argv) -> str:
    """The command's one error line (progress bars aside), checked free of HTTP internals."""
    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vitlm ")]
    assert len(lines) == 1 and not re.search("client error|for url|status/", lines[0], re.IGNORECASE), lines
    return lines[0]


def test_cli_errors_are_one_line(hub, tmp_path, capsys, monkeypatch):
    source = f"{USER}/tiny-vit"  # a transformers model, first without its image processor
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=32)).push_to_hub(source)

    line = error_line(capsys, ["convert", f"hf:{USER}/missing", str(tmp_path / "a")])
    assert line == f"vitlm convert: error: no repository {USER}/missing on the Hub, or your token cannot read it " + (
        "(check HF_TOKEN or `hf auth login`)"
    )
    assert "preprocessor_config.json" in error_line(capsys, ["convert", f"hf:{source}", str(tmp_path / "b")])
    train = ["train", "classify", "--model", "vit-tiny-test", "--output-dir", str(tmp_path / "trained")]
    line = error_line(capsys, [*train, "--dataset", f"{USER}/missing"])
    assert f"'{USER}/missing' doesn't exist on the Hub" in line

    ViTImageProcessor(size={"height": 32, "width": 32}).push_to_hub(source)
    monkeypatch.setenv("HF_TOKEN", STRANGER_TOKEN)  # may read alice's public repos, not write to her namespace
    line = error_line(capsys, ["convert", f"hf:{source}", str(tmp_path / "c"), "--push-to-hub", f"{USER}/vit"])
    assert line == (
        "vitlm convert: error: the Hub refused your token (403: You don't have the rights to create a repo under "
        "'alice'); check HF_TOKEN or `hf auth login`"
    )
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_token")
    line = error_line(capsys, ["convert", f"hf:{source}", str(tmp_path / "d")])
    assert line == (
        "vitlm convert: error: the Hub refused your token (401: Invalid credentials in Authorization header); "
        "check HF_TOKEN or `hf auth login`"
    )


def test_damaged_and_pickled_hub_weights_are_refused_by_name(hub, tmp_path):
    """A Hub repo whose weights are truncated, or only pickled, is refused in one error naming the repo; pickles are
    never unpickled (vitlm reads safetensors only), also when the Hub serves them."""
    api = HfApi()
    model = VitlmViTModel(tiny_config("vit"))
    model.save_pretrained(tmp_path / "model")
    weights = (tmp_path / "model" / "model.safetensors").read_bytes()

    truncated = f"{USER}/truncated-vit"
    model.push_to_hub(truncated)
    api.upload_file(path_or_fileobj=weights[: len(weights) // 2], path_in_repo="model.safetensors", repo_id=truncated)
    with pytest.raises(OSError, match=f"the weights of {truncated} cannot be read .*truncated or damaged"):
        AutoModel.from_pretrained(truncated)

    pickled = f"{USER}/pickled-vit"
    api.create_repo(pickled)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    api.upload_file(path_or_fileobj=tmp_path / "model" / "config.json", path_in_repo="config.json", repo_id=pickled)
    api.upload_file(path_or_fileobj=tmp_path / "pytorch_model.bin", path_in_repo="pytorch_model.bin", repo_id=pickled)
    with pytest.raises(
        OSError, match=f"{pickled} has no model.safetensors: vitlm reads weights from safetensors files"
    ):
        AutoModel.from_pretrained(pickled)
