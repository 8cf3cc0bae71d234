"""Metrics for Trainer's `compute_metrics` (and the plain functions behind them, tested on hand-made cases).

Each `*_metrics` builder returns a `compute_metrics` reading the predictions that `vitlm.training.trainer` keeps
for the task (`PREDICTION_KEYS`, in that order).
"""

import numpy as np
import torch

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose label is among the `k` highest logits."""
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=-1).mean())


def classification_metrics(num_labels: int):
    def compute_metrics(eval_pred):
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        metrics = {"accuracy": accuracy(logits, labels)}
        if num_labels > 5:
            metrics["top5_accuracy"] = accuracy(logits, labels, k=5)
        return metrics

    return compute_metrics


def zero_shot_metrics(model, tokenizer, class_names, labels, templates=None):
    """Zero-shot accuracy of a dual encoder being trained: its image embeddings of the evaluation set against the
    cached classifier built from its own text tower on `class_names` (the one `from_dual_encoder` deploys). `model`
    is read at evaluation time, so the metric follows training. `labels` are the evaluation set's class indices in
    its order (the model's forward takes no labels; Trainer evaluates in order, also across processes)."""
    from ..models.modeling_dual_encoder import default_templates, encode_class_names

    labels = np.asarray(labels)

    def compute_metrics(eval_pred):
        image_embeds = eval_pred.predictions
        # the class embeddings alone, as `from_dual_encoder` computes them: no copy of the model's weights, and
        # the text tower as it runs in training (with LoRA adapters, through PEFT's wrapper)
        prompts = default_templates(model.config) if templates is None else templates
        with torch.no_grad():
            class_embeddings = encode_class_names(model, tokenizer, class_names, prompts)
        logits = image_embeds @ class_embeddings.float().cpu().numpy().T
        metrics = {"zero_shot_accuracy": accuracy(logits, labels)}
        if len(class_names) > 5:
            metrics["zero_shot_top5_accuracy"] = accuracy(logits, labels, k=5)
        return metrics

    return compute_metrics


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """(n, m) IoU of corner boxes (x0, y0, x1, y1)."""
    top_left = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).prod(-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).prod(-1)
    return intersection / np.maximum(area1[:, None] + area2[None] - intersection, 1e-12)


def average_precision(detections, ground_truths, iou_threshold: float) -> dict[int, float]:
    """COCO-style AP per class at one IoU threshold (101-point interpolated precision; a class without ground
    truth is left out, as in COCO).

    Args:
        detections: per image, a dict of `boxes` (n, 4) corners, `scores` (n,), `labels` (n,).
        ground_truths: per image, a dict of `boxes` (m, 4) corners and `labels` (m,).
    """
    classes = sorted({int(c) for truth in ground_truths for c in np.asarray(truth["labels"])})
    results = {}
    for cls in classes:
        hits, scores, num_truths = [], [], 0
        for detected, truth in zip(detections, ground_truths):
            true_boxes = np.asarray(truth["boxes"], dtype=np.float64).reshape(-1, 4)
            true_boxes = true_boxes[np.asarray(truth["labels"]) == cls]
            mine = np.asarray(detected["labels"]) == cls
            boxes = np.asarray(detected["boxes"], dtype=np.float64).reshape(-1, 4)[mine]
            image_scores = np.asarray(detected["scores"], dtype=np.float64)[mine]
            num_truths += len(true_boxes)
            order = np.argsort(-image_scores, kind="stable")
            ious = box_iou(boxes[order], true_boxes) if len(true_boxes) else np.zeros((len(order), 0))
            taken = np.zeros(len(true_boxes), dtype=bool)
            for row, index in enumerate(order):  # greedy: best-scored detections claim their best free match
                candidates = np.where(taken, -1.0, ious[row]) if len(true_boxes) else np.array([])
                best = int(candidates.argmax()) if len(candidates) else -1
                hit = best >= 0 and candidates[best] >= iou_threshold
                if hit:
                    taken[best] = True
                hits.append(hit)
                scores.append(image_scores[index])
        order = np.argsort(-np.asarray(scores), kind="stable")
        true_positives = np.cumsum(np.asarray(hits, dtype=np.float64)[order])
        recall = true_positives / num_truths
        precision = true_positives / np.arange(1, len(order) + 1)
        # precision envelope (monotone non-increasing), sampled at recall 0, 0.01, ..., 1
        envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        sampled = [
            envelope[np.searchsorted(recall, r, side="left")] if r <= recall[-1:].max(initial=-1) else 0.0
            for r in np.linspace(0, 1, 101)
        ]
        results[cls] = float(np.mean(sampled))
    return results


def mean_average_precision(detections, ground_truths) -> dict[str, float]:
    """`map` (COCO's mean over IoU 0.5:0.05:0.95 and classes), `map_50` and `map_75`."""
    per_threshold = [average_precision(detections, ground_truths, t) for t in COCO_IOU_THRESHOLDS]
    means = [float(np.mean(list(aps.values()))) if aps else 0.0 for aps in per_threshold]
    return {"map": float(np.mean(means)), "map_50": means[0], "map_75": means[5]}


def center_to_corners(boxes: np.ndarray) -> np.ndarray:
    center, size = boxes[..., :2], boxes[..., 2:]
    return np.concatenate([center - size / 2, center + size / 2], axis=-1)


