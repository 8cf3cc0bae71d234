"""The linear probe: a linear classifier on a frozen tower's features."""

import torch

from vitlm import VitlmImageProcessor, VitlmViTModel
from vitlm.data.shapes import generate
from vitlm.presets import load_preset_config
from vitlm.training.probe import embed, fit_linear_classifier, linear_probe


def test_the_classifier_separates_separable_classes_and_folds_the_standardization():
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 5, generator=generator) * 4 + 100  # far from zero mean: standardization matters
    labels = torch.arange(60) % 3
    features = centers[labels] + 0.1 * torch.randn(60, 5, generator=generator)
    classifier = fit_linear_classifier(features, labels, 3)
    assert (classifier(features).argmax(-1) == labels).all()
    assert classifier.weight.shape == (3, 5)


def test_linear_probe_fits_a_frozen_tower_and_scores_the_evaluation_set():
    """Colour (8 ways) from a random tower's mean patch features: far above chance (1 in 8) on the images it was
    fitted on, and the same score when those are the evaluation set; the tower is left as it was."""
    torch.manual_seed(0)
    config = load_preset_config("vit-tiny-test")
    config.pooling = "mean"
    tower = VitlmViTModel(config).train()
    before = {name: tensor.clone() for name, tensor in tower.state_dict().items()}
    processor = VitlmImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    train_set = generate(160, seed=0, split="train", image_size=32, max_objects=1)
    train_set = train_set.map(lambda row: {"colour_label": row["label"] % 8})
    result = linear_probe(tower, processor, train_set, train_set, label_column="colour_label")
    assert result.num_features == 32 and result.accuracy == result.train_accuracy > 0.5, result
    assert tower.training  # put back as it was
    assert all(torch.equal(tensor, before[name]) for name, tensor in tower.state_dict().items())
    features = embed(tower, processor, train_set["image"][:4])
    assert features.shape == (4, 32) and torch.isfinite(features).all()
