import pytest
import torch

from tests.conftest import tiny_clip_config, tiny_config
from vitlm import VitlmDualEncoderModel, VitlmPiTForImageClassification, VitlmViTForImageClassification
from vitlm.clip_bpe import clip_tokenizer
from vitlm.data.shapes import CATEGORIES, COLOURS, HELD_OUT, SHAPES, generate
from vitlm.models import VitlmImageProcessor
from vitlm.training import (
    ClassificationCollator,
    ContrastiveCollator,
    DetectionCollator,
    layerwise_lr_decay_groups,
    soft_target_cross_entropy,
    twin_contrastive_loss,
)
from vitlm.training.trainer import parameter_depths
from vitlm.training.transforms import (
    EpochSeed,
    augmentation,
    contrastive_transform,
    grouped_pixel_values,
    pixel_values,
    with_example_index,
)


def test_layerwise_lr_decay_groups():
    model = VitlmViTForImageClassification(tiny_config("vit", num_labels=3))  # 2 blocks
    groups = layerwise_lr_decay_groups(model, lr=1.0, decay=0.5, weight_decay=0.1)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)  # every parameter, once
    depths, num_layers = parameter_depths(model)
    assert num_layers == 2
    assert {depths[n] for n in named if "embed" in n or "cls_token" in n} == {0}
    assert {depths[n] for n in named if n.startswith("classifier")} == {3}
    assert sorted(set(depths.values())) == [0, 1, 2, 3]
    for name, parameter in named.items():
        lr, weight_decay = lr_of[id(parameter)]
        assert lr == pytest.approx(0.5 ** (3 - depths[name]))
        assert weight_decay == (0.0 if name.endswith("bias") or "norm" in name else 0.1), name


def test_mixup_collator_makes_soft_targets_and_matching_loss():
    torch.manual_seed(0)
    examples = [{"pixel_values": torch.randn(3, 8, 8), "labels": i % 4} for i in range(6)]
    plain = ClassificationCollator(num_labels=4)(examples)
    assert plain["labels"].tolist() == [0, 1, 2, 3, 0, 1]
    mixed = ClassificationCollator(num_labels=4, mixup_alpha=1.0)(examples)
    assert mixed["labels"].shape == (6, 4)
    torch.testing.assert_close(mixed["labels"].sum(-1), torch.ones(6))
    assert not torch.equal(mixed["pixel_values"], plain["pixel_values"])
    # soft targets that are one-hot give the ordinary cross-entropy
    logits = torch.randn(6, 4)
    one_hot = torch.nn.functional.one_hot(plain["labels"], 4).float()
    expected = torch.nn.functional.cross_entropy(logits, plain["labels"])
    torch.testing.assert_close(soft_target_cross_entropy({"logits": logits}, one_hot), expected)
    torch.testing.assert_close(soft_target_cross_entropy({"logits": logits}, plain["labels"]), expected)


@pytest.fixture(scope="module")
def twin_batch():
    """A tiny dual encoder and a collated batch of three shapes-world images (1-3 objects) with their twins."""
    config = tiny_clip_config()
    size = config.vision_config.image_size
    processor = VitlmImageProcessor(size={"height": size, "width": size}, crop_size={"height": size, "width": size})
    data = generate(3, seed=0, split="train", image_size=32, max_objects=3, twins=True)
    transform = contrastive_transform(
        processor, True, caption_column="captions", augment_images=False, twin_columns=("twins", "twin_captions")
    )
    examples = data.with_transform(transform)
    examples = [examples[i] for i in range(len(examples))]
    tokenizer = clip_tokenizer(context_length=config.text_config.max_position_embeddings)
    torch.manual_seed(0)
    return VitlmDualEncoderModel(config), tokenizer, examples, ContrastiveCollator(tokenizer)(examples)


