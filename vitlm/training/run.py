"""`vitlm train`: model, processor and datasets from names, then Trainer, then a folder that reloads through the
Auto classes (model, processor, loss curves, model card)."""

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, PretrainedConfig
from transformers.trainer_utils import get_last_checkpoint, set_seed

from ..convert import DTYPES
from ..models.configuration_vitlm import split_assignments
from . import transforms
from .arguments import check_arguments
from .card import write_model_card
from .tasks import auto_class, class_names_of, get_task, warn_of_untrained_classes
from .trainer import build_trainer, plot_log_history, training_arguments

CLIP_VOCAB = {"vocab_size": 49408, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 0}
CLIP_TOKENIZER_PRESET = "clip-vit-base-patch32"  # a preset holding CLIP's BPE tokenizer files
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


def load_model(task, name: str, class_names=None, config_overrides=None, work_dir=None, head=None):
    """(model, processor) for `task` (a name, an alias or a `TrainingTask`; `head` one of its heads) from a preset
    (random weights), a converter source (`timm:...`, ...), a folder or a Hub id. A task with a head sized to the
    classes (classification) gets a new head when `class_names` differ from the checkpoint's."""
    from ..convert import SOURCES, load, save
    from ..models import VitlmCLIPTokenizer, VitlmDualEncoderProcessor
    from ..presets import preset_names, preset_path

    if name.partition(":")[0] in SOURCES:  # convert once, then load like any folder (kept in `work_dir`, or scratch)
        with contextlib.ExitStack() as scratch:
            folder = Path(work_dir) if work_dir else Path(scratch.enter_context(tempfile.TemporaryDirectory()))
            converted = save(load(name), folder / "converted", overwrite=True)
            return load_model(task, str(converted), class_names, config_overrides, head=head)
    spec = get_task(task, head)
    overrides = dict(config_overrides or {})
    if class_names is not None and spec.sized_head:
        overrides.update(
            num_labels=len(class_names),
            id2label=dict(enumerate(class_names)),
            label2id={n: i for i, n in enumerate(class_names)},
        )
    is_preset = name in preset_names()
    if is_preset and Path(name).exists():
        raise ValueError(f"{name!r} names both a preset and a folder here: pass './{name}' for the folder")
    source = preset_path(name) if is_preset else name
    config = AutoConfig.from_pretrained(source)
    if not config.model_type.startswith("vitlm"):
        raise ValueError(
            f"{name} holds a transformers {config.model_type!r} model, not a vitlm one: train from the converter "
            f"source 'hf:{name}', which converts it"
        )
    dual_encoder = hasattr(config, "text_config")
    if spec.dual_encoder is not None and spec.dual_encoder != dual_encoder:
        needs = "a dual encoder model" if spec.dual_encoder else "an image-only model, not a dual encoder"
        raise ValueError(f"task {getattr(task, 'name', task)!r} needs {needs}")
    if dual_encoder and is_preset and config.text_config.vocab_size < CLIP_VOCAB["vocab_size"]:
        # tiny presets have a toy vocabulary; text is tokenized with CLIP's BPE, so the tower takes its ids
        config.text_config.update(CLIP_VOCAB)
    if spec.model_config is not None:
        config = spec.model_config(config)
    apply_overrides(config, overrides)
    if is_preset:
        model = auto_class(spec).from_config(config)
    else:
        # float32 whatever the checkpoint stores (a float16 release included): Trainer handles mixed precision
        model = auto_class(spec).from_pretrained(
            name, config=config, dtype=torch.float32, ignore_mismatched_sizes=spec.sized_head
        )
    if dual_encoder:
        if is_preset:
            # CLIP's BPE ships with the presets that have its vocabulary (a tiny preset's toy one was widened to it
            # above), at the model's context length
            tokenizer = VitlmCLIPTokenizer.from_pretrained(
                preset_path(CLIP_TOKENIZER_PRESET), model_max_length=config.text_config.max_position_embeddings
            )
            processor = VitlmDualEncoderProcessor(AutoImageProcessor.from_pretrained(source), tokenizer)
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
    shapes_eval_split: str = "test",
):
    """(train, eval) datasets: `shapes` (the synthetic world, generated; `shapes_twins`: the training images'
    twins too; evaluated on `shapes_eval_split`, "test" for the held-out shape x colour pairs or "validation" for
    unseen images of the pairs seen in training), an image folder, or a Hub dataset. Without an evaluation split, 10%
    of the training set is held out."""
    from datasets import DatasetDict, load_dataset

    if name == "shapes":
        if Path(name).exists():
            raise ValueError(
                "'shapes' names both the generated shapes world and a folder here: pass './shapes' for the folder"
            )
        from ..data.shapes import generate

        sizes = dict(image_size=shapes_size, max_objects=shapes_max_objects)
        return generate(shapes_train, seed=seed, split="train", twins=shapes_twins, **sizes), generate(
            shapes_test, seed=seed + 1, split=shapes_eval_split, **sizes
        )
    splits = load_dataset("imagefolder", data_dir=name) if Path(name).is_dir() else load_dataset(name)
    if not isinstance(splits, DatasetDict) or "train" not in splits:
        raise ValueError(f"dataset {name!r} has no 'train' split")
    for split in EVAL_SPLITS:
        if split in splits:
            return splits["train"], splits[split]
    held_out = splits["train"].train_test_split(test_size=0.1, seed=seed)
    return held_out["train"], held_out["test"]


