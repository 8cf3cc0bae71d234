"""`vitlm train`: model, processor and datasets from names, then Trainer, then a folder that reloads through the
Auto classes (model, processor, loss curves, model card)."""

import json
import math
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
    PretrainedConfig,
)
from transformers.trainer_utils import get_last_checkpoint, set_seed

from ..convert import DTYPES
from ..models.configuration_vitlm import split_assignments
from . import transforms
from .card import write_model_card
from .trainer import build_trainer, plot_log_history, training_arguments

AUTO_CLASSES = {
    "classify": AutoModelForImageClassification,
    "contrastive": AutoModel,
    "detect": AutoModelForZeroShotObjectDetection,
    "inpaint": AutoModelForMaskedImageModeling,
}
DUAL_TASKS = ("contrastive", "detect")
CLIP_VOCAB = {"vocab_size": 49408, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 0}
EVAL_SPLITS = ("validation", "valid", "val", "test")


def parse_overrides(text: str | None) -> dict:
    """`"decoder_hidden_size=32,image_size=[224, 320]"` -> a dict of JSON values (strings where not JSON). A dotted key
    changes a tower of a dual encoder: `vision_config.hidden_size=64` -> `{"vision_config": {"hidden_size": 64}}`."""
    overrides = {}
    for item in filter(None, split_assignments(text or "")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"config override {item!r} is not key=value")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        *parents, name = key.strip().split(".")
        target = overrides
        for parent in parents:
            target = target.setdefault(parent, {})
        target[name] = value
    return overrides


def apply_overrides(config, overrides: dict):
    """Apply config overrides as one change, checked like any config change (the config is left as it was if one
    is invalid). A key the config (or the named tower) does not have is refused rather than added unused."""
    for key, value in overrides.items():
        tower = getattr(config, key, None)
        owner, names = (
            (tower, value) if isinstance(tower, PretrainedConfig) and isinstance(value, dict) else (config, [key])
        )
        for name in names:
            if not hasattr(owner, name):
                raise ValueError(f"config override {name!r} is not a field of the {owner.model_type} config")
    config.update(overrides)


def load_model(task: str, name: str, class_names=None, config_overrides=None, work_dir=None):
    """(model, processor) for `task` from a preset (random weights), a converter source (`timm:...`, ...), a folder
    or a Hub id. Classification gets a new head when `class_names` differ from the checkpoint's."""
    from ..clip_bpe import clip_tokenizer
    from ..convert import SOURCES, load, save
    from ..models import VitlmDualEncoderProcessor, VitlmViTMAEConfig
    from ..presets import preset_names, preset_path

    overrides = dict(config_overrides or {})
    if class_names is not None and task == "classify":
        overrides.update(
            num_labels=len(class_names),
            id2label=dict(enumerate(class_names)),
            label2id={n: i for i, n in enumerate(class_names)},
        )
    if name.partition(":")[0] in SOURCES:  # convert once, then load like any folder
        name = str(save(load(name), Path(work_dir or tempfile.mkdtemp()) / "converted", overwrite=True))
    is_preset = name in preset_names()
    source = preset_path(name) if is_preset else name
    config = AutoConfig.from_pretrained(source)
    if (task in DUAL_TASKS) != hasattr(config, "text_config"):
        raise ValueError(f"task {task!r} needs {'a' if task in DUAL_TASKS else 'an image-only'} dual encoder model")
    if task in DUAL_TASKS and is_preset and config.text_config.vocab_size < CLIP_VOCAB["vocab_size"]:
        # tiny presets have a toy vocabulary; text is tokenized with CLIP's BPE, so the tower takes its ids
        config.text_config.update(CLIP_VOCAB)
    if task == "inpaint" and not isinstance(config, VitlmViTMAEConfig):
        # a plain ViT (preset or checkpoint) is the encoder: the MAE head's config extends it, with the head's defaults
        config = VitlmViTMAEConfig.from_encoder_config(config)
    apply_overrides(config, overrides)
    if is_preset:
        model = AUTO_CLASSES[task].from_config(config)
    else:
        # float32 whatever the checkpoint stores (a float16 release included): Trainer handles mixed precision
        model = AUTO_CLASSES[task].from_pretrained(
            name, config=config, dtype=torch.float32, ignore_mismatched_sizes=task == "classify"
        )
    if task in DUAL_TASKS:
        if is_preset:
            image_processor = AutoImageProcessor.from_pretrained(source)
            context = config.text_config.max_position_embeddings
            processor = VitlmDualEncoderProcessor(image_processor, clip_tokenizer(context_length=context))
        else:
            processor = AutoProcessor.from_pretrained(source)
    else:
        processor = AutoImageProcessor.from_pretrained(source)
    return model, processor


