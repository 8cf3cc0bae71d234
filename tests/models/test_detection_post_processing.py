"""`post_process_object_detection`'s optional non-maximum suppression: per query, off unless asked for."""

import pytest
import torch

from vitlm import VitlmDualEncoderProcessor, VitlmImageProcessor
from vitlm.clip_bpe import clip_tokenizer

SIDE = 40.0  # boxes below are in pixels of a 40x40 processed image
# (x0, y0, x1, y1), query, score; IoU of A and B: 90 / 110 = 0.818; of C and E: 50 / 100 = 0.5 exactly
BOXES = {
    "A": ((0, 0, 10, 10), 0, 0.9),
    "B": ((1, 0, 11, 10), 0, 0.8),  # mostly A's box, same query
    "C": ((0, 0, 10, 10), 1, 0.7),  # exactly A's box, another query: never suppressed by A
    "D": ((20, 20, 30, 30), 0, 0.6),  # apart from everything
    "E": ((0, 0, 10, 5), 1, 0.5),  # half of C's box, same query
    "F": ((20, 20, 30, 30), 0, 0.05),  # under the score threshold
}


def detections():
    """Model outputs holding BOXES: each token's logit for its query gives its score, the other query scores ~0."""
    corners = torch.tensor([box for box, _, _ in BOXES.values()], dtype=torch.float32) / SIDE
    centers = torch.cat([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], dim=-1)
    logits = torch.full((1, len(BOXES), 2), -20.0)
    for token, (_, query, score) in enumerate(BOXES.values()):
        logits[0, token, query] = torch.logit(torch.tensor(score))
    return {"logits": logits, "pred_boxes": centers[None]}


def processor():
    return VitlmImageProcessor(size={"height": 40, "width": 40}, do_center_crop=False)


def kept(result) -> list[str]:
    names = {round(score, 4): name for name, (_, _, score) in BOXES.items()}
    return [names[round(score, 4)] for score in result["scores"].tolist()]


@pytest.mark.parametrize(
    "nms_threshold, expected",
    [
        (None, ["A", "B", "C", "D", "E"]),  # off: every box above the score threshold, best first
        (1.0, ["A", "B", "C", "D", "E"]),  # nothing overlaps by more than 1
        (0.85, ["A", "B", "C", "D", "E"]),
        (0.8, ["A", "C", "D", "E"]),  # B overlaps A by 0.818
        (0.5, ["A", "C", "D", "E"]),  # E overlaps C by exactly 0.5: kept, only overlaps above are dropped
        (0.49, ["A", "C", "D"]),
        (0.01, ["A", "C", "D"]),  # A and C coincide but answer different queries
    ],
)
def test_nms_suppresses_overlaps_within_each_query(nms_threshold, expected):
    [result] = processor().post_process_object_detection(detections(), threshold=0.1, nms_threshold=nms_threshold)
    assert kept(result) == expected
    for name, score, label, box in zip(expected, result["scores"], result["labels"], result["boxes"]):
        corners, query, expected_score = BOXES[name]
        assert (label.item(), score.item()) == (query, pytest.approx(expected_score, abs=1e-6))
        torch.testing.assert_close(box * SIDE, torch.tensor(corners, dtype=torch.float32))


def test_nms_is_off_by_default_and_identical_to_the_plain_decoding():
    outputs = detections()
    for post_process in (processor().post_process_object_detection, dual_processor().post_process_object_detection):
        [default] = post_process(outputs, 0.1)
        # the plain decoding, written out: best query per token, sigmoid, threshold, best first
        best = outputs["logits"][0].max(dim=-1)
        scores = best.values.sigmoid()
        order = [i for i in scores.argsort(descending=True).tolist() if scores[i] > 0.1]
        assert default["scores"].tolist() == scores[order].tolist()
        assert default["labels"].tolist() == best.indices[order].tolist()
        assert len(default["boxes"]) == len(order) == 5


def test_the_processor_passes_nms_through():
    [result] = dual_processor().post_process_object_detection(detections(), 0.1, None, 0.49)
    assert kept(result) == ["A", "C", "D"]
    [result] = dual_processor().post_process_object_detection(detections(), threshold=0.1, nms_threshold=0.49)
    assert kept(result) == ["A", "C", "D"]


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan"), "0.5", True])
def test_bad_nms_thresholds_are_refused(bad):
    with pytest.raises(ValueError, match="`nms_threshold` must be a number in \\(0, 1\\]"):
        processor().post_process_object_detection(detections(), 0.1, nms_threshold=bad)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", None, True])
def test_bad_score_thresholds_are_refused(bad):
    with pytest.raises(ValueError, match=r"`threshold` must be a number in \[0, 1\]"):
        processor().post_process_object_detection(detections(), bad)


@pytest.mark.parametrize("size", [(0, 0), (-32, 32), (32, 0)])
def test_bad_target_sizes_are_refused(size):
    with pytest.raises(ValueError, match=r"target size 0 must be a positive \(height, width\)"):
        processor().post_process_object_detection(detections(), 0.1, target_sizes=[size])


def dual_processor():
    return VitlmDualEncoderProcessor(processor(), clip_tokenizer())
