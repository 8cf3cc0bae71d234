"""Set-prediction loss of the detection head: Hungarian matching, focal + L1 + generalized-IoU losses.

Every patch token predicts one box, so predictions are matched one-to-one to the ground-truth objects (DETR's
bipartite matching): no anchors, no non-maximum suppression. The box operations live in `box_utils`.
"""

import numpy as np
import torch
from torch import nn

from .box_utils import center_to_corners, generalized_box_iou


def linear_sum_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment (the Hungarian method with potentials, O(n^2 m)).

    Every row is assigned a distinct column when there are no more rows than columns, and every column a distinct
    row otherwise. Returns (row indices, column indices), sorted by row, as `scipy.optimize.linear_sum_assignment`.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"the cost matrix must be 2-D, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("the cost matrix holds NaN or infinite values")
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:
        cost = cost.T
    rows, columns = cost.shape
    # 1-based arrays: index 0 is the virtual column that starts each augmenting path
    row_potential, column_potential = np.zeros(rows + 1), np.zeros(columns + 1)
    matched_row = np.zeros(columns + 1, dtype=np.int64)  # the row matched to each column, 0 for none
    previous_column = np.zeros(columns + 1, dtype=np.int64)
    for row in range(1, rows + 1):
        matched_row[0], column = row, 0
        slack = np.full(columns + 1, np.inf)
        visited = np.zeros(columns + 1, dtype=bool)
        while matched_row[column] != 0:
            visited[column] = True
            current = matched_row[column]
            reduced = cost[current - 1] - row_potential[current] - column_potential[1:]
            improved = ~visited[1:] & (reduced < slack[1:])
            slack[1:][improved] = reduced[improved]
            previous_column[1:][improved] = column
            candidates = np.where(visited[1:], np.inf, slack[1:])
            next_column = int(np.argmin(candidates)) + 1
            delta = candidates[next_column - 1]
            row_potential[matched_row[visited]] += delta
            column_potential[visited] -= delta
            slack[~visited] -= delta
            column = next_column
        while column != 0:  # flip the augmenting path
            matched_row[column] = matched_row[previous_column[column]]
            column = previous_column[column]
    assigned = np.nonzero(matched_row[1:])[0]
    row_indices, column_indices = matched_row[1:][assigned] - 1, assigned
    if transposed:
        row_indices, column_indices = column_indices, row_indices
    order = np.argsort(row_indices)
    return row_indices[order], column_indices[order]


def sigmoid_focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Elementwise focal loss (Lin et al., 2017) on sigmoid probabilities."""
    probabilities = logits.sigmoid()
    cross_entropy = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    loss = cross_entropy * (1 - p_t) ** gamma
    return (alpha * targets + (1 - alpha) * (1 - targets)) * loss if alpha >= 0 else loss


class DetectionLoss(nn.Module):
    """Matches predictions to targets at minimum cost (class + L1 + generalized IoU), then sums the focal class loss
    over every prediction and the box losses over the matched ones, each normalized by the number of objects."""

    def __init__(self, class_weight=2.0, bbox_weight=5.0, giou_weight=2.0, alpha=0.25, gamma=2.0):
        super().__init__()
        self.class_weight, self.bbox_weight, self.giou_weight = class_weight, bbox_weight, giou_weight
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def match(self, logits, pred_boxes, targets) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each image, (prediction indices, target indices) of the minimum-cost assignment."""
        indices = []
        for image_logits, image_boxes, target in zip(logits, pred_boxes, targets):
            labels, boxes = target["class_labels"], target["boxes"]
            if len(labels) == 0:
                empty = torch.zeros(0, dtype=torch.long, device=logits.device)
                indices.append((empty, empty))
                continue
            probabilities = image_logits.float().sigmoid()[:, labels]
            positive = self.alpha * (1 - probabilities) ** self.gamma * -(probabilities + 1e-8).log()
            negative = (1 - self.alpha) * probabilities**self.gamma * -(1 - probabilities + 1e-8).log()
            cost = (
                self.class_weight * (positive - negative)
                + self.bbox_weight * torch.cdist(image_boxes.float(), boxes.float(), p=1)
                - self.giou_weight
                * generalized_box_iou(center_to_corners(image_boxes.float()), center_to_corners(boxes.float()))
            )
            rows, columns = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (torch.as_tensor(rows, device=logits.device), torch.as_tensor(columns, device=logits.device))
            )
        return indices

    def forward(self, logits, pred_boxes, targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`logits` (batch, predictions, queries), `pred_boxes` (batch, predictions, 4) normalized (cx, cy, w, h);
        `targets` one dict per image with `class_labels` (objects,) query indices and `boxes` (objects, 4)."""
        if len(targets) != logits.shape[0]:
            raise ValueError(f"got {len(targets)} target dicts for a batch of {logits.shape[0]} images")
        targets = [
            {
                "boxes": target["boxes"].to(pred_boxes.device),
                "class_labels": target["class_labels"].long().to(logits.device),
            }
            for target in targets
        ]
        for target in targets:
            boxes, labels = target["boxes"], target["class_labels"]
            if boxes.ndim != 2 or boxes.shape[-1] != 4 or len(boxes) != len(labels):
                raise ValueError("each target needs `boxes` of shape (objects, 4) and as many `class_labels`")
            if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
                raise ValueError(f"`class_labels` must index the {logits.shape[-1]} queries")
        indices = self.match(logits, pred_boxes, targets)
        num_objects = max(sum(len(t["class_labels"]) for t in targets), 1)

        class_targets = torch.zeros_like(logits, dtype=torch.float32)
        for image, (rows, columns) in enumerate(indices):
            class_targets[image, rows, targets[image]["class_labels"][columns]] = 1.0
        class_loss = sigmoid_focal_loss(logits.float(), class_targets, self.alpha, self.gamma).sum() / num_objects

        matched = torch.cat([pred_boxes[image, rows] for image, (rows, _) in enumerate(indices)]).float()
        target_boxes = torch.cat([t["boxes"][columns] for t, (_, columns) in zip(targets, indices)]).float()
        bbox_loss = nn.functional.l1_loss(matched, target_boxes, reduction="sum") / num_objects
        giou = generalized_box_iou(center_to_corners(matched), center_to_corners(target_boxes))
        giou_loss = (1 - torch.diag(giou)).sum() / num_objects
        losses = {"loss_ce": class_loss, "loss_bbox": bbox_loss, "loss_giou": giou_loss}
        total = self.class_weight * class_loss + self.bbox_weight * bbox_loss + self.giou_weight * giou_loss
        return total, losses


__all__ = ["DetectionLoss", "linear_sum_assignment", "sigmoid_focal_loss"]
