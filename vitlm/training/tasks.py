"""The training tasks: one `TrainingTask` entry each in `TASKS`, and everything `vitlm train` does differently per task
read from it (Auto class, transforms, collators, metrics, the outputs kept for the metrics, card text, the options
that apply). A new task is one entry here.

The task names are the vocabulary of the whole project (`vitlm train`, the demo's tabs, the README, model cards):
the Hub's pipeline tag of what the trained model does where transformers has one, and transformers' own task name
where it has none (`masked-image-modeling`, the task of `AutoModelForMaskedImageModeling`; such a model inpaints).
`vitlm train` also takes each task's short name from before (`classify`, `contrastive`, `detect`, `inpaint`).

Nothing heavy is imported at module level (`vitlm --help` lists the names from here): the builders import transforms,
collators and metrics when they are called.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskParts:
    """What a task hands Trainer: the evaluation collator, the training one (None: the same), `compute_metrics`
    (None: loss only), `compute_loss_func` (None: the model's loss), TrainingArguments fields the task needs, and
    callbacks of its own (DINO's teacher update)."""

    collator: object
    train_collator: object = None
    compute_metrics: Callable | None = None
    compute_loss_func: Callable | None = None
    arguments: tuple[tuple[str, object], ...] = ()
    callbacks: tuple = ()


@dataclass(frozen=True)
class TrainingTask:
    """One training task.

    Fields:
        name: the task's name (see the module's docstring); `alias`: the short name `vitlm train` also takes.
        title: how messages and docs name it in prose ("classification").
        description: the model card's first words for a model trained on it.
        auto_class: the transformers Auto class (by name) that builds and reloads the model.
        dual_encoder: whether the model is a dual encoder (image and text towers) rather than image-only; None:
            either (segmentation: Segmenter on an image tower, open-vocabulary on a dual encoder).
        class_column: the dataset column whose `ClassLabel` names the classes ("label", or "objects" whose
            `category` does; "masks": the background and the classes of segmentation's label maps, see
            `segmentation_class_names`); None: the task uses no class names. `needs_classes`: refuse a dataset
            without them.
        sized_head: the model's head is made for the dataset's classes (`num_labels`, `id2label`), replacing a
            checkpoint's head of another size.
        shapes_eval_split: the shapes world's split evaluated on: "validation" (the pairs seen in training) or
            "test" (each image's first object a held-out shape x colour pair: zero-shot).
        options: the `train` keywords that apply to this task only (see `TASK_OPTIONS`); refused for the others.
        ignored_outputs: model outputs Trainer drops before gathering predictions (the rest reach the metrics, in
            field order).
        transform: `(image_processor, train, dataset, augment=..., **options) -> transform` for `with_transform`.
        evaluation_inputs: `(train_set, eval_set, class_names) -> dict`, keywords for `parts` drawn from the raw
            datasets (before their transforms); None: nothing.
        parts: `(model, processor, class_names=..., templates=..., **keywords) -> TaskParts`.
        model_config: `(config) -> config` the task's model is built from, given the preset's or checkpoint's
            (the masked-image-modeling head extends a plain ViT encoder's config with its own); None: as it is.
        training_model: `(model, train_set, image_processor) -> module` Trainer trains, built around the loaded model
            (DINO's student and teacher; BEiT's head and the visual tokenizer it fits on the raw training set); None:
            the model itself.
        saved_models: `(trained module) -> {subfolder: model}` written to the output folder ("" the folder itself;
            DINO: the teacher's backbone, an ordinary vitlm model; BEiT: the backbone, and its tokenizer in
            `visual_tokenizer/`); None: the trained model itself.
        heads: the other heads `--head` picks for this task, each as the fields of this entry it changes (the
            masked-image-modeling task's "synthesis" head: its own config, collator and codebook fit); the entry's
            own fields are the default head, named by `default_head`.
        settings: `(dict) -> settings` the recipe's settings (`--recipe-settings`, validated), handed to `transform`
            and `training_model` as `settings`; None: the task has none.
    """

    name: str
    alias: str
    title: str
    description: str
    auto_class: str
    dual_encoder: bool | None
    class_column: str | None
    needs_classes: bool
    sized_head: bool
    shapes_eval_split: str
    options: frozenset[str]
    ignored_outputs: tuple[str, ...]
    transform: Callable
    parts: Callable
    evaluation_inputs: Callable | None = None
    model_config: Callable | None = None
    training_model: Callable | None = None
    saved_models: Callable | None = None
    default_head: str | None = None
    heads: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    settings: Callable | None = None


# The `train` keywords that apply to some tasks only: keyword -> (how messages name it, the value that leaves it off).
TASK_OPTIONS = {
    "mixup_alpha": ("mixup and cutmix (--mixup, --cutmix) apply", 0.0),
    "cutmix_alpha": ("mixup and cutmix (--mixup, --cutmix) apply", 0.0),
    "block_masking": ("block masking (--block-masking) applies", False),
    "caption_weights": ("caption weights apply", None),
    "twin_weight": ("the twin consistency loss applies", 0.0),
    "bbox_format": ("the box format (--bbox-format) applies", "xyxy"),
    "head": ("the head choice (--head) applies", None),
    "recipe_settings": ("recipe settings (--recipe-settings) apply", None),
}


def find_column(dataset, candidates, kind: str) -> str:
    for name in candidates:
        if name in dataset.column_names:
            return name
    raise ValueError(f"the dataset has no {kind} column (looked for {candidates}; it has {dataset.column_names})")


def image_column(dataset) -> str:
    from datasets import Image

    images = [name for name, feature in dataset.features.items() if isinstance(feature, Image)]
    return images[0] if images else find_column(dataset, ("image", "img"), "image")


LABEL_COLUMNS = ("label", "labels")


# ---- image classification


def _classification_transform(image_processor, train, dataset, augment=True, **_):
    from .transforms import classification_transform

    label = find_column(dataset, LABEL_COLUMNS, "label")
    return classification_transform(image_processor, train and augment, image_column(dataset), label)


def _classification_parts(model, processor, mixup_alpha=0.0, cutmix_alpha=0.0, **_):
    from .collators import ClassificationCollator, soft_target_cross_entropy
    from .metrics import classification_metrics

    num_labels = model.config.num_labels
    mixed = bool(mixup_alpha or cutmix_alpha)
    return TaskParts(
        collator=ClassificationCollator(num_labels),
        train_collator=ClassificationCollator(num_labels, mixup_alpha, cutmix_alpha) if mixed else None,
        compute_metrics=classification_metrics(num_labels),
        compute_loss_func=soft_target_cross_entropy if mixed else None,
    )


# ---- zero-shot image classification (contrastive image-text training of a dual encoder)


def _contrastive_transform(image_processor, train, dataset, augment=True, caption_weights=None, twins=False, **_):
    from .transforms import contrastive_transform

    twin_columns = None
    if twins:
        twin_columns = (
            find_column(dataset, ("twins",), "twins"),
            find_column(dataset, ("twin_captions",), "twin captions"),
        )
    # unaugmented contrastive training still draws one of an image's captions per step
    return contrastive_transform(
        image_processor,
        train,
        image_column(dataset),
        find_column(dataset, ("captions", "caption", "text"), "caption"),
        augment_images=augment,
        caption_weights=caption_weights,
        twin_columns=twin_columns,
    )


def _zero_shot_labels(train_set, eval_set, class_names):
    # the model's forward takes no labels: zero-shot accuracy reads the evaluation set's classes in its order
    if class_names is None:
        return {}
    return {"eval_labels": eval_set[find_column(eval_set, LABEL_COLUMNS, "label")]}


def _contrastive_parts(model, processor, class_names=None, templates=(), eval_labels=None, **_):
    from .collators import ContrastiveCollator
    from .metrics import zero_shot_metrics

    tokenizer = processor.tokenizer
    compute_metrics = None
    if class_names is not None and eval_labels is not None:
        compute_metrics = zero_shot_metrics(model, tokenizer, class_names, eval_labels, templates)
    context = model.config.text_config.max_position_embeddings
    return TaskParts(ContrastiveCollator(tokenizer, max_length=context), compute_metrics=compute_metrics)


# ---- zero-shot (open-vocabulary) object detection


def _detection_transform(image_processor, train, dataset, augment=True, bbox_format="xyxy", **_):
    from .transforms import detection_transform

    objects = find_column(dataset, ("objects",), "objects")
    return detection_transform(image_processor, train and augment, image_column(dataset), objects, bbox_format)


def _queried_classes(train_set, eval_set, class_names):
    # classes without a box in training are left out of its queries (DetectionCollator); evaluation queries all
    objects = train_set[find_column(train_set, ("objects",), "objects")]
    queried = sorted({int(category) for row in objects for category in row["category"]})
    if not queried:
        raise ValueError("the training set has no boxes to train a detector on")
    if len(queried) < len(class_names):
        unseen = [class_names[index] for index in range(len(class_names)) if index not in queried]
        print(f"{len(unseen)} classes have no box in the training set and are not queried in training: {unseen}")
    return {"train_query_classes": queried}


def _detection_parts(model, processor, class_names=None, templates=(), train_query_classes=None, **_):
    from .collators import DetectionCollator
    from .metrics import detection_metrics

    tokenizer = processor.tokenizer
    context = model.config.text_config.max_position_embeddings
    train_collator = None
    if train_query_classes is not None:
        train_collator = DetectionCollator(
            tokenizer, class_names, templates[0], context, query_classes=list(train_query_classes)
        )
    return TaskParts(
        DetectionCollator(tokenizer, class_names, template=templates[0], max_length=context),
        train_collator=train_collator,
        compute_metrics=detection_metrics(),
        # labels are per-image lists of boxes: keep batches apart instead of padding them into one array
        arguments=(("eval_do_concat_batches", False),),
    )


# ---- semantic segmentation (Segmenter; open-vocabulary on a dual encoder)

MASK_COLUMNS = ("mask", "annotation", "segmentation", "semantic_mask", "label_map")
# the shapes world's label maps: class 0 is the background, class k + 1 its category k
BACKGROUND = "background"
SEGMENTATION_IGNORE_INDEX = 255  # transformers' `semantic_loss_ignore_index`; the models' loss ignores it too


def _has_object_masks(dataset) -> bool:
    return "masks" in dataset.column_names and "objects" in dataset.column_names


def segmentation_class_names(dataset) -> list[str]:
    """The shapes world's (or any data set with per-object `masks` and `objects` categories): the background, then the
    categories. A data set with a label-map column: its class indices, as names, up to the largest one present
    (255 is ignored)."""
    if _has_object_masks(dataset):
        category = dataset.features["objects"]["category"]
        return [BACKGROUND, *getattr(category, "feature", category).names]
    import numpy as np

    column = find_column(dataset, MASK_COLUMNS, "mask")
    largest = -1
    for label_map in dataset[column]:
        values = np.unique(np.asarray(label_map))
        values = values[values != SEGMENTATION_IGNORE_INDEX]
        largest = max(largest, int(values.max()) if values.size else -1)
    if largest < 0:
        raise ValueError(f"the label maps of column {column!r} hold no class (every pixel is 255, ignored)")
    return [str(index) for index in range(largest + 1)]


def _segmentation_label_maps(dataset):
    """examples -> one PIL label map ("L") per example, from the columns `dataset` has."""
    import numpy as np
    from PIL import Image

    if _has_object_masks(dataset):

        def drawn(examples):
            maps = []
            for masks, objects in zip(examples["masks"], examples["objects"]):
                label_map = np.zeros(masks[0].size[::-1] if masks else (0, 0), dtype=np.uint8)
                for mask, category in zip(masks, objects["category"]):  # visible parts: they never overlap
                    label_map[np.asarray(mask, dtype=bool)] = category + 1
                maps.append(Image.fromarray(label_map, mode="L"))
            return maps

        return drawn
    column = find_column(dataset, MASK_COLUMNS, "mask")

    def given(examples):
        maps = []
        for label_map in examples[column]:
            values = np.asarray(label_map)
            if values.ndim != 2:
                raise ValueError(f"column {column!r} must hold single-channel label maps, got shape {values.shape}")
            maps.append(Image.fromarray(values.astype(np.int32), mode="I"))
        return maps

    return given


def _segmentation_transform(image_processor, train, dataset, augment=True, **_):
    from .transforms import segmentation_transform

    return segmentation_transform(
        image_processor,
        train and augment,
        image_column(dataset),
        _segmentation_label_maps(dataset),
        SEGMENTATION_IGNORE_INDEX,
    )


def _segmentation_model_config(config):
    from ..models import VitlmSegmenterConfig

    # a dual encoder segments open-vocabulary; an image tower (preset or checkpoint) gets Segmenter's head
    if hasattr(config, "text_config") or isinstance(config, VitlmSegmenterConfig):
        return config
    return VitlmSegmenterConfig(vision_config=config)


def _segmented_classes(train_set, eval_set, class_names):
    # an open-vocabulary segmenter queries, in training, the classes that have pixels in the training set (as the
    # detector does); the shapes world's held-out pairs are then never queried before evaluation
    if not _has_object_masks(train_set):
        return {}
    present = sorted({int(category) + 1 for row in train_set["objects"] for category in row["category"]})
    return {"train_query_classes": present}


def _segmentation_parts(model, processor, class_names=None, templates=(), train_query_classes=None, **_):
    from .collators import OpenVocabularySegmentationCollator, SegmentationCollator
    from .metrics import segmentation_metrics

    metrics = segmentation_metrics(len(class_names), SEGMENTATION_IGNORE_INDEX)
    if not hasattr(model.config, "text_config"):
        return TaskParts(SegmentationCollator(), compute_metrics=metrics)
    text = dict(
        tokenizer=processor.tokenizer,
        class_names=class_names,
        template=templates[0],
        max_length=model.config.text_config.max_position_embeddings,
        ignore_index=SEGMENTATION_IGNORE_INDEX,
    )
    # classes left out of a training batch's queries teach "nothing" for the unasked ones; leaving out half kept the
    # shapes world's trial runs near "all background" for longer than a quarter does
    train_collator = OpenVocabularySegmentationCollator(**text, query_classes=train_query_classes, drop_rate=0.25)
    collator = OpenVocabularySegmentationCollator(**text)
    return TaskParts(collator, train_collator=train_collator, compute_metrics=metrics)


# ---- masked image modeling (MAE; the model inpaints)


def _masked_image_model_config(config):
    from ..models import VitlmViTMAEConfig

    # a plain ViT (preset or checkpoint) is the encoder: the MAE head's config extends it, with the head's defaults
    return config if isinstance(config, VitlmViTMAEConfig) else VitlmViTMAEConfig.from_encoder_config(config)


def _masked_image_transform(image_processor, train, dataset, augment=True, **_):
    from .transforms import inpainting_transform

    return inpainting_transform(image_processor, train and augment, image_column(dataset))


def _masked_image_parts(model, processor, block_masking=False, **_):
    from .collators import InpaintingCollator
    from .metrics import inpainting_metrics

    image_processor = getattr(processor, "image_processor", processor)
    compute_metrics = None
    if not model.config.norm_pix_loss:
        compute_metrics = inpainting_metrics(
            model.config.patch_size, image_processor.image_mean, image_processor.image_std
        )
    return TaskParts(
        InpaintingCollator(),
        train_collator=InpaintingCollator(model.config.grid_size, block_masking),
        compute_metrics=compute_metrics,
        # the image is its own target: naming it the label makes evaluation compute the loss and hand the original
        # pixels to the metric
        arguments=(("label_names", ["pixel_values"]),),
    )


# ---- synthesis inpainting (MaskGIT over a k-means codebook of pixel squares; `--head synthesis`)


def _synthesis_model_config(config):
    from ..models import VitlmViTSynthesisConfig

    # a plain ViT (preset or checkpoint) is the encoder: the synthesis head's config extends it with its defaults
    return (
        config if isinstance(config, VitlmViTSynthesisConfig) else VitlmViTSynthesisConfig.from_encoder_config(config)
    )


def _synthesis_parts(model, processor, **_):
    from .collators import SynthesisMaskingCollator

    # the images are what the loss reads: naming them the labels makes evaluation compute it
    return TaskParts(SynthesisMaskingCollator(model.config.grid_size), arguments=(("label_names", ["pixel_values"]),))


def _synthesis_settings(values):
    from .self_supervised import SynthesisSettings

    return SynthesisSettings.from_dict(values)


def _synthesis_model(model, train_set, image_processor, settings=None):
    from .self_supervised import synthesis_model

    return synthesis_model(model, train_set, image_processor, settings)


SYNTHESIS_HEAD = (
    ("description", "a synthesis inpainting model (MaskGIT-style sampling of k-means patch codes)"),
    ("options", frozenset({"head", "recipe_settings"})),
    ("settings", _synthesis_settings),
    ("ignored_outputs", ("logits", "mask", "hidden_states", "attentions")),
    ("parts", _synthesis_parts),
    ("model_config", _synthesis_model_config),
    ("training_model", _synthesis_model),
)


# ---- self-distillation (DINO): the image tower learns without labels; the teacher's tower is the result


def _dino_settings(values):
    from .self_supervised import DinoSettings

    return DinoSettings.from_dict(values)


def _dino_transform(image_processor, train, dataset, settings, augment=True, patch_size=16, **_):
    from .transforms import multi_crop_transform

    # the crops are the method: `augment=False` is not DINO
    return multi_crop_transform(
        image_processor,
        train,
        image_column(dataset),
        patch_size,
        num_local_crops=settings.num_local_crops,
        global_scale=settings.global_crop_scale,
        local_scale=settings.local_crop_scale,
        hue=settings.hue_jitter,
        grayscale=settings.grayscale_probability,
    )


def _dino_parts(model, processor, **_):
    from .collators import MultiCropCollator
    from .self_supervised import TeacherMomentum

    # the global crops are what the loss compares: naming them the labels makes evaluation compute it
    return TaskParts(
        MultiCropCollator(), arguments=(("label_names", ["global_crops"]),), callbacks=(TeacherMomentum(),)
    )


def _dino_model(model, train_set, image_processor, settings):
    from .self_supervised import dino_model

    return dino_model(model, train_set, image_processor, settings)


def _dino_saved_models(model):
    from .self_supervised import dino_saved_models

    return dino_saved_models(model)


# ---- masked visual-token prediction (BEiT): the tower learns without labels from a k-means visual tokenizer


def _beit_model_config(config):
    if not hasattr(config, "use_mask_token"):  # the mask token replaces single-scale patch embeddings
        raise ValueError(f"BEiT pretraining needs a ViT or hybrid image tower, got a {config.model_type} model")
    return config if config.use_mask_token else type(config)(**{**config.to_dict(), "use_mask_token": True})


def _beit_settings(values):
    from .self_supervised import BeitSettings

    return BeitSettings.from_dict(values)


def _beit_parts(model, processor, **_):
    from .collators import BlockMaskingCollator

    # the images are what the loss reads: naming them the labels makes evaluation compute it
    collator = BlockMaskingCollator(model.config.grid_size, model.settings.mask_ratio)
    return TaskParts(collator, arguments=(("label_names", ["pixel_values"]),))


def _beit_model(model, train_set, image_processor, settings):
    from .self_supervised import beit_model

    return beit_model(model, train_set, image_processor, settings)


def _beit_saved_models(model):
    from .self_supervised import beit_saved_models

    return beit_saved_models(model)


TASKS: dict[str, TrainingTask] = {
    task.name: task
    for task in (
        TrainingTask(
            name="image-classification",
            alias="classify",
            title="classification",
            description="an image classifier",
            auto_class="AutoModelForImageClassification",
            dual_encoder=False,
            class_column="label",
            needs_classes=True,
            sized_head=True,
            # the classes seen in training: the held-out shape x colour pairs are never among its labels
            shapes_eval_split="validation",
            options=frozenset({"mixup_alpha", "cutmix_alpha"}),
            ignored_outputs=("hidden_states", "attentions"),
            transform=_classification_transform,
            parts=_classification_parts,
        ),
        TrainingTask(
            name="zero-shot-image-classification",
            alias="contrastive",
            title="contrastive training",
            description="a CLIP-style dual encoder trained with a contrastive image-text loss",
            auto_class="AutoModel",
            dual_encoder=True,
            class_column="label",
            needs_classes=False,
            sized_head=False,
            shapes_eval_split="test",
            options=frozenset({"caption_weights", "twin_weight"}),
            ignored_outputs=(
                "logits_per_image",
                "logits_per_text",
                "text_embeds",
                "text_model_output",
                "vision_model_output",
            ),
            transform=_contrastive_transform,
            parts=_contrastive_parts,
            evaluation_inputs=_zero_shot_labels,
        ),
        TrainingTask(
            name="zero-shot-object-detection",
            alias="detect",
            title="detection",
            description="an open-vocabulary (OWL-ViT style) object detector queried with class names",
            auto_class="AutoModelForZeroShotObjectDetection",
            dual_encoder=True,
            class_column="objects",
            needs_classes=True,
            sized_head=False,
            shapes_eval_split="test",
            options=frozenset({"bbox_format"}),
            ignored_outputs=(
                "loss_dict",
                "class_embeds",
                "image_embeds",
                "query_embeds",
                "vision_model_output",
                "text_model_output",
            ),
            transform=_detection_transform,
            parts=_detection_parts,
            evaluation_inputs=_queried_classes,
        ),
        TrainingTask(
            name="image-segmentation",
            alias="segment",
            title="segmentation",
            description=(
                "a semantic segmenter (Segmenter's head on an image tower; on a dual encoder, open-vocabulary: "
                "queried with class names)"
            ),
            auto_class="AutoModelForSemanticSegmentation",
            dual_encoder=None,
            class_column="masks",
            needs_classes=True,
            sized_head=True,
            shapes_eval_split="test",
            options=frozenset(),
            ignored_outputs=(
                "hidden_states",
                "attentions",
                "query_embeds",
                "vision_model_output",
                "text_model_output",
            ),
            transform=_segmentation_transform,
            parts=_segmentation_parts,
            evaluation_inputs=_segmented_classes,
            model_config=_segmentation_model_config,
        ),
        TrainingTask(
            name="masked-image-modeling",
            alias="inpaint",
            title="inpainting",
            description="a masked-autoencoder (MAE) inpainting model",
            auto_class="AutoModelForMaskedImageModeling",
            dual_encoder=False,
            class_column=None,
            needs_classes=False,
            sized_head=False,
            shapes_eval_split="test",
            options=frozenset({"block_masking", "head"}),
            ignored_outputs=("ids_restore", "hidden_states", "attentions"),
            transform=_masked_image_transform,
            parts=_masked_image_parts,
            model_config=_masked_image_model_config,
            default_head="mae",
            heads=(("synthesis", SYNTHESIS_HEAD),),
        ),
        TrainingTask(
            name="self-distillation",
            alias="dino",
            title="self-distillation (DINO)",
            description="an image tower pretrained without labels by DINO's self-distillation (the teacher's tower)",
            auto_class="AutoModel",
            dual_encoder=False,
            class_column=None,
            needs_classes=False,
            sized_head=False,
            shapes_eval_split="test",
            options=frozenset({"recipe_settings"}),
            ignored_outputs=("teacher_entropy",),
            transform=_dino_transform,
            parts=_dino_parts,
            training_model=_dino_model,
            saved_models=_dino_saved_models,
            settings=_dino_settings,
        ),
        TrainingTask(
            name="masked-token-prediction",
            alias="beit",
            title="masked visual-token prediction (BEiT)",
            description="an image tower pretrained without labels by BEiT's masked visual-token prediction",
            auto_class="AutoModel",
            dual_encoder=False,
            class_column=None,
            needs_classes=False,
            sized_head=False,
            shapes_eval_split="test",
            options=frozenset({"recipe_settings"}),
            ignored_outputs=("accuracy",),
            transform=_masked_image_transform,
            parts=_beit_parts,
            model_config=_beit_model_config,
            training_model=_beit_model,
            saved_models=_beit_saved_models,
            settings=_beit_settings,
        ),
    )
}
ALIASES = {task.alias: task.name for task in TASKS.values()}


def get_task(task, head: str | None = None) -> TrainingTask:
    """The `TrainingTask` named `task` (a name or an alias; a `TrainingTask` is returned as it is), with `head` (one
    of its `heads`, or its `default_head`; None: the default) in place of its default head."""
    if isinstance(task, TrainingTask):
        spec = task
    else:
        name = ALIASES.get(task, task)
        if name not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)} (or their aliases {sorted(ALIASES)}), got {task!r}")
        spec = TASKS[name]
    if head is None or head == spec.default_head:
        return spec
    heads = dict(spec.heads)
    if head not in heads:
        known = [spec.default_head, *heads] if spec.default_head else []
        raise ValueError(f"the head (--head) of {spec.name!r} must be one of {known}, got {head!r}")
    return replace(spec, **dict(heads[head]))


