"""`classify_folder`: zero-shot labels for every image of a folder, with the cached classifier
(`VitlmDualEncoderForImageClassification`: the labels' text embeddings are computed once, then only the image tower
runs)."""

import csv
import io
from pathlib import Path

import torch

from ..models import VitlmDualEncoderForImageClassification
from . import store
from .checks import check_text, positive
from .engine import DEFAULT_MODEL, load_model, run_local
from .sources import FolderSource

HEADER = ["path", "label", "probability", "error"]


def classify_folder(
    folder,
    labels: list[str],
    out,
    model: str = DEFAULT_MODEL,
    templates: list[str] | None = None,
    batch_size: int = 256,
    num_workers: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `out`, a CSV with one row per image of `folder` (recursive, sorted): its path relative to the folder,
    the best label and its probability (softmax over the labels, or the sigmoid of a sigmoid-loss model), or the
    reason it could not be decoded. `templates` default to the model's own prompt templates."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    labels = [check_text(label, "a label") for label in labels]
    positive("batch_size", batch_size)
    collection = FolderSource(folder)
    dual_encoder, processor = load_model(model, device)
    classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(
        dual_encoder, processor.tokenizer, labels, templates
    )
    sigmoid = classifier.config.loss_type == "sigmoid"

    @torch.no_grad()
    def probabilities(pixels):
        logits = classifier(pixels.to(classifier.device, classifier.dtype)).logits.float()
        return (logits.sigmoid() if sigmoid else logits.softmax(dim=-1)).cpu().numpy()

    batches = [
        list(range(start, min(start + batch_size, len(collection)))) for start in range(0, len(collection), batch_size)
    ]
    rows = {}
    for result in run_local(collection, processor.image_processor, batches, probabilities, num_workers):
        for position, scores in zip(result.positions.tolist(), result.outputs):
            rows[position] = [labels[scores.argmax()], f"{scores.max():.6f}", ""]
        for position, error in result.errors:
            rows[position] = ["", "", error]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows([collection.ids[position], *rows[position]] for position in sorted(rows))
    store.write_text(out, buffer.getvalue())
    return out
