"""Runs `vitlm.training.run.train` for a self-supervised task (DINO, BEiT) on a tiny shapes world in however many
processes launched it (`python`, `torchrun`), at a global batch of 8 split evenly over the processes.

Usage: `ssl_distributed_script.py TASK OUTPUT_DIR`. Rank 0 writes OUTPUT_DIR (the saved model) and
OUTPUT_DIR/results.json (world size, per-step training losses).

The multi-crop and masking draws are keyed by (seed, epoch, example index), the same whichever process handles an
example; the initialization is seeded before the model is built; nothing else draws random numbers (no dropout).
"""

import json
import os
import sys
from pathlib import Path

from vitlm.training.run import train

GLOBAL_BATCH = 8
MAX_STEPS = 4  # 16 training images at 8 a step: the run crosses an epoch boundary (a new shuffle)


def main(task, output_dir) -> None:
    output_dir = Path(output_dir)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    trainer = train(
        task,
        "vit-tiny-test",
        "shapes",
        output_dir,
        max_steps=MAX_STEPS,
        batch_size=GLOBAL_BATCH // world_size,  # per device
        lr=2e-3,
        seed=5,
        shapes_train=16,
        shapes_test=8,
        shapes_size=32,
        logging_steps=1,
        save_checkpoints=False,
        dataloader_num_workers=0,
        **({"ddp_backend": "gloo"} if world_size > 1 else {}),
    )
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        (output_dir / "results.json").write_text(json.dumps({"world_size": trainer.args.world_size, "losses": losses}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