def test_twin_collator_puts_twins_and_their_captions_after_the_pairs(twin_batch):
    _, tokenizer, examples, batch = twin_batch
    assert "return_loss" not in batch  # the model would pair all 3 + 6 images with all texts
    assert batch["pixel_values"].shape[0] == 3 + 3 * 2
    for i, example in enumerate(examples):
        assert torch.equal(batch["pixel_values"][i], example["pixel_values"])
        assert torch.equal(batch["pixel_values"][3 + 2 * i : 5 + 2 * i], example["twin_pixel_values"])
    texts = [text.replace(" ,", ",") for text in tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)]
    assert texts[:3] == [example["caption"] for example in examples]
    twin_texts = texts[3:]
    # each distinct caption once, whichever examples share it
    assert len(twin_texts) == len({text for example in examples for kept in example["twin_captions"] for text in kept})
    assert len(twin_texts) > len(SHAPES) + len(COLOURS)  # not the same captions for every example
    index = batch["twin_caption_index"]
    assert index.shape == (3, 2, len(COLOURS))
    for example, twins in zip(examples, index.tolist()):
        for captions, numbers in zip(example["twin_captions"], twins):
            assert [twin_texts[n] for n in numbers if n >= 0] == captions
            assert numbers[len(captions) :] == [-1] * (len(COLOURS) - len(captions))  # padding


def test_twin_loss_is_the_contrastive_loss_plus_the_weighted_score_changes(twin_batch):
    model, _, _, batch = twin_batch
    inputs = {key: value for key, value in batch.items() if key != "twin_caption_index"}
    outputs = model(**inputs)
    total, contrastive, consistency = twin_contrastive_loss(outputs, batch["twin_caption_index"], model, 10.0)
    pairs = model(pixel_values=inputs["pixel_values"][:3], input_ids=inputs["input_ids"][:3], return_loss=True)
    torch.testing.assert_close(contrastive, pairs.loss)
    # by hand: per twin, the mean squared change of the cosine similarity with each of its captions
    images, texts = outputs.image_embeds, outputs.text_embeds
    expected = 0.0
    for twin in range(2):
        changes = [
            (images[i] - images[3 + 2 * i + twin]) @ texts[3 + n]
            for i in range(3)
            for n in batch["twin_caption_index"][i, twin].tolist()
            if n >= 0
        ]
        expected = expected + torch.stack(changes).square().mean()
    torch.testing.assert_close(consistency, expected)
    assert consistency > 0
    torch.testing.assert_close(total, contrastive + 10 * consistency)
    # twins identical to their images change no score
    same = dict(
        inputs,
        pixel_values=torch.cat([inputs["pixel_values"][:3], inputs["pixel_values"][:3].repeat_interleave(2, 0)]),
    )
    assert twin_contrastive_loss(model(**same), batch["twin_caption_index"], model, 10.0)[2] < 1e-10


def test_twins_share_the_images_augmentation():
    processor = VitlmImageProcessor(size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16})
    image = generate(1, seed=0, image_size=32)[0]["image"]
    with EpochSeed().rng(7):
        group = grouped_pixel_values([[image, image.copy()]], processor, augmentation(processor))[0]
    torch.testing.assert_close(group[0], group[1], rtol=0, atol=0)
    assert not torch.equal(group[0], pixel_values([image], processor)[0])  # augmented


def test_twins_leave_the_images_augmentation_and_caption_as_they_were():
    processor = VitlmImageProcessor(size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16})
    data = with_example_index(generate(6, seed=0, split="train", image_size=32, twins=True))

    def transformed(twin_columns):
        transform = contrastive_transform(processor, True, caption_column="captions", twin_columns=twin_columns)
        transform.set_epoch(2, seed=5)
        return data.with_transform(transform)[:]

    plain, twinned = transformed(None), transformed(("twins", "twin_captions"))
    assert twinned["caption"] == plain["caption"]
    torch.testing.assert_close(
        torch.stack(twinned["pixel_values"]), torch.stack(plain["pixel_values"]), rtol=0, atol=0
    )
    assert [len(twins) for twins in twinned["twin_pixel_values"]] == [2] * 6


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: e.update(twin_pixel_values=e["twin_pixel_values"][:1]), "same number"),
        (lambda e: e.update(twin_captions=e["twin_captions"][:1]), "one list of captions per twin"),
        (lambda e: e.update(twin_captions=["a circle", "a red shape"]), "non-empty list of caption strings"),
        (lambda e: e.update(twin_captions=[["a circle"], []]), "non-empty list of caption strings"),
    ],
)
def test_bad_twins_are_named(twin_batch, change, message):
    _, tokenizer, examples, _ = twin_batch
    broken = [dict(example) for example in examples]
    change(broken[1])
    with pytest.raises(ValueError, match=message):
        ContrastiveCollator(tokenizer)(broken)