def load_datasets(
    name: str,
    seed: int = 0,
    shapes_train: int = 512,
    shapes_test: int = 128,
    shapes_size: int = 64,
    shapes_max_objects: int = 3,
    shapes_twins: bool = False,
):
    """(train, eval) datasets: `shapes` (the synthetic world, generated; `shapes_twins`: the training images'
    twins too), an image folder, or a Hub dataset. Without an evaluation split, 10% of the training set is held
    out."""
    from datasets import DatasetDict, load_dataset

    if name == "shapes":
        from ..data.shapes import generate

        sizes = dict(image_size=shapes_size, max_objects=shapes_max_objects)
        return generate(shapes_train, seed=seed, split="train", twins=shapes_twins, **sizes), generate(
            shapes_test, seed=seed + 1, split="test", **sizes
        )
    splits = load_dataset("imagefolder", data_dir=name) if Path(name).is_dir() else load_dataset(name)
    if not isinstance(splits, DatasetDict) or "train" not in splits:
        raise ValueError(f"dataset {name!r} has no 'train' split")
    for split in EVAL_SPLITS:
        if split in splits:
            return splits["train"], splits[split]
    held_out = splits["train"].train_test_split(test_size=0.1, seed=seed)
    return held_out["train"], held_out["test"]


def find_column(dataset, candidates, kind: str) -> str:
    for name in candidates:
        if name in dataset.column_names:
            return name
    raise ValueError(f"the dataset has no {kind} column (looked for {candidates}; it has {dataset.column_names})")


def image_column(dataset) -> str:
    from datasets import Image

    images = [name for name, feature in dataset.features.items() if isinstance(feature, Image)]
    return images[0] if images else find_column(dataset, ("image", "img"), "image")


def class_names_of(task: str, dataset) -> list[str] | None:
    if task == "detect":
        category = dataset.features[find_column(dataset, ("objects",), "objects")]["category"]
        return list(getattr(category, "feature", category).names)
    label = next((c for c in ("label", "labels") if c in dataset.column_names), None)
    names = getattr(dataset.features[label], "names", None) if label else None
    if task == "classify" and names is None:
        raise ValueError("classification needs a ClassLabel column named 'label' or 'labels'")
    return names


def with_transforms(
    task: str,
    train,
    eval_dataset,
    image_processor,
    bbox_format="xyxy",
    augment=True,
    caption_weights=None,
    twins: bool = False,
):
    """The task's transforms on both sets; `augment=False` trains on the evaluation transform (for data whose
    labels crops and colour jitter would falsify, such as the shapes world's captions); `caption_weights` weigh an
    example's captions when contrastive training draws one; `twins` adds the training images' twins (columns
    `twins` and `twin_captions`) to contrastive batches."""
    image = image_column(train)
    twin_columns = None
    if twins:
        twin_columns = (
            find_column(train, ("twins",), "twins"),
            find_column(train, ("twin_captions",), "twin captions"),
        )
    make = {
        "classify": lambda is_train: transforms.classification_transform(
            image_processor, is_train and augment, image, find_column(train, ("label", "labels"), "label")
        ),
        # unaugmented contrastive training still draws one of an image's captions per step
        "contrastive": lambda is_train: transforms.contrastive_transform(
            image_processor,
            is_train,
            image,
            find_column(train, ("captions", "caption", "text"), "caption"),
            augment_images=augment,
            caption_weights=caption_weights,
            twin_columns=twin_columns,
        ),
        "detect": lambda is_train: transforms.detection_transform(
            image_processor, is_train and augment, image, find_column(train, ("objects",), "objects"), bbox_format
        ),
        "inpaint": lambda is_train: transforms.inpainting_transform(image_processor, is_train and augment, image),
    }[task]
    # the example index keys the training augmentations' (and caption draws') randomness, so resumed runs replay it
    return transforms.with_example_index(train).with_transform(make(True)), eval_dataset.with_transform(make(False))


