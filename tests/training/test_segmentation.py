"""`vitlm train image-segmentation` (alias `segment`): label maps from the shapes world's masks or a mask column,
through the processor's geometry; the open-vocabulary collator's queries; mIoU and pixel accuracy; a run of each
head, and a run resumed mid-epoch ending where an uninterrupted one does."""

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Features, Image
from safetensors.torch import load_file
from transformers import AutoModelForSemanticSegmentation

from tests.training.test_resume import KillAfterCheckpoint, Killed, RecordSteps
from vitlm import VitlmDualEncoderForSemanticSegmentation, VitlmViTForSemanticSegmentation
from vitlm.clip_bpe import clip_tokenizer
from vitlm.data.shapes import CATEGORIES, generate
from vitlm.models import VitlmImageProcessor
from vitlm.training.collators import OpenVocabularySegmentationCollator
from vitlm.training.metrics import per_class_iou, segmentation_confusion, segmentation_metrics
from vitlm.training.run import train
from vitlm.training.tasks import class_names_of, get_task
from vitlm.training.transforms import label_map_to_processed

SEGMENT = get_task("segment")


def test_the_task_answers_to_its_pipeline_tag_and_alias():
    assert SEGMENT is get_task("image-segmentation") and SEGMENT.auto_class == "AutoModelForSemanticSegmentation"


def test_shapes_label_maps_put_each_category_on_its_visible_pixels():
    data = generate(3, seed=0, split="train", max_objects=3)
    assert class_names_of(SEGMENT, data) == ["background", *CATEGORIES]
    processor = VitlmImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False)
    transform = SEGMENT.transform(processor, False, data, augment=False)
    labels = transform(data[:3])["labels"]
    for row, label_map in zip(data, labels):
        expected = np.zeros((64, 64), dtype=np.int64)
        for mask, category in zip(row["masks"], row["objects"]["category"]):
            expected[np.asarray(mask, dtype=bool)] = category + 1
        assert (label_map.numpy() == expected).all()


def test_a_mask_column_is_read_as_class_indices_and_cropped_like_the_image():
    label_map = np.zeros((20, 40), dtype=np.uint8)
    label_map[:, 20:] = 2
    image = PIL.Image.new("RGB", (40, 20))
    data = Dataset.from_dict(
        {"image": [image], "annotation": [PIL.Image.fromarray(label_map)]},
        features=Features({"image": Image(), "annotation": Image()}),
    )
    assert class_names_of(SEGMENT, data) == ["0", "1", "2"]
    processor = VitlmImageProcessor(size=10, crop_size=10)  # 20 x 10, cropped to its middle 10 x 10
    labels = SEGMENT.transform(processor, False, data, augment=False)(data[:1])["labels"][0]
    expected = np.zeros((10, 10), dtype=np.int64)
    expected[:, 5:] = 2  # resized columns 10.. are class 2; the crop starts at column 5
    assert (labels.numpy() == expected).all()
    # a crop larger than the image pads with the ignored label
    padded = label_map_to_processed(PIL.Image.fromarray(label_map), VitlmImageProcessor(size=20, crop_size=24), 255)
    assert padded.shape == (24, 24) and (padded[:2] == 255).all() and (padded[2:22, 2:22] != 255).all()


