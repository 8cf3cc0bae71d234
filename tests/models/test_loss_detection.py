import itertools

import numpy as np
import pytest
import torch

from vitlm.models.box_utils import (
    box_iou,
    center_to_corners,
    corners_to_center,
    generalized_box_iou,
    non_max_suppression,
)
from vitlm.models.loss_detection import DetectionLoss, linear_sum_assignment


def brute_force_assignment_cost(cost: np.ndarray) -> float:
    rows, columns = cost.shape
    if rows <= columns:
        return min(
            sum(cost[r, c] for r, c in zip(range(rows), chosen))
            for chosen in itertools.permutations(range(columns), rows)
        )
    return brute_force_assignment_cost(cost.T)


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 6), (6, 4), (5, 7), (7, 2), (1, 5)])
@pytest.mark.parametrize("seed", range(8))
def test_hungarian_matching_finds_the_brute_force_optimum(shape, seed):
    rng = np.random.default_rng(seed)
    cost = rng.normal(size=shape) if seed % 2 else rng.integers(0, 4, size=shape).astype(float)  # ties too
    rows, columns = linear_sum_assignment(cost)
    assert len(rows) == min(shape) and list(rows) == sorted(rows)
    assert len(set(rows)) == len(rows) and len(set(columns)) == len(columns)
    assert cost[rows, columns].sum() == pytest.approx(brute_force_assignment_cost(cost))


def test_hungarian_matching_refuses_bad_costs():
    with pytest.raises(ValueError, match="NaN"):
        linear_sum_assignment(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        linear_sum_assignment(np.zeros(3))


def test_box_formats_and_overlaps():
    centers = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    corners = center_to_corners(centers)
    torch.testing.assert_close(corners, torch.tensor([[0.4, 0.3, 0.6, 0.7]]))
    torch.testing.assert_close(corners_to_center(corners), centers)
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 4.0, 5.0, 5.0]])
    iou, union = box_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 0.0]]))
    torch.testing.assert_close(union, torch.tensor([[7.0, 5.0]]))
    # enclosing boxes: 9 and 25; GIoU = IoU - (enclosing - union) / enclosing
    torch.testing.assert_close(generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, 0.0 - 20 / 25]]))
    torch.testing.assert_close(generalized_box_iou(a, a), torch.ones(1, 1))


def test_non_max_suppression_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 9, 10]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.3, 0.4])
    assert non_max_suppression(boxes, scores, iou_threshold=0.5).tolist() == [1, 2]
    assert non_max_suppression(boxes, scores, iou_threshold=1.0).tolist() == [1, 0, 3, 2]


def targets_for(boxes, labels):
    return [
        {"boxes": torch.tensor(b, dtype=torch.float32), "class_labels": torch.tensor(c)} for b, c in zip(boxes, labels)
    ]


def test_the_loss_matches_each_object_to_its_best_prediction():
    boxes = [[[0.25, 0.25, 0.2, 0.2], [0.75, 0.7, 0.3, 0.2]]]
    targets = targets_for(boxes, [[1, 0]])
    pred_boxes = torch.tensor(
        [[[0.1, 0.9, 0.1, 0.1], [0.75, 0.7, 0.3, 0.2], [0.9, 0.1, 0.1, 0.1], [0.25, 0.25, 0.2, 0.2]]]
    )
    logits = torch.full((1, 4, 2), -8.0)
    logits[0, 3, 1] = logits[0, 1, 0] = 8.0
    criterion = DetectionLoss()
    [(rows, columns)] = criterion.match(logits, pred_boxes, targets)
    assert dict(zip(rows.tolist(), columns.tolist())) == {1: 1, 3: 0}
    loss, parts = criterion(logits, pred_boxes, targets)
    assert parts["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["loss_ce"].item() < 1e-3
    # the same objects listed in another order give the same loss
    swapped = targets_for([boxes[0][::-1]], [[0, 1]])
    torch.testing.assert_close(criterion(logits, pred_boxes, swapped)[0], loss)
    # a wrong box costs more
    worse = pred_boxes.clone()
    worse[0, 1] = torch.tensor([0.5, 0.5, 0.3, 0.2])
    assert criterion(logits, worse, targets)[0] > loss


def test_images_without_objects_only_push_scores_down():
    logits = torch.zeros(1, 3, 2)
    loss, parts = DetectionLoss()(logits, torch.rand(1, 3, 4), targets_for([np.zeros((0, 4))], [[]]))
    assert parts["loss_bbox"] == 0 and parts["loss_giou"] == 0 and parts["loss_ce"] > 0


def test_bad_targets_are_refused():
    criterion = DetectionLoss()
    with pytest.raises(ValueError, match="target dicts"):
        criterion(torch.zeros(2, 3, 2), torch.rand(2, 3, 4), targets_for([[[0.5, 0.5, 0.1, 0.1]]], [[0]]))
    with pytest.raises(ValueError, match="queries"):
        criterion(torch.zeros(1, 3, 2), torch.rand(1, 3, 4), targets_for([[[0.5, 0.5, 0.1, 0.1]]], [[2]]))
    with pytest.raises(ValueError, match="objects, 4"):
        criterion(torch.zeros(1, 3, 2), torch.rand(1, 3, 4), targets_for([[[0.5, 0.5, 0.1]]], [[0]]))
