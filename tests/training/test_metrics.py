import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from vitlm.models.image_processing_vitlm import VitlmImageProcessor
from vitlm.training.metrics import (
    accuracy,
    average_precision,
    classification_metrics,
    masked_psnr,
    mean_average_precision,
)
from vitlm.training.transforms import boxes_to_processed


def test_accuracy_and_top_k():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    labels = np.array([1, 1, 2, 1])
    assert accuracy(logits, labels) == 0.5  # rows 0 and 2
    assert accuracy(logits, labels, k=2) == 0.75  # row 1's label is third
    metrics = classification_metrics(num_labels=3)(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics == {"accuracy": 0.5}  # no top-5 with 3 classes


def one(boxes, labels, scores=None):
    entry = {"boxes": np.array(boxes, dtype=float), "labels": np.array(labels)}
    if scores is not None:
        entry["scores"] = np.array(scores, dtype=float)
    return entry


def test_perfect_detections_score_one():
    truths = [one([[0, 0, 10, 10], [20, 20, 30, 40]], [0, 1]), one([[5, 5, 15, 15]], [1])]
    detections = [one(t["boxes"], t["labels"], [0.9] * len(t["labels"])) for t in truths]
    assert mean_average_precision(detections, truths) == {"map": 1.0, "map_50": 1.0, "map_75": 1.0}


def test_iou_thresholds():
    # IoU of [0, 0, 10, 10] with [0, 0, 10, 6.2] is 0.62: a hit at 0.5, 0.55, 0.6, a miss from 0.65 on
    truths = [one([[0, 0, 10, 10]], [0])]
    detections = [one([[0, 0, 10, 6.2]], [0], [0.8])]
    result = mean_average_precision(detections, truths)
    assert result["map_50"] == 1.0 and result["map_75"] == 0.0
    assert result["map"] == pytest.approx(0.3)


def test_false_positive_ranked_first_halves_precision():
    truths = [one([[0, 0, 10, 10]], [0])]
    detections = [one([[50, 50, 60, 60], [0, 0, 10, 10]], [0, 0], [0.9, 0.5])]
    assert average_precision(detections, truths, 0.5) == {0: pytest.approx(0.5)}


def test_half_recall_and_wrong_class():
    # two objects of class 0, one found with the top score; a lower-scored false positive; a class-1 detection on
    # the other object does not count for class 0. Precision 1 up to recall 0.5, then nothing: 51 of 101 points.
    truths = [one([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    detections = [one([[0, 0, 10, 10], [40, 40, 50, 50], [20, 20, 30, 30]], [0, 0, 1], [0.9, 0.4, 0.8])]
    assert average_precision(detections, truths, 0.5) == {0: pytest.approx(51 / 101)}


def test_duplicate_detection_is_a_false_positive():
    truths = [one([[0, 0, 10, 10]], [0]), one([[0, 0, 10, 10]], [0])]
    # image 0 found twice (the duplicate scored between), image 1 found last: precision 1, 1/2, 2/3 at recalls
    # 0.5, 0.5, 1 -> envelope 1 up to 0.5 and 2/3 after
    detections = [one([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0], [0.9, 0.7]), one([[0, 0, 10, 10]], [0], [0.6])]
    expected = (51 * 1 + 50 * 2 / 3) / 101
    assert average_precision(detections, truths, 0.5) == {0: pytest.approx(expected)}


def test_masked_psnr_counts_masked_patches_only():
    mean, std = [0.5] * 3, [0.5] * 3
    target = torch.zeros(1, 3, 4, 4)  # normalized 0 = grey 0.5
    patches = torch.zeros(1, 4, 2 * 2 * 3)
    patches[0, 0] = 0.2  # masked patch: off by 0.1 in [0, 1] pixels -> MSE 0.01 -> 20 dB
    patches[0, 1] = 1.0  # visible patch: a large error that must not count
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])  # patch 3 is masked and exact -> infinite PSNR, clamped
    psnr_one = masked_psnr(patches, target, torch.tensor([[1.0, 0, 0, 0]]), 2, mean, std)
    assert psnr_one == pytest.approx(20.0)
    # two masked patches, MSE (0.01 + 0) / 2 = 0.005 -> 23.01 dB
    assert masked_psnr(patches, target, mask, 2, mean, std) == pytest.approx(10 * np.log10(200))


def test_boxes_follow_the_processor_resize_and_crop():
    processor = VitlmImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    # a 128 x 64 (width x height) image: resized to 64 x 32, then 16 pixels cropped from the left
    boxes = torch.tensor([[32.0, 0.0, 96.0, 64.0], [0.0, 0.0, 16.0, 16.0]])
    processed = boxes_to_processed(boxes, width=128, height=64, image_processor=processor)
    # first: x 16..48 -> 0..32 after the crop (whole width), y 0..32: centre (0.5, 0.5), size (1, 1)
    torch.testing.assert_close(processed[0], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    # second: x 0..8 lies left of the crop: zero width after clipping
    assert processed[1, 2] == 0
