"""Trainer set-up for the tasks of `vitlm.training.tasks`: `training_arguments` (the recipe), `build_trainer`
(collator, metrics, loss, optimizer) and `save_for_hub` (model + processor + loss curves + model card, reloadable
through the Auto classes).

Everything distributed (DDP through `torchrun` / `accelerate launch`, mixed precision, gradient accumulation,
checkpoint and RNG-state resumption) is Trainer's own; nothing here touches process groups, and the one device choice
is the CPU for several processes on a machine without an accelerator (`cpu_processes`).
"""

import os
from pathlib import Path

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.modeling_layers import GradientCheckpointingLayer

from ..models.modeling_dual_encoder import default_templates
from .collators import twin_contrastive_loss
from .tasks import get_task


def bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def cpu_processes() -> bool:
    """Whether this is one of several processes (`torchrun`, `accelerate launch`) on a machine without an
    accelerator. Such processes need `use_cpu=True`: without it accelerate finds no distributed backend, and every
    process trains alone on the whole dataset as rank 0, all writing the same folder."""
    return int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.accelerator.is_available()


def training_arguments(
    output_dir,
    epochs: float = 3,
    batch_size: int = 32,
    lr: float = 5e-4,
    weight_decay: float = 0.05,
    warmup_ratio: float = 0.1,
    max_steps: int = -1,
    eval_strategy: str = "epoch",
    eval_steps: int | None = None,
    save_total_limit: int | None = 2,
    gradient_checkpointing: bool = False,
    seed: int = 42,
    data_seed: int | None = None,
    bf16: bool | None = None,
    **kwargs,
) -> TrainingArguments:
    """TrainingArguments for a ViT recipe: AdamW, linear warm-up then cosine decay, decoupled weight decay, bf16 when
    the hardware has it, evaluation and checkpoints at the same cadence (`"epoch"` or `"steps"` every `eval_steps`).
    `remove_unused_columns=False` because the transforms produce the model inputs lazily; `kwargs` go to
    TrainingArguments unchanged."""
    every = {"eval_steps": eval_steps, "save_steps": eval_steps} if eval_strategy == "steps" else {}
    values = dict(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_ratio,  # a float below 1 is a fraction of the total steps (transformers 5)
        lr_scheduler_type="cosine",
        eval_strategy=eval_strategy,
        save_strategy=eval_strategy,
        logging_strategy="steps",
        logging_steps=10,
        save_total_limit=save_total_limit,
        activation_checkpointing=gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        dataloader_pin_memory=torch.cuda.is_available(),
        bf16=bf16_available() if bf16 is None else bf16,
        use_cpu=cpu_processes(),  # DDP over gloo
        seed=seed,
        data_seed=data_seed,
        remove_unused_columns=False,
        report_to="none",
        **every,
    )
    values.update(kwargs)
    return TrainingArguments(**values)


def parameter_depths(model) -> tuple[dict[str, int], int]:
    """The depth of every parameter for layer-wise LR decay, and the image tower's number of blocks `n`.

    Blocks are counted in module order within each tower (the PreTrainedModel nearest above them), a hierarchical
    tower's stages as one sequence, as BEiT and SimMIM fine-tune. A tower's parameters before its first block (patch
    embedding, position table, [CLS]) are at depth 0, block i's at i + 1, a patch merging or token pooling at the
    count of blocks before it, and what follows the last block (final norm, pooler) and everything outside the
    towers (heads, projections) at n + 1, where n is the first tower's (the image tower's) count."""
    modules = dict(model.named_modules())

    def nearest(name, kind):
        """The nearest module of `kind` at or above `name` (a dotted path), or None."""
        parts = name.split(".") if name else []
        for length in range(len(parts), -1, -1):
            path = ".".join(parts[:length])
            if isinstance(modules[path], kind):
                return path
        return None

    blocks = [name for name, module in modules.items() if isinstance(module, GradientCheckpointingLayer)]
    towers = {}  # tower -> its blocks, in module order
    for block in blocks:
        towers.setdefault(nearest(block, PreTrainedModel), []).append(block)
    num_layers = len(next(iter(towers.values()), []))
    seen = dict.fromkeys(towers, 0)  # blocks of each tower passed so far, walking the modules in order
    depths = {}
    for name, module in modules.items():
        block, tower = nearest(name, GradientCheckpointingLayer), nearest(name, PreTrainedModel)
        if block is not None:
            depth = towers[tower].index(block) + 1
            if name == block:
                seen[tower] += 1
        elif tower in towers and seen[tower] < len(towers[tower]):
            depth = seen[tower]
        else:
            depth = num_layers + 1
        for parameter_name, _ in module.named_parameters(recurse=False):
            depths.setdefault(f"{name}.{parameter_name}" if name else parameter_name, depth)
    return depths, num_layers