def check_task_options(task, **values):
    """Refuse a task-specific option set away from its off value on a task it does not apply to, naming the tasks it
    applies to and the task as given."""
    default = get_task(task)
    head = values.get("head") if "head" in default.options else None
    spec = get_task(task, head)
    for keyword, value in values.items():
        text, off = TASK_OPTIONS[keyword]
        if value != off and keyword in default.options and keyword not in spec.options:
            raise ValueError(f"{text} to the {default.default_head} head of {default.name!r}, not to --head {head}")
        if value != off and keyword not in spec.options:
            owners = " and ".join(other.title for other in TASKS.values() if keyword in other.options)
            raise ValueError(f"{text} to {owners}, not {getattr(task, 'name', task)!r}")


def class_names_of(task, dataset) -> list[str] | None:
    """The class names the task trains on, from the dataset's `ClassLabel` (see `TrainingTask.class_column`)."""
    spec = get_task(task)
    names = None
    if spec.class_column == "masks":
        names = segmentation_class_names(dataset)
    elif spec.class_column == "objects":
        category = dataset.features[find_column(dataset, ("objects",), "objects")]["category"]
        names = list(getattr(category, "feature", category).names)
    elif spec.class_column is not None:
        label = next((c for c in LABEL_COLUMNS if c in dataset.column_names), None)
        names = getattr(dataset.features[label], "names", None) if label else None
    if spec.needs_classes and names is None:
        raise ValueError(f"{spec.title} needs a ClassLabel column named {' or '.join(map(repr, LABEL_COLUMNS))}")
    return names


