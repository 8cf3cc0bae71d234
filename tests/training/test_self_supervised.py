"""Self-supervised pretraining (`vitlm train dino`, `vitlm train beit`): what the recipes compute, that they save an
ordinary vitlm model (and BEiT its visual tokenizer), that a killed run resumes to the weights of an uninterrupted
one, and that two processes train as one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from tests.training.test_distributed import free_port
from tests.training.test_resume import KillAfterCheckpoint, Killed, RecordSteps
from vitlm import VitlmViTModel
from vitlm.presets import load_preset_config
from vitlm.training.collators import BlockMaskingCollator
from vitlm.training.run import train
from vitlm.training.self_supervised import (
    BeitPretraining,
    DinoPretraining,
    DinoSettings,
    KMeansVisualTokenizer,
    normalized_patches,
)

SCRIPT = Path(__file__).with_name("ssl_distributed_script.py")


def tiny_backbone(seed=0):
    torch.manual_seed(seed)
    return VitlmViTModel(load_preset_config("vit-tiny-test")).eval()


def test_dino_loss_is_the_cross_entropy_of_every_other_view():
    """The loss by hand: teacher softmax((t - c) / 0.04) of each global crop against the student's log-softmax(s /
    0.1) of every other crop, averaged over pairs and images; training moves the center towards the teacher."""
    settings = DinoSettings(out_dim=16, hidden_dim=8, bottleneck_dim=4, num_local_crops=2)
    model = DinoPretraining(tiny_backbone(), settings).eval()
    model.center.normal_()
    center = model.center.clone()
    generator = torch.Generator().manual_seed(0)
    global_crops, local_crops = torch.randn(3, 2, 3, 32, 32, generator=generator), torch.randn(3, 2, 3, 16, 16)
    with torch.no_grad():
        loss = model(global_crops, local_crops).loss
        teacher = model.teacher_head(model.teacher(global_crops.flatten(0, 1)).pooler_output).view(3, 2, -1)
        student_global = model.student_head(model.student(global_crops.flatten(0, 1)).pooler_output).view(3, 2, -1)
        local = model.student(local_crops.flatten(0, 1), interpolate_pos_encoding=True).pooler_output
        student = torch.cat([student_global, model.student_head(local).view(3, 2, -1)], dim=1)
    terms = []
    for t in range(2):
        for s in range(4):
            if s != t:
                target = torch.softmax((teacher[:, t] - center) / 0.04, dim=-1)
                terms.append(-(target * torch.log_softmax(student[:, s] / 0.1, dim=-1)).sum(-1).mean())
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-6)
    assert torch.equal(model.center, center)  # evaluation leaves the center alone
    model.train()
    model(global_crops, local_crops)
    expected = 0.9 * center + 0.1 * teacher.flatten(0, 1).mean(0)
    assert torch.allclose(model.center, expected, atol=1e-6)


def test_the_teacher_follows_the_student_by_moving_average():
    model = DinoPretraining(tiny_backbone(), DinoSettings(out_dim=16, hidden_dim=8, bottleneck_dim=4))
    assert not any(p.requires_grad for p in model.teacher.parameters())
    with torch.no_grad():
        for parameter in model.student.parameters():
            parameter.add_(1.0)
    before = [p.clone() for p in model.teacher.parameters()]
    model.update_teacher(0.75)
    for old, new, student in zip(before, model.teacher.parameters(), model.student.parameters()):
        assert torch.allclose(new, 0.75 * old + 0.25 * student)


def test_the_visual_tokenizer_finds_the_patch_kinds_and_reloads(tmp_path):
    """Images made of two kinds of 8x8 patch (vertical and horizontal stripes, any brightness and contrast): a
    two-word codebook gives every patch of a kind one token, whatever its colour, and reloads from its folder."""
    stripes = torch.zeros(2, 3, 8, 8)
    stripes[0, :, :, ::2] = 1.0
    stripes[1, :, ::2, :] = 1.0
    generator = torch.Generator().manual_seed(0)
    kinds = torch.randint(2, (6, 4, 4), generator=generator)
    scale, shift = torch.rand(6, 4, 4, 1, 1, 1, generator=generator) + 0.5, torch.randn(6, 4, 4, 1, 1, 1)
    patches = stripes[kinds] * scale + shift  # (image, row, column, channel, 8, 8)
    images = patches.permute(0, 3, 1, 4, 2, 5).reshape(6, 3, 32, 32)
    tokenizer = KMeansVisualTokenizer(patch_size=8, num_channels=3, codebook_size=2).fit(images)
    tokens = tokenizer(images)
    assert tokens.shape == (6, 16)
    assert len(set(zip(kinds.flatten().tolist(), tokens.flatten().tolist()))) == 2  # one token per kind
    assert normalized_patches(images, 8).shape == (6, 16, 192)
    tokenizer.save_pretrained(tmp_path)
    assert torch.equal(KMeansVisualTokenizer.from_pretrained(tmp_path)(images), tokens)


def test_block_masks_cover_the_ratio_in_rectangles_and_replay():
    collator = BlockMaskingCollator((8, 8), mask_ratio=0.4)
    collator.set_epoch(1, seed=3)
    examples = [{"pixel_values": torch.zeros(3, 32, 32), "example_index": index} for index in range(4)]
    first, again = collator(examples), collator(examples)
    assert torch.equal(first["bool_masked_pos"], again["bool_masked_pos"])
    assert first["bool_masked_pos"].shape == (4, 64)
    assert (first["bool_masked_pos"].sum(1) >= round(0.4 * 64)).all()
    collator.set_epoch(2)
    assert not torch.equal(collator(examples)["bool_masked_pos"], first["bool_masked_pos"])


def test_beit_loss_predicts_the_tokens_of_the_masked_patches_only():
    """Cross-entropy of the head's logits at the masked patches against the tokenizer's tokens of the unmasked image,
    averaged per image, then over the images (6 and 9 masked patches weigh the same)."""
    config = load_preset_config("vit-tiny-test")
    config.use_mask_token = True
    torch.manual_seed(0)
    backbone = VitlmViTModel(config).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = BeitPretraining(backbone, KMeansVisualTokenizer(8, 3, 5).fit(images)).eval()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :6] = True
    mask[1, 4:13] = True
    with torch.no_grad():
        loss = model(images, mask).loss
        hidden = backbone(images, bool_masked_pos=mask).last_hidden_state[:, 1:]
        unmasked = backbone(images).last_hidden_state[:, 1:]
        tokens = model.tokenizer(images)
    per_image = [
        torch.nn.functional.cross_entropy(model.head(hidden[row][mask[row]]), tokens[row][mask[row]])
        for row in range(2)
    ]
    assert torch.allclose(loss, torch.stack(per_image).mean())
    assert not torch.allclose(hidden[mask], unmasked[mask])  # the mask token replaced those patches
    with pytest.raises(ValueError, match="use_mask_token=True"):
        tiny_backbone()(images, bool_masked_pos=mask)


def run(output_dir, task="dino", resume=False, callbacks=None):
    # 24 examples in batches of 8: 3 steps an epoch; checkpoints every 2 steps, so step 4 is one step into epoch 1
    return train(
        task,
        "vit-tiny-test",
        "shapes",
        output_dir,
        max_steps=6,
        batch_size=8,
        lr=2e-3,
        seed=3,
        shapes_train=24,
        shapes_test=8,
        shapes_size=32,
        eval_steps=2,
        logging_steps=1,
        config_overrides="drop_path_rate=0.2",
        resume=resume,
        callbacks=callbacks,
    )


def resumed_equals_straight(tmp_path, task):
    straight = run(tmp_path / "straight", task)
    with pytest.raises(Killed):
        run(tmp_path / "resumed", task, callbacks=[KillAfterCheckpoint(step=4)])
    steps = RecordSteps()
    run(tmp_path / "resumed", task, resume=True, callbacks=[steps])
    assert steps.steps == [5, 6]
    expected, actual = (load_file(tmp_path / name / "model.safetensors") for name in ("straight", "resumed"))
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name
    return straight


def test_dino_resumed_mid_epoch_equals_uninterrupted_run_and_saves_the_teacher(tmp_path):
    straight = resumed_equals_straight(tmp_path, "dino")
    # the folder holds the teacher's backbone as an ordinary vitlm model, loading through the Auto classes
    saved = AutoModel.from_pretrained(tmp_path / "straight")
    assert type(saved) is VitlmViTModel
    teacher = straight.model.teacher.state_dict()
    assert saved.state_dict().keys() == teacher.keys()
    assert all(torch.equal(saved.state_dict()[name], tensor) for name, tensor in teacher.items())
    # training moved the teacher away from the student it started as, and the loss fell
    assert not torch.equal(
        teacher["encoder.layers.0.mlp.fc1.weight"], tiny_backbone().encoder.layers[0].mlp.fc1.weight
    )
    losses = [entry["loss"] for entry in straight.state.log_history if "loss" in entry]
    assert all(map(torch.isfinite, torch.tensor(losses)))


def launch(launcher, task, output_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launcher, str(SCRIPT), task, str(output_dir)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return load_file(output_dir / "model.safetensors"), json.loads((output_dir / "results.json").read_text())


def test_beit_resumed_mid_epoch_equals_uninterrupted_run_and_saves_backbone_and_tokenizer(tmp_path):
    straight = resumed_equals_straight(tmp_path, "beit")
    saved = AutoModel.from_pretrained(tmp_path / "straight")
    assert type(saved) is VitlmViTModel and saved.config.use_mask_token
    backbone = straight.model.backbone.state_dict()
    assert all(torch.equal(saved.state_dict()[name], tensor) for name, tensor in backbone.items())
    tokenizer = KMeansVisualTokenizer.from_pretrained(tmp_path / "straight" / "visual_tokenizer")
    assert torch.equal(tokenizer.codebook, straight.model.tokenizer.codebook)
    assert tokenizer.codebook.abs().sum() > 0  # fitted


@pytest.mark.parametrize("task", ["dino", "beit"])
def test_torchrun_two_processes_match_one(tmp_path, task):
    reference, reference_results = launch([sys.executable], task, tmp_path / "one")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    weights, results = launch([*launcher, "--master_port", str(free_port())], task, tmp_path / "two")
    assert (reference_results["world_size"], results["world_size"]) == (1, 2)
    assert len(results["losses"]) == 4
    torch.testing.assert_close(results["losses"], reference_results["losses"], rtol=0, atol=1e-5)
    difference = max((weights[name] - reference[name]).abs().max() for name in reference)
    print(f"max abs weight difference, 2 processes vs 1: {difference:.2e}")
    assert weights.keys() == reference.keys() and difference <= 1e-5


def test_beit_refuses_a_tower_without_single_scale_patches(tmp_path):
    with pytest.raises(ValueError, match="BEiT pretraining needs a ViT or hybrid image tower, got a vitlm_pit"):
        train("beit", "pit-tiny-test", "shapes", tmp_path / "out", max_steps=1, shapes_train=8, shapes_test=8)


def test_lora_is_refused_for_pretraining(tmp_path):
    with pytest.raises(ValueError, match="LoRA adapts the model a task trains directly; 'self-distillation'"):
        train("dino", "vit-tiny-test", "shapes", tmp_path / "out", max_steps=1, lora_rank=2)


def test_recipe_settings_are_checked_before_any_data_is_drawn(tmp_path):
    from vitlm.training.self_supervised import BeitSettings

    assert DinoSettings.from_dict({"local_crop_scale": [0.2, 0.5]}).local_crop_scale == (0.2, 0.5)  # JSON's pair
    assert DinoSettings.from_dict({"teacher_temperature": 1}).teacher_temperature == 1  # an int for a float
    refusals = [
        (DinoSettings, {"out_dim": 0}, "recipe setting out_dim must be an integer > 0, got 0"),
        (DinoSettings, {"out_dim": 64.0}, "recipe setting out_dim must be an integer > 0, got 64.0"),
        (DinoSettings, {"center_momentum": True}, "center_momentum must be a number in \\[0, 1\\), got True"),
        (DinoSettings, {"global_crop_scale": (0.6, 0.4)}, "global_crop_scale must be a pair 0 < low <= high"),
        (DinoSettings, {"local_crop_scale": "0.2"}, "local_crop_scale must be a pair"),
        (DinoSettings, {"teacher_temp": 0.04}, "unknown recipe settings \\['teacher_temp'\\]; DinoSettings has"),
        (BeitSettings, {"mask_ratio": 1.0}, "recipe setting mask_ratio must be a number in \\(0, 1\\), got 1.0"),
    ]
    for settings, values, message in refusals:
        with pytest.raises(ValueError, match=message):
            settings.from_dict(values)
    with pytest.raises(ValueError, match="recipe setting codebook_size must be an integer >= 2, got 1"):
        train("beit", "vit-tiny-test", "shapes", tmp_path / "out", recipe_settings="codebook_size=1")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "task, settings, check",
    [
        (
            "dino",
            "out_dim=16,num_local_crops=1,local_crop_scale=[0.2,0.5],teacher_momentum=0.9",
            lambda trainer: (
                trainer.model.student_head.prototypes.shape[0] == 16
                and trainer.model.settings.local_crop_scale == (0.2, 0.5)
                and trainer.train_dataset[0]["local_crops"].shape[0] == 1
            ),
        ),
        (
            "beit",
            {"codebook_size": 8, "mask_ratio": 0.75},
            lambda trainer: (
                trainer.model.tokenizer.codebook.shape[0] == 8
                and trainer.data_collator.mask_ratio == 0.75
                and trainer.model.head.out_features == 8
            ),
        ),
    ],
)
def test_recipe_settings_reach_the_recipe(tmp_path, task, settings, check):
    trainer = train(
        task,
        "vit-tiny-test",
        "shapes",
        tmp_path / "out",
        max_steps=1,
        batch_size=4,
        shapes_train=8,
        shapes_test=4,
        shapes_size=32,
        save_checkpoints=False,
        recipe_settings=settings,
    )
    assert check(trainer)


def test_cli_recipe_settings(tmp_path, capsys):
    from vitlm.cli import main

    shapes = ["--dataset", "shapes", "--shapes-train", "8", "--shapes-test", "4", "--shapes-size", "32"]
    argv = ["train", "dino", "--model", "vit-tiny-test", *shapes, "--max-steps", "1", "--batch-size", "4"]
    assert main([*argv, "--output-dir", str(tmp_path / "bad"), "--recipe-settings", "hue_jitter=0.7"]) == 2
    assert "recipe setting hue_jitter must be a number in [0, 0.5], got 0.7" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    classify = ["train", "classify", *argv[2:], "--output-dir", str(tmp_path / "classify")]
    assert main([*classify, "--recipe-settings", "out_dim=16"]) == 2
    assert "recipe settings (--recipe-settings) apply to self-distillation (DINO) and masked visual-token" in (
        capsys.readouterr().err
    )
    settings = "out_dim=16,num_local_crops=1,global_crop_scale=[0.6,1.0]"
    assert main([*argv, "--output-dir", str(tmp_path / "out"), "--recipe-settings", settings, "--no-checkpoints"]) == 0
    assert type(AutoModel.from_pretrained(tmp_path / "out")) is VitlmViTModel
