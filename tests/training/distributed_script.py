"""Trains the tiny ViT classifier on a tiny shapes world with `build_trainer`, in however many processes launched it
(`python`, `torchrun`, `accelerate launch`), at a global batch of 8 split evenly over the processes.

Usage: `distributed_script.py OUTPUT_DIR`. Rank 0 writes OUTPUT_DIR/model.safetensors (the final weights) and
OUTPUT_DIR/results.json (world size, per-step training losses, final evaluation metrics).

Everything random is the same in every process: the initialization (seeded before the model is built, and DDP
broadcasts rank 0's weights anyway), the shuffle (accelerate's seedable sampler, seeded by Trainer) and nothing else
draws random numbers: no augmentation (evaluation transforms on the training set), no dropout, no mixup.
"""

import json
import os
import sys
from pathlib import Path

from accelerate import PartialState
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
from transformers.trainer_utils import set_seed

import vitlm  # noqa: F401  (registers the Auto classes)
from vitlm.data.shapes import CATEGORIES, generate
from vitlm.presets import preset_path
from vitlm.training.trainer import build_trainer, training_arguments
from vitlm.training.transforms import classification_transform

GLOBAL_BATCH = 8
SEED = 5
MAX_STEPS = 5  # 24 training images at 8 a step: the run crosses an epoch boundary (a new shuffle)


def build_model():
    """The seeded initialization every run starts from."""
    set_seed(SEED)
    source = preset_path("vit-tiny-test")
    config = AutoConfig.from_pretrained(source, num_labels=len(CATEGORIES), hidden_dropout_prob=0.0)
    return AutoModelForImageClassification.from_config(config)


def main(output_dir) -> None:
    output_dir = Path(output_dir)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    source = preset_path("vit-tiny-test")
    processor = AutoImageProcessor.from_pretrained(source)
    train_set = generate(24, seed=0, split="train", image_size=32)
    eval_set = generate(8, seed=1, split="test", image_size=32)
    class_names = train_set.features["label"].names
    # evaluation transforms for training too: augmentation draws from each process's own generator, so two
    # processes would crop differently from one process handling the same samples
    transform = classification_transform(processor, train=False)
    train_set, eval_set = train_set.with_transform(transform), eval_set.with_transform(transform)

    model = build_model()
    args = training_arguments(
        output_dir,
        max_steps=MAX_STEPS,
        batch_size=GLOBAL_BATCH // world_size,  # per device
        lr=2e-3,
        seed=SEED,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        ddp_backend="gloo" if world_size > 1 else None,
        dataloader_num_workers=0,
    )
    trainer = build_trainer("classify", model, train_set, eval_set, processor, args, class_names=class_names)
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(output_dir)  # every process calls it, rank 0 writes
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        results = {"world_size": trainer.args.world_size, "losses": losses, "metrics": metrics}
        (output_dir / "results.json").write_text(json.dumps(results))
    # a process exiting with gloo's threads alive can abort (SIGABRT) and fail the launch: what `vitlm train` does
    PartialState().destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
