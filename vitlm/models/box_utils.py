"""Box utilities: (cx, cy, w, h) <-> corner conversion, area, IoU, generalized IoU and non-maximum suppression.

Shared by the detection loss (matching costs) and the image processor (post-processing), which needs nothing else
of the loss.
"""

import torch


def center_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1)."""
    center, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat([center - size / 2, center + size / 2], dim=-1)


def corners_to_center(boxes: torch.Tensor) -> torch.Tensor:
    """(x0, y0, x1, y1) -> (cx, cy, w, h)."""
    top_left, bottom_right = boxes[..., :2], boxes[..., 2:]
    return torch.cat([(top_left + bottom_right) / 2, bottom_right - top_left], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU (n, m) and union (n, m) of corner-format boxes."""
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - intersection
    return intersection / union, union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., 2019) of corner-format boxes, in [-1, 1]."""
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    enclosing = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    return iou - (enclosing - union) / enclosing


def non_max_suppression(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS (corner format), highest score first."""
    order = scores.argsort(descending=True)
    keep = []
    while order.numel():
        best, order = order[0], order[1:]
        keep.append(best)
        if order.numel():
            overlaps = box_iou(boxes[best][None], boxes[order])[0][0]
            order = order[overlaps <= iou_threshold]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long, device=boxes.device)


__all__ = [
    "box_area",
    "box_iou",
    "center_to_corners",
    "corners_to_center",
    "generalized_box_iou",
    "non_max_suppression",
]