def with_lora(model, model_name: str, rank: int, targets=None):
    """`model` with LoRA adapters (`vitlm.training.lora.apply_lora`), remembering where its weights come from."""
    from ..convert import SOURCES
    from ..presets import preset_names
    from .lora import DEFAULT_TARGETS, apply_lora

    if model_name in preset_names():
        raise ValueError(f"LoRA adapts pretrained weights: {model_name!r} is a preset (random weights); train fully")
    model = apply_lora(model, rank, targets or DEFAULT_TARGETS)
    # a folder by its absolute path (the adapters are loaded from elsewhere); a converter source by its converted copy
    base = model.base_model.model.name_or_path if model_name.partition(":")[0] in SOURCES else model_name
    model.peft_config["default"].base_model_name_or_path = str(Path(base).resolve()) if Path(base).is_dir() else base
    return model


def with_transforms(task, train, eval_dataset, image_processor, augment=True, **options):
    """The task's transforms on both sets (`TrainingTask.transform`; columns found in the training set).
    `augment=False` trains on the evaluation transform (for data whose labels crops and colour jitter would falsify,
    such as the shapes world's captions); `options` are the task's own (`bbox_format`, `caption_weights`, `twins`:
    the training images' twins, columns `twins` and `twin_captions`, in contrastive batches; `patch_size`: the
    model's stem stride, which DINO's local crops are a multiple of)."""
    spec = get_task(task)

    def make(is_train):
        return spec.transform(image_processor, is_train, train, augment=augment, **options)

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
    overwrite: bool = False,
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
    head: str | None = None,
    caption_weights: list[float] | None = None,
    twin_weight: float = 0.0,
    save_checkpoints: bool = True,
    save_dtype: str | None = None,
    command: str | None = None,
    callbacks=None,
    lora_rank: int | None = None,
    lora_targets: list[str] | None = None,
    merge_lora: bool = False,
    recipe_settings: str | dict | None = None,
    **training_kwargs,
):
    """Train `task` (a name of `vitlm.training.tasks.TASKS` or its alias) and save; returns the Trainer (its
    `state.log_history` holds the losses and metrics).
    `save_checkpoints=False` keeps no checkpoint folders (no resuming); `save_dtype` ("float16", "bfloat16") casts
    the final weights; `twin_weight` > 0 adds the twin consistency loss to contrastive training (data with twins:
    `vitlm.data.shapes.generate(twins=True)`, which `dataset_name="shapes"` then generates); `head` picks one of the
    task's other heads (masked-image-modeling: "synthesis"). `lora_rank` trains
    rank-r LoRA adapters (PEFT) on the towers' `lora_targets` layers (default: qkv, fc1, fc2) and the head whole,
    everything else frozen, and saves the adapters alone (`vitlm.training.lora.load_lora` reloads them), or with
    `merge_lora` the model with the adapters merged into its weights."""
    spec = get_task(task)
    task_options = dict(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        block_masking=block_masking,
        head=head,
        caption_weights=caption_weights,
        bbox_format=bbox_format,
        recipe_settings=recipe_settings,
    )
    schedule = dict(
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        eval_steps=eval_steps,
        logging_steps=logging_steps,
    )
    check_arguments(
        task,
        output_dir,
        **schedule,
        layer_decay=layer_decay,
        twin_weight=twin_weight,
        lora_rank=lora_rank,
        lora_targets=lora_targets,
        merge_lora=merge_lora,
        resume=resume,
        overwrite=overwrite,
        reads=(model_name, dataset_name),
        **task_options,
    )
    spec = get_task(task, head)  # checked above: a head of this task
    if push_to_hub:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(push_to_hub)  # a ValueError naming the id, before the training rather than after it
    if caption_weights is not None:
        transforms.caption_weights_tensor(caption_weights)
    if isinstance(recipe_settings, str):
        recipe_settings = parse_overrides(recipe_settings)
    settings = spec.settings(recipe_settings) if spec.settings else None  # refuses a bad one before any data
    if save_dtype is not None and save_dtype not in DTYPES:
        raise ValueError(f"save_dtype must be one of {sorted(DTYPES)}, got {save_dtype!r}")
    if lora_rank and spec.training_model is not None:
        raise ValueError(
            f"LoRA adapts the model a task trains directly; {spec.name!r} trains a module built around it"
        )
    if lora_rank and push_to_hub and not merge_lora and Path(model_name).exists():
        raise ValueError(
            "pushed LoRA adapters name their base model, here a local folder others cannot load: push the base model "
            "and train from its Hub id, or save the merged model (--merge-lora)"
        )
    if not save_checkpoints:
        training_kwargs["save_strategy"] = "no"
    output_dir = Path(output_dir)
    twins = twin_weight > 0
    train_set, eval_set = load_datasets(
        dataset_name,
        seed,
        shapes_train,
        shapes_test,
        shapes_size,
        shapes_max_objects,
        shapes_twins=twins,
        shapes_eval_split=spec.shapes_eval_split,
    )
    class_names = class_names_of(spec, train_set)
    warn_of_untrained_classes(spec, train_set, eval_set, class_names)
    if overwrite and output_dir.is_dir():  # checked above: a folder of its own; replaced once the data is there
        from accelerate import PartialState

        state = PartialState()
        if state.is_main_process:
            shutil.rmtree(output_dir)
        state.wait_for_everyone()
    set_seed(seed)  # a preset's random initialization is part of the run (Trainer seeds only once it is built)
    model, processor = load_model(task, model_name, class_names, parse_overrides(config_overrides), output_dir, head)
    if lora_rank:
        model = with_lora(model, model_name, lora_rank, lora_targets)
    image_processor = getattr(processor, "image_processor", processor)
    evaluation_inputs = spec.evaluation_inputs(train_set, eval_set, class_names) if spec.evaluation_inputs else {}
    raw_train_set = train_set
    train_set, eval_set = with_transforms(
        spec,
        train_set,
        eval_set,
        image_processor,
        augment,
        bbox_format=bbox_format,
        caption_weights=caption_weights,
        twins=twins,
        patch_size=getattr(model.config, "vision_config", model.config).stem_stride,
        settings=settings,
    )
    if spec.training_model is not None:
        model = spec.training_model(model, raw_train_set, image_processor, settings)

    args = training_arguments(
        output_dir, **schedule, eval_strategy="steps" if eval_steps else "epoch", **training_kwargs
    )
    trainer = build_trainer(
        spec,
        model,
        train_set,
        eval_set,
        processor,
        args,
        class_names=class_names,
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        layer_decay=layer_decay,
        block_masking=block_masking,
        callbacks=callbacks,
        twin_weight=twin_weight,
        **evaluation_inputs,
    )
    checkpoint = get_last_checkpoint(output_dir) if resume and output_dir.is_dir() else None
    if resume and checkpoint is None:
        print(f"no checkpoint in {output_dir}: training from the start")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.evaluate()
    if lora_rank and merge_lora:
        trainer.model = trainer.model.merge_and_unload()
    if save_dtype:
        trainer.model.to(DTYPES[save_dtype])
    if spec.saved_models is None:
        trainer.save_model(output_dir)  # model (or adapters) + processor; every process calls it, Trainer writes once
    elif trainer.is_world_process_zero():
        for subfolder, saved in spec.saved_models(trainer.model).items():
            saved.save_pretrained(output_dir / subfolder)
        processor.save_pretrained(output_dir)
    if lora_rank and not merge_lora and trainer.is_world_process_zero():
        # the trained model's config, for `load_lora`: its class (not the checkpoint's, which may lack the head) and a
        # head resized for the new classes
        trained = trainer.model.base_model.model
        trained.config.architectures = [type(trained).__name__]
        trained.config.to_json_file(output_dir / "config.json")
    trainer.save_state()  # trainer_state.json: the whole log history, final evaluation included
    if trainer.is_world_process_zero():
        # Trainer's pickled TrainingArguments: a shared folder holds no pickles, and the card lists the recipe
        (output_dir / "training_args.bin").unlink(missing_ok=True)
        plot_log_history(trainer.state.log_history, output_dir / "training_curves.png")
        write_model_card(output_dir, spec, model_name, dataset_name, trainer, command)
        if push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(push_to_hub, exist_ok=True)
            api.upload_folder(
                repo_id=push_to_hub,
                folder_path=output_dir,
                commit_message=f"vitlm train {spec.name}",
                ignore_patterns=["checkpoint-*", "converted/*"],
            )
    return trainer


__all__ = ["class_names_of", "load_datasets", "load_model", "parse_overrides", "train"]
