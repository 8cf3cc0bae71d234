"""A run killed right after a mid-epoch checkpoint and resumed with `--resume` ends with the weights of an
uninterrupted run, with random crops / flips / colour jitter, mixup / cutmix, dropout and stochastic depth all on.

Resuming mid-epoch, Trainer draws the first resumed batch before it restores the RNG state (to keep the shuffle
order), so this only holds because the data pipeline's draws are a pure function of (data seed, epoch, example index)
and never touch the global generator, which is left to the model's dropout."""

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from vitlm.data.shapes import generate
from vitlm.models import VitlmImageProcessor
from vitlm.training.collators import ClassificationCollator
from vitlm.training.run import train
from vitlm.training.transforms import classification_transform, contrastive_transform, with_example_index


class Killed(Exception):
    pass


class KillAfterCheckpoint(TrainerCallback):
    """Ends the process's training as soon as the checkpoint of `step` is written, as a kill would: nothing after it
    (more steps, final evaluation, final save) runs."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed


class RecordSteps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def run(output_dir, resume=False, callbacks=None):
    # 24 examples in batches of 8: 3 steps an epoch; checkpoints every 2 steps, so step 4 is one step into epoch 1
    return train(
        "classify",
        "vit-tiny-test",
        "shapes",
        output_dir,
        max_steps=7,
        batch_size=8,
        lr=2e-3,
        seed=3,
        shapes_train=24,
        shapes_test=8,
        shapes_size=32,
        eval_steps=2,
        logging_steps=1,
        mixup_alpha=0.4,
        cutmix_alpha=1.0,
        config_overrides="hidden_dropout_prob=0.1,attention_probs_dropout_prob=0.1,drop_path_rate=0.2",
        resume=resume,
        callbacks=callbacks,
    )


def test_run_resumed_mid_epoch_equals_uninterrupted_run(tmp_path):
    run(tmp_path / "straight")
    with pytest.raises(Killed):
        run(tmp_path / "resumed", callbacks=[KillAfterCheckpoint(step=4)])
    assert not (tmp_path / "resumed" / "model.safetensors").exists()  # the kill left only checkpoints behind
    at_kill = load_file(tmp_path / "resumed" / "checkpoint-4" / "model.safetensors")
    steps = RecordSteps()
    resumed = run(tmp_path / "resumed", resume=True, callbacks=[steps])
    assert steps.steps == [5, 6, 7]  # resumed from step 4, one step into epoch 1
    # the transform and the mixing collator were told the seed and epoch: step 7 is in epoch 2
    transform = resumed.train_dataset.format["format_kwargs"]["transform"]
    assert transform.epoch_seed.state.tolist() == [3, 2]
    assert resumed.train_data_collator.epoch_seed.state.tolist() == [3, 2]

    straight = load_file(tmp_path / "straight" / "model.safetensors")
    again = load_file(tmp_path / "resumed" / "model.safetensors")
    assert straight.keys() == again.keys()
    assert any((at_kill[k] - again[k]).abs().max() > 1e-4 for k in again)  # training went on after the kill
    for name in straight:
        torch.testing.assert_close(again[name], straight[name], rtol=0, atol=1e-6)


def test_augmentations_are_a_function_of_seed_epoch_and_index():
    """The same pixels whatever the batch order, the loader's worker processes (persistent ones included) or the
    global generator; new ones every epoch."""
    processor = VitlmImageProcessor(size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16})
    dataset = with_example_index(generate(6, seed=0, split="train", image_size=32).select_columns(["image", "label"]))
    transform = classification_transform(processor, train=True)
    collator = ClassificationCollator(num_labels=dataset.features["label"].num_classes, mixup_alpha=1.0)
    dataset = dataset.with_transform(transform)

    def epoch_batches(loader, epoch):
        transform.set_epoch(epoch, seed=5)
        collator.set_epoch(epoch, seed=5)
        return [batch for batch in loader]

    loader = DataLoader(dataset, batch_size=3, collate_fn=collator)
    torch.manual_seed(0)
    first = epoch_batches(loader, 0)
    torch.manual_seed(1)  # the global generator does not matter
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(first, epoch_batches(loader, 0)))
    second = epoch_batches(loader, 1)
    assert not torch.allclose(first[0]["pixel_values"], second[0]["pixel_values"])

    # persistent workers built in epoch 0 still see the later epochs' set_epoch
    workers = DataLoader(dataset, batch_size=3, collate_fn=collator, num_workers=2, persistent_workers=True)
    for epoch, expected in ((0, first), (1, second)):
        for a, b in zip(expected, epoch_batches(workers, epoch), strict=True):
            torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=0)
            torch.testing.assert_close(a["labels"], b["labels"], rtol=0, atol=0)

    # per example, not per position: examples 5 and 3 alone get the pixels they got among examples 3..5
    alone = dataset[[5, 3]]["pixel_values"]
    together = dataset[3:6]["pixel_values"]
    torch.testing.assert_close(alone[0], together[2], rtol=0, atol=0)
    torch.testing.assert_close(alone[1], together[0], rtol=0, atol=0)
    assert not torch.allclose(together[0], together[1])


def test_caption_draws_follow_the_weights_and_replay_per_example():
    processor = VitlmImageProcessor(size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16})
    data = with_example_index(generate(40, seed=0, split="train", image_size=32).select_columns(["image", "captions"]))

    def drawn(weights, epoch=0):
        transform = contrastive_transform(processor, True, caption_column="captions", caption_weights=weights)
        transform.set_epoch(epoch, seed=5)
        return data.with_transform(transform)[:]["caption"]

    variants = [set(data["captions"][i]) for i in range(len(data))]
    shape_only = [captions[1] for captions in data["captions"]]
    assert drawn([0, 1, 0]) == shape_only
    assert drawn([0, 2.5, 0], epoch=3) == shape_only  # weights need not sum to 1
    uniform = drawn(None)
    assert all(caption in options for caption, options in zip(uniform, variants))
    assert len({captions.index(caption) for caption, captions in zip(uniform, data["captions"])}) == 3
    assert drawn(None) == uniform  # a function of (seed, epoch, index)
    mixed = drawn([1, 0, 1])
    assert {captions.index(caption) for caption, captions in zip(mixed, data["captions"])} == {0, 2}


@pytest.mark.parametrize(
    "weights, message",
    [
        ([0, 0, 0], "not all zero"),
        ([1, -1, 1], "non-negative"),
        ([1, float("nan"), 1], "finite"),
        ([1, 1], "2 caption"),
    ],
)
def test_bad_caption_weights_are_named(weights, message):
    processor = VitlmImageProcessor(size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16})
    data = generate(2, seed=0, split="train", image_size=32).select_columns(["image", "captions"])
    with pytest.raises(ValueError, match=message):
        transform = contrastive_transform(processor, True, caption_column="captions", caption_weights=weights)
        data.with_transform(transform)[:]


def test_caption_weights_need_several_captions_per_example():
    processor = VitlmImageProcessor(size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16})
    data = generate(2, seed=0, split="train", image_size=32).select_columns(["image", "caption"])
    transform = contrastive_transform(processor, True, caption_column="caption", caption_weights=[1])
    with pytest.raises(ValueError, match="need a list of captions per example"):
        data.with_transform(transform)[:]