def test_detection_queries_can_leave_classes_out_and_renumber_the_labels():
    tokenizer = clip_tokenizer(context_length=16)
    collator = DetectionCollator(tokenizer, ["circle", "star", "cross"], "a {}", query_classes=[0, 2])
    assert collator.num_queries == 2
    assert tokenizer.batch_decode(collator.queries["input_ids"], skip_special_tokens=True) == ["a circle", "a cross"]
    example = {
        "pixel_values": torch.zeros(3, 8, 8),
        "boxes": torch.rand(3, 4),
        "class_labels": torch.tensor([2, 0, 2]),
    }
    batch = collator([example, {**example, "class_labels": torch.tensor([0, 0, 0])}])
    assert batch["input_ids"].shape[0] == 2 * 2
    assert [labels["class_labels"].tolist() for labels in batch["labels"]] == [[1, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="not queried"):
        collator([{**example, "class_labels": torch.tensor([1])}])
    everything = DetectionCollator(tokenizer, ["circle", "star", "cross"], "a {}")
    assert everything([example])["labels"][0]["class_labels"].tolist() == [2, 0, 2]


def test_detection_training_queries_only_the_classes_with_boxes(tmp_path):
    from vitlm.training.run import train

    trainer = train(
        "detect",
        "clip-tiny-test",
        "shapes",
        tmp_path / "out",
        max_steps=1,
        batch_size=8,
        shapes_train=16,
        shapes_test=8,
        shapes_size=32,
        save_checkpoints=False,
    )
    present = sorted({c for objects in generate(16, seed=42, image_size=32)["objects"] for c in objects["category"]})
    assert trainer.train_data_collator.query_classes == present
    assert not {CATEGORIES.index(f"{c} {s}") for s, c in HELD_OUT} & set(present)  # never trained as negatives
    assert trainer.data_collator.num_queries == len(CATEGORIES)  # evaluation queries every class


def test_layer_decay_counts_blocks_across_pit_stages():
    """PiT's stages restart their block numbering; depths follow the blocks' order through the whole tower, and a
    token pooling sits at the depth of the blocks before it."""
    model = VitlmPiTForImageClassification(tiny_config("pit", num_labels=3, depths=[2, 1]))
    depths, num_layers = parameter_depths(model)
    assert num_layers == 3
    assert depths["vit.embeddings.projection.weight"] == depths["vit.embeddings.cls_token"] == 0
    assert depths["vit.stages.0.layers.1.mlp.fc1.weight"] == 2
    assert depths["vit.stages.1.pooling.conv.weight"] == 2
    assert depths["vit.stages.1.layers.0.mlp.fc1.weight"] == 3
    assert depths["vit.layernorm.weight"] == depths["classifier.weight"] == 4


def test_layer_decay_of_a_dual_encoder_follows_each_tower():
    model = VitlmDualEncoderModel(tiny_clip_config())
    depths, num_layers = parameter_depths(model)
    assert num_layers == model.config.vision_config.num_hidden_layers
    assert depths["vision_model.encoder.layers.0.mlp.fc1.weight"] == 1
    assert depths["text_model.encoder.layers.1.mlp.fc1.weight"] == 2
    assert depths["text_model.token_embedding.weight"] == 0
    assert depths["visual_projection.weight"] == depths["logit_scale"] == num_layers + 1
