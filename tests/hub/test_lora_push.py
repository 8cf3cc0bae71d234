"""LoRA adapters trained from a Hub model push on their own, naming the base by its Hub id, and load back."""

import torch
from huggingface_hub import HfApi

from tests.hub.conftest import PROCESSOR_FILES, USER, assert_published
from tests.training.test_lora import RUN, ZERO_SHOT, dual_inputs
from vitlm.cli import main
from vitlm.training.lora import load_lora


def test_adapters_push_on_their_own_and_load_from_the_hub(hub, tmp_path):
    base_repo, adapter_repo = f"{USER}/shapes-zero-shot", f"{USER}/shapes-zero-shot-lora"
    HfApi().create_repo(base_repo)
    HfApi().upload_folder(repo_id=base_repo, folder_path=ZERO_SHOT)
    out = tmp_path / "adapters"
    argv = [*RUN, "--model", base_repo, "--lora", "2", "--output-dir", str(out), "--push-to-hub", adapter_repo]
    assert main(argv) == 0
    adapter_files = {"adapter_model.safetensors", "adapter_config.json", "config.json", "trainer_state.json"}
    # no model weights, and no JSON file naming a local path
    other_files = {"README.md", "training_curves.png", ".gitattributes", "tokenization_vitlm.py"}
    assert_published(adapter_repo, adapter_files | PROCESSOR_FILES | other_files)
    model = load_lora(adapter_repo, merge=True).eval()
    local = load_lora(out, merge=True).eval()
    inputs = dual_inputs(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits_per_image, local(**inputs).logits_per_image)


def test_adapters_of_a_local_base_are_not_pushed(hub, tmp_path, capsys):
    argv = [*RUN, "--model", str(ZERO_SHOT), "--lora", "2", "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--push-to-hub", f"{USER}/lost"]) == 2
    assert "push the base model and train from its Hub id" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
