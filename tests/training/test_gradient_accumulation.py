"""A stock transformers Trainer accumulates gradients correctly with vitlm models."""

import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from tests.conftest import pixel_batch, tiny_config
from vitlm import VitlmViTForImageClassification


def train_one_step(output_dir, batch_size, accumulation):
    torch.manual_seed(0)
    model = VitlmViTForImageClassification(tiny_config("vit", num_labels=4))
    data = Dataset.from_dict(
        {"pixel_values": pixel_batch(model.config, batch_size=8).numpy(), "labels": [0, 1, 2, 3] * 2}
    )
    args = TrainingArguments(
        output_dir,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        optim="sgd",  # Adam's first step is nearly scale-free: SGD shows a mis-scaled gradient
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data.with_format("torch"))
    assert trainer.model_accepts_loss_kwargs is False
    trainer.train()
    trainer.save_model(output_dir)
    return load_file(f"{output_dir}/model.safetensors")


def test_accumulated_micro_batches_equal_one_large_batch(tmp_path):
    whole = train_one_step(tmp_path / "whole", batch_size=8, accumulation=1)
    accumulated = train_one_step(tmp_path / "accumulated", batch_size=4, accumulation=2)
    for name, weight in whole.items():
        torch.testing.assert_close(accumulated[name], weight, atol=1e-6, rtol=0, msg=name)