def warn_of_untrained_classes(task, train_set, eval_set, class_names) -> list[str]:
    """Warn of (and return) the classes the evaluation split holds that no training example has (an image folder's
    `test/bird` without a `train/bird`, or a small draw of the shapes world): a head sized to the classes scores them
    untrained, which the evaluation metrics then include."""
    if not get_task(task).sized_head or eval_set is None or not class_names:
        return []
    trained = set(train_set[find_column(train_set, LABEL_COLUMNS, "label")])
    evaluated = set(eval_set[find_column(eval_set, LABEL_COLUMNS, "label")])
    untrained = sorted(class_names[index] for index in evaluated - trained)
    if untrained:
        logger.warning(
            "vitlm train: the evaluation split has %d classes no training image has (%s%s): the head scores them "
            "untrained",
            len(untrained),
            ", ".join(untrained[:5]),
            ", ..." if len(untrained) > 5 else "",
        )
    return untrained


def auto_class(task):
    """The transformers Auto class of `task`."""
    import transformers

    return getattr(transformers, get_task(task).auto_class)


__all__ = [
    "ALIASES",
    "TASKS",
    "TASK_OPTIONS",
    "TaskParts",
    "TrainingTask",
    "auto_class",
    "check_task_options",
    "class_names_of",
    "find_column",
    "get_task",
    "image_column",
    "warn_of_untrained_classes",
]