def detection_metrics(max_detections: int = 100):
    """AP50 / mAP of a detection model on normalized boxes (IoU does not depend on the image's scale). Every token
    proposes its best-scoring query; the `max_detections` highest scores per image are kept. Needs
    `eval_do_concat_batches=False` (labels are lists of dicts)."""

    def compute_metrics(eval_pred):
        detections, truths = [], []
        for (logits, boxes), batch_labels in zip(eval_pred.predictions, eval_pred.label_ids):
            logits, boxes = np.asarray(logits, dtype=np.float64), np.asarray(boxes, dtype=np.float64)
            for image_logits, image_boxes, target in zip(logits, boxes, batch_labels):
                scores = 1 / (1 + np.exp(-image_logits.max(-1)))
                keep = np.argsort(-scores, kind="stable")[:max_detections]
                boxes_kept, labels = center_to_corners(image_boxes[keep]), image_logits.argmax(-1)[keep]
                detections.append({"boxes": boxes_kept, "scores": scores[keep], "labels": labels})
                true_boxes = center_to_corners(np.asarray(target["boxes"]).reshape(-1, 4))
                truths.append({"boxes": true_boxes, "labels": np.asarray(target["class_labels"])})
        return mean_average_precision(detections, truths)

    return compute_metrics


def masked_psnr(predicted_patches, pixel_values, mask, patch_size: int, mean, std) -> float:
    """Mean over images of the PSNR (dB, pixels in [0, 1]) of the masked patches only: what the model inpainted.

    Args:
        predicted_patches: (batch, patches, patch_size**2 * channels), normalized like `pixel_values`.
        pixel_values: (batch, channels, height, width) normalized with the processor's `mean` / `std`.
        mask: (batch, patches), 1 where a patch was masked.
    """
    pixel_values = torch.as_tensor(np.asarray(pixel_values), dtype=torch.float64)
    predicted = torch.as_tensor(np.asarray(predicted_patches), dtype=torch.float64)
    mask = torch.as_tensor(np.asarray(mask), dtype=torch.float64)
    batch, channels, height, width = pixel_values.shape
    mean = torch.tensor(mean, dtype=torch.float64).view(1, 1, 1, channels)
    std = torch.tensor(std, dtype=torch.float64).view(1, 1, 1, channels)
    # patches as (p, p, c), the order of the model's `patchify`
    target = pixel_values.reshape(batch, channels, height // patch_size, patch_size, width // patch_size, patch_size)
    target = target.permute(0, 2, 4, 3, 5, 1).reshape(batch, -1, patch_size, patch_size, channels)
    predicted = predicted.reshape(target.shape)
    target = (target * std + mean).clamp(0, 1)
    predicted = (predicted * std + mean).clamp(0, 1)
    squared = ((predicted - target) ** 2).mean(dim=(2, 3, 4))
    mse = (squared * mask).sum(1) / mask.sum(1).clamp(min=1)
    return float((10 * torch.log10(1 / mse.clamp(min=1e-10))).mean())


def inpainting_metrics(patch_size: int, mean, std):
    """PSNR inside the mask; needs the original pixels as `label_ids` (`label_names=["pixel_values"]`) and a model
    trained on raw pixels (`norm_pix_loss=False`)."""

    def compute_metrics(eval_pred):
        predicted, mask = eval_pred.predictions
        return {"masked_psnr": masked_psnr(predicted, eval_pred.label_ids, mask, patch_size, mean, std)}

    return compute_metrics


def segmentation_confusion(logits, labels, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(num_classes, num_classes) pixel counts, rows the true class, columns the predicted one: the (batch, classes,
    h, w) logits bilinearly upsampled to the (batch, height, width) label maps (as the image processor's
    `post_process_semantic_segmentation` does), arg-maxed; `ignore_index` pixels left out."""
    logits, labels = torch.as_tensor(np.asarray(logits), dtype=torch.float32), torch.as_tensor(np.asarray(labels))
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    for chunk_logits, chunk_labels in zip(logits.split(64), labels.split(64)):  # bounds the upsampled copy's memory
        upsampled = torch.nn.functional.interpolate(
            chunk_logits, size=chunk_labels.shape[-2:], mode="bilinear", align_corners=False
        )
        predicted, truth = upsampled.argmax(1).flatten(), chunk_labels.long().flatten()
        valid = truth != ignore_index
        confusion += torch.bincount(truth[valid] * num_classes + predicted[valid], minlength=num_classes**2)
    return confusion.reshape(num_classes, num_classes).numpy()


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """Each class's IoU; NaN for a class neither present nor predicted."""
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, np.nan)


def segmentation_metrics(num_classes: int, ignore_index: int = 255):
    """mIoU (mean over the classes present in the labels or the predictions) and pixel accuracy of a segmenter's
    logits against the label maps."""

    def compute_metrics(eval_pred):
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        confusion = segmentation_confusion(logits, eval_pred.label_ids, num_classes, ignore_index)
        return {
            "mean_iou": float(np.nanmean(per_class_iou(confusion))),
            "pixel_accuracy": float(np.diag(confusion).sum() / max(confusion.sum(), 1)),
        }

    return compute_metrics


__all__ = [
    "accuracy",
    "average_precision",
    "box_iou",
    "classification_metrics",
    "detection_metrics",
    "inpainting_metrics",
    "masked_psnr",
    "mean_average_precision",
    "per_class_iou",
    "segmentation_confusion",
    "segmentation_metrics",
    "zero_shot_metrics",
]
