"""The linear probe: how much of a label a frozen image tower's features hold. The tower embeds every image once
(its `pooler_output`, in evaluation mode, without gradients); a linear classifier (multinomial logistic regression)
is then fitted on the training features by full-batch L-BFGS and scored on the evaluation features.

`linear_probe` is what `benchmarks/self_supervised.py` compares pretraining recipes with; it takes any vitlm image
tower (a `VitlmViTModel`, the tower of a classifier or of a dual encoder's image side) and any datasets with an image
column and a label column.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .tasks import image_column
from .transforms import pixel_values


@dataclass
class ProbeResult:
    accuracy: float  # on the evaluation features
    train_accuracy: float
    num_features: int


@torch.no_grad()
def embed(tower, image_processor, images, batch_size: int = 64) -> torch.Tensor:
    """(len(images), pooled width) features of the frozen `tower`, through the processor's evaluation transform."""
    was_training = tower.training
    tower.eval()
    features = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack(pixel_values(images[start : start + batch_size], image_processor))
        features.append(tower(batch.to(tower.dtype)).pooler_output.float())
    tower.train(was_training)
    return torch.cat(features)


def fit_linear_classifier(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-4, steps: int = 100
) -> nn.Linear:
    """Multinomial logistic regression on standardized features by full-batch L-BFGS (deterministic: no sampling);
    `weight_decay` is the L2 penalty on the weights. The standardization is folded into the returned layer."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    standardized = (features - mean) / std
    classifier = nn.Linear(features.shape[1], num_classes)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.LBFGS(classifier.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(classifier(standardized), labels)
        loss = loss + weight_decay * classifier.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():  # y = W((x - mean) / std) + b = (W / std) x + (b - W mean / std)
        classifier.weight.div_(std)
        classifier.bias.sub_(classifier.weight @ mean)
    return classifier


def linear_probe(
    tower, image_processor, train_set, eval_set, label_column: str = "label", weight_decay: float = 1e-4
) -> ProbeResult:
    """Fit a linear classifier on the frozen `tower`'s features of `train_set` and score it on `eval_set` (datasets
    with an image column and an integer `label_column`; the classes are those of either set)."""
    train_labels = torch.tensor(train_set[label_column])
    eval_labels = torch.tensor(eval_set[label_column])
    num_classes = int(max(train_labels.max(), eval_labels.max())) + 1
    train_features = embed(tower, image_processor, train_set[image_column(train_set)])
    eval_features = embed(tower, image_processor, eval_set[image_column(eval_set)])
    classifier = fit_linear_classifier(train_features, train_labels, num_classes, weight_decay)
    with torch.no_grad():
        accuracy = (classifier(eval_features).argmax(-1) == eval_labels).float().mean().item()
        train_accuracy = (classifier(train_features).argmax(-1) == train_labels).float().mean().item()
    return ProbeResult(accuracy, train_accuracy, train_features.shape[1])


__all__ = ["ProbeResult", "embed", "fit_linear_classifier", "linear_probe"]