def test_open_vocabulary_batches_renumber_labels_to_the_queries_kept():
    names = ["background", "red circle", "blue square", "green star"]
    examples = [
        {"pixel_values": torch.zeros(3, 4, 4), "labels": torch.tensor([[0, 1], [2, 3]]), "example_index": 0},
        {"pixel_values": torch.zeros(3, 4, 4), "labels": torch.tensor([[3, 255], [1, 1]]), "example_index": 1},
    ]
    collator = OpenVocabularySegmentationCollator(clip_tokenizer(), names, "a {}", max_length=77)
    batch = collator(examples)
    assert batch["input_ids"].shape[0] == 6  # 3 queries per image
    assert batch["labels"].tolist() == [[[0, 1], [2, 3]], [[3, 255], [1, 1]]]
    only = OpenVocabularySegmentationCollator(clip_tokenizer(), names, "a {}", max_length=77, query_classes=[3, 1])
    assert only(examples)["labels"].tolist() == [[[0, 2], [0, 1]], [[1, 255], [2, 2]]]
    dropping = OpenVocabularySegmentationCollator(clip_tokenizer(), names, "a {}", max_length=77, drop_rate=0.5)
    dropping.set_epoch(0, seed=0)
    draws = [dropping(examples) for _ in range(2)]
    assert torch.equal(draws[0]["labels"], draws[1]["labels"])  # keyed by the batch's first example index
    kept = draws[0]["input_ids"].shape[0] // 2
    assert 1 <= kept <= 3 and int(draws[0]["labels"][draws[0]["labels"] != 255].max()) <= kept
    with pytest.raises(ValueError, match="class 7"):
        collator([{**examples[0], "labels": torch.tensor([[7]])}])


def test_miou_and_pixel_accuracy_on_a_hand_made_case():
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 255]]])
    logits = torch.nn.functional.one_hot(torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 0]]]), 3).permute(0, 3, 1, 2).float()
    confusion = segmentation_confusion(logits, labels, 3)
    assert confusion.tolist() == [[3, 1, 0], [0, 3, 0], [0, 0, 0]]
    iou = per_class_iou(confusion)
    assert iou[0] == 3 / 4 and iou[1] == 3 / 4 and np.isnan(iou[2])
    metrics = segmentation_metrics(3)(type("Prediction", (), {"predictions": logits.numpy(), "label_ids": labels})())
    assert metrics == {"mean_iou": 0.75, "pixel_accuracy": 6 / 7}


@pytest.mark.parametrize("model_name", ["segmenter-tiny-test", "vit-tiny-test", "clip-tiny-test"])
def test_a_run_trains_and_saves_a_reloadable_segmenter(tmp_path, model_name):
    trainer = train(
        "segment",
        model_name,
        "shapes",
        tmp_path,
        max_steps=2,
        batch_size=4,
        shapes_train=8,
        shapes_test=4,
        shapes_size=32,
        augment=False,
        save_checkpoints=False,
    )
    evaluation = [entry for entry in trainer.state.log_history if "eval_mean_iou" in entry][-1]
    assert 0 <= evaluation["eval_mean_iou"] <= 1 and 0 <= evaluation["eval_pixel_accuracy"] <= 1
    model = AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    expected = (
        VitlmDualEncoderForSemanticSegmentation if model_name.startswith("clip") else VitlmViTForSemanticSegmentation
    )
    assert type(model) is expected
    assert model.config.id2label[0] == "background" and model.config.num_labels == 49


def run(output_dir, resume=False, callbacks=None):
    # 16 examples in batches of 4: 4 steps an epoch; checkpoints every 3 steps, so step 3 is inside epoch 0
    return train(
        "segment",
        "clip-tiny-test",
        "shapes",
        output_dir,
        max_steps=6,
        batch_size=4,
        lr=2e-3,
        seed=3,
        shapes_train=16,
        shapes_test=4,
        shapes_size=32,
        eval_steps=3,
        logging_steps=1,
        resume=resume,
        callbacks=callbacks,
    )


def test_a_run_resumed_mid_epoch_equals_an_uninterrupted_run(tmp_path):
    """Flips and the queries each batch leaves out are drawn from (seed, epoch, example index)."""
    run(tmp_path / "straight")
    with pytest.raises(Killed):
        run(tmp_path / "resumed", callbacks=[KillAfterCheckpoint(step=3)])
    steps = RecordSteps()
    run(tmp_path / "resumed", resume=True, callbacks=[steps])
    assert steps.steps == [4, 5, 6]
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