def train(
    task: str,
    model_name: str,
    dataset_name: str,
    output_dir,
    epochs: float = 3,
    max_steps: int = -1,
    batch_size: int = 32,
    lr: float = 5e-4,
    seed: int = 42,
    resume: bool = False,
    push_to_hub: str | None = None,
    shapes_train: int = 512,
    shapes_test: int = 128,
    shapes_size: int = 64,
    shapes_max_objects: int = 3,
    config_overrides: str | None = None,
    layer_decay: float | None = None,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    bbox_format: str = "xyxy",
    eval_steps: int | None = None,
    logging_steps: int = 10,
    augment: bool = True,
    block_masking: bool = False,
    caption_weights: list[float] | None = None,
    twin_weight: float = 0.0,
    save_checkpoints: bool = True,
    save_dtype: str | None = None,
    command: str | None = None,
    callbacks=None,
    **training_kwargs,
):
    """Train and save; returns the Trainer (its `state.log_history` holds the losses and metrics).
    `save_checkpoints=False` keeps no checkpoint folders (no resuming); `save_dtype` ("float16", "bfloat16") casts
    the final weights; `twin_weight` > 0 adds the twin consistency loss to contrastive training (data with twins:
    `vitlm.data.shapes.generate(twins=True)`, which `dataset_name="shapes"` then generates)."""
    if save_dtype is not None and save_dtype not in DTYPES:
        raise ValueError(f"save_dtype must be one of {sorted(DTYPES)}, got {save_dtype!r}")
    if not save_checkpoints:
        training_kwargs["save_strategy"] = "no"
    output_dir = Path(output_dir)
    if caption_weights is not None:  # refused before the data is generated and the model built
        if task != "contrastive":
            raise ValueError(f"caption weights apply to contrastive training, not {task!r}")
        transforms.caption_weights_tensor(caption_weights)
    if not (isinstance(twin_weight, (int, float)) and math.isfinite(twin_weight) and twin_weight >= 0):
        raise ValueError(f"twin_weight must be a finite number >= 0, got {twin_weight!r}")
    if twin_weight and task != "contrastive":
        raise ValueError(f"the twin consistency loss applies to contrastive training, not {task!r}")
    twins = twin_weight > 0
    train_set, eval_set = load_datasets(
        dataset_name, seed, shapes_train, shapes_test, shapes_size, shapes_max_objects, shapes_twins=twins
    )
    class_names = class_names_of(task, train_set)
    set_seed(seed)  # a preset's random initialization is part of the run (Trainer seeds only once it is built)
    model, processor = load_model(task, model_name, class_names, parse_overrides(config_overrides), output_dir)
    image_processor = getattr(processor, "image_processor", processor)
    train_query_classes = None
    if task == "detect":
        # classes without a box in training are left out of its queries (DetectionCollator); evaluation queries all
        objects = train_set[find_column(train_set, ("objects",), "objects")]
        train_query_classes = sorted({int(category) for row in objects for category in row["category"]})
        if not train_query_classes:
            raise ValueError("the training set has no boxes to train a detector on")
        if len(train_query_classes) < len(class_names):
            unseen = [class_names[index] for index in range(len(class_names)) if index not in train_query_classes]
            print(f"{len(unseen)} classes have no box in the training set and are not queried in training: {unseen}")
    eval_labels = None
    if task == "contrastive" and class_names is not None:
        eval_labels = eval_set[find_column(eval_set, ("label", "labels"), "label")]
    train_set, eval_set = with_transforms(
        task, train_set, eval_set, image_processor, bbox_format, augment, caption_weights, twins
    )

    args = training_arguments(
        output_dir,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        eval_strategy="steps" if eval_steps else "epoch",
        eval_steps=eval_steps,
        logging_steps=logging_steps,
        **training_kwargs,
    )
    trainer = build_trainer(
        task,
        model,
        train_set,
        eval_set,
        processor,
        args,
        class_names=class_names,
        eval_labels=eval_labels,
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        layer_decay=layer_decay,
        block_masking=block_masking,
        callbacks=callbacks,
        twin_weight=twin_weight,
        train_query_classes=train_query_classes,
    )
    checkpoint = get_last_checkpoint(output_dir) if resume and output_dir.is_dir() else None
    if resume and checkpoint is None:
        print(f"no checkpoint in {output_dir}: training from the start")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.evaluate()
    if save_dtype:
        trainer.model.to(DTYPES[save_dtype])
    trainer.save_model(output_dir)  # model + processor; every process calls it, Trainer writes once
    trainer.save_state()  # trainer_state.json: the whole log history, final evaluation included
    if trainer.is_world_process_zero():
        # Trainer's pickled TrainingArguments: a shared folder holds no pickles, and the card lists the recipe
        (output_dir / "training_args.bin").unlink(missing_ok=True)
        plot_log_history(trainer.state.log_history, output_dir / "training_curves.png")
        write_model_card(output_dir, task, model_name, dataset_name, trainer, command)
        if push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(push_to_hub, exist_ok=True)
            api.upload_folder(
                repo_id=push_to_hub,
                folder_path=output_dir,
                commit_message=f"vitlm train {task}",
                ignore_patterns=["checkpoint-*", "converted/*"],
            )
    return trainer


__all__ = ["class_names_of", "load_datasets", "load_model", "parse_overrides", "train"]