def layerwise_lr_decay_groups(model, lr: float, decay: float, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups for layer-wise LR decay (BEiT / MAE fine-tuning): the learning rate of depth d
    ([`parameter_depths`]) is `lr * decay ** (n + 1 - d)`, so the head trains at `lr` and the embeddings the slowest.
    Biases and norms get no weight decay (Trainer's own rule)."""
    depths, num_layers = parameter_depths(model)
    decay_names = set(Trainer.get_decay_parameter_names(None, model))  # does not read `self`
    groups = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth = depths[name]
        decayed = name in decay_names
        group_lr = lr * decay ** (num_layers + 1 - depth)
        group = groups.setdefault(
            (depth, decayed), {"params": [], "lr": group_lr, "weight_decay": weight_decay if decayed else 0.0}
        )
        group["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


class DataEpochCallback(TrainerCallback):
    """At every epoch start, hands the epoch and the data seed to what has a `set_epoch` among the training set's
    transform and the training collator, so their random draws (augmentations, mixup / cutmix) are a pure function of
    (seed, epoch, example index). A run resumed mid-epoch then replays them exactly: Trainer draws the first resumed
    batch before restoring the global RNG state, which is thus left to the model's dropout and stochastic depth."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if train_dataloader is None:
            return
        seed = args.seed if args.data_seed is None else args.data_seed
        epoch = int(state.epoch)  # fractional when resuming mid-epoch
        dataset_format = getattr(train_dataloader.dataset, "format", None)  # a `datasets.Dataset`'s: its transform
        transform = dataset_format["format_kwargs"].get("transform") if isinstance(dataset_format, dict) else None
        for target in (transform, train_dataloader.collate_fn):
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch, seed)


class VitlmTrainer(Trainer):
    """Trainer with a separate training collator (mixup / cutmix must not touch evaluation batches), the prediction
    outputs each task's metrics read, and the twin consistency loss for contrastive batches with twins
    (`twin_contrastive_loss`; its two terms are logged as `contrastive_loss` and `twin_loss`)."""

    def __init__(self, *args, train_data_collator=None, ignored_outputs=None, twin_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_data_collator = train_data_collator
        self.ignored_outputs = ignored_outputs
        self.twin_weight = twin_weight
        # since the last log: the sums of the contrastive and consistency terms, and the number of batches
        self.twin_terms = None
        self.add_callback(DataEpochCallback)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "twin_caption_index" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        twin_caption_index = inputs.pop("twin_caption_index")
        outputs = model(**inputs)  # one pass through the (possibly distributed) wrapper for images, twins and texts
        unwrapped = self.accelerator.unwrap_model(model)
        loss, *terms = twin_contrastive_loss(outputs, twin_caption_index, unwrapped, self.twin_weight)
        batch_terms = torch.stack([*terms, torch.ones_like(terms[0])]).detach()
        self.twin_terms = batch_terms if self.twin_terms is None else self.twin_terms + batch_terms
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self.twin_terms is not None:  # every process logs together: the mean over all of them
            terms = self.accelerator.reduce(self.twin_terms, "sum").cpu()
            logs = {**logs, "contrastive_loss": round(float(terms[0] / terms[2]), 4)}
            logs["twin_loss"] = round(float(terms[1] / terms[2]), 6)
            self.twin_terms = None
        super().log(logs, *args, **kwargs)

    def get_train_dataloader(self):
        if self.train_data_collator is None:
            return super().get_train_dataloader()
        collator, self.data_collator = self.data_collator, self.train_data_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collator

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        ignore_keys = self.ignored_outputs if ignore_keys is None else ignore_keys
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


def build_trainer(
    task,
    model,
    train_dataset,
    eval_dataset,
    processor,
    args: TrainingArguments,
    class_names: list[str] | None = None,
    eval_labels=None,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    layer_decay: float | None = None,
    block_masking: bool = False,
    templates=None,
    callbacks=None,
    twin_weight: float = 0.0,
    train_query_classes=None,
) -> Trainer:
    """A Trainer for `task` (a name or alias of `vitlm.training.tasks.TASKS`, or its `TrainingTask`) on datasets
    already carrying the task's transform (`TrainingTask.transform`): collators, metrics and loss from its entry.

    Args:
        processor: the image processor (image-only tasks) or the dual encoder's processor with its tokenizer.
        class_names: image-classification: for top-5 accuracy; zero-shot-image-classification: the zero-shot
            evaluation classes; zero-shot-object-detection: the queries.
        eval_labels: zero-shot-image-classification: the evaluation set's class indices, for zero-shot accuracy.
        layer_decay: layer-wise learning-rate decay factor (e.g. 0.75) for fine-tuning; None for one rate.
        block_masking: masked-image-modeling: train half the images on blob-shaped masks (`InpaintingCollator`).
        templates: zero-shot evaluation prompts and the detection queries' (first one); default: the model's
            `config.prompt_templates`, else CLIP's "a photo of a {}.".
        twin_weight: zero-shot-image-classification: weight of the twin consistency loss on batches with twins.
        train_query_classes: zero-shot-object-detection: the classes (indices into `class_names`) queried in
            training; default: all.
    """
    spec = get_task(task)
    templates = default_templates(model.config) if templates is None else list(templates)
    parts = spec.parts(
        model,
        processor,
        class_names=class_names,
        templates=templates,
        eval_labels=eval_labels,
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        block_masking=block_masking,
        train_query_classes=train_query_classes,
    )
    for name, value in parts.arguments:
        setattr(args, name, value)
    optimizers = (None, None)
    if layer_decay is not None:
        groups = layerwise_lr_decay_groups(model, args.learning_rate, layer_decay, args.weight_decay)
        optimizer = torch.optim.AdamW(groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        optimizers = (optimizer, None)  # Trainer still builds the warm-up + cosine schedule on it
    return VitlmTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=parts.collator,
        train_data_collator=parts.train_collator,
        processing_class=processor,
        compute_metrics=parts.compute_metrics,
        optimizers=optimizers,
        callbacks=[*(callbacks or []), *parts.callbacks],
        ignored_outputs=list(spec.ignored_outputs),
        twin_weight=twin_weight,
        compute_loss_func=parts.compute_loss_func,
    )


def plot_log_history(log_history: list[dict], path) -> Path:
    """A PNG of the training loss and every evaluation metric against the global step."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evaluated = [entry for entry in log_history if any(key.startswith("eval_") for key in entry)]
    timings = ("runtime", "per_second", "eval_loss")
    metric_names = sorted({k for e in evaluated for k in e if k.startswith("eval_") and not k.endswith(timings)})
    figure, axes = plt.subplots(1, 1 + bool(metric_names), figsize=(5 * (1 + bool(metric_names)), 4), squeeze=False)
    losses = axes[0][0]
    if train:
        losses.plot(*zip(*train), label="train loss")
    eval_losses = [(entry["step"], entry["eval_loss"]) for entry in evaluated if "eval_loss" in entry]
    if eval_losses:
        losses.plot(*zip(*eval_losses), marker="o", label="eval loss")
    losses.set_xlabel("step")
    losses.set_title("loss")
    losses.legend()
    if metric_names:
        metrics = axes[0][1]
        for name in metric_names:
            points = [(entry["step"], entry[name]) for entry in evaluated if name in entry]
            metrics.plot(*zip(*points), marker="o", label=name.removeprefix("eval_"))
        metrics.set_xlabel("step")
        metrics.set_title("evaluation")
        metrics.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


__all__ = [
    "DataEpochCallback",
    "VitlmTrainer",
    "build_trainer",
    "layerwise_lr_decay_groups",
    "parameter_depths",
    "plot_log_history",
    "training_arguments",
]
