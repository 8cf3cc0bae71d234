import pytest
import torch

from tests.conftest import tiny_config
from vitlm import VitlmViTForImageClassification
from vitlm.training import ClassificationCollator, layerwise_lr_decay_groups, soft_target_cross_entropy
from vitlm.training.trainer import block_depth


def test_layerwise_lr_decay_groups():
    model = VitlmViTForImageClassification(tiny_config("vit", num_labels=3))  # 2 blocks
    groups = layerwise_lr_decay_groups(model, lr=1.0, decay=0.5, weight_decay=0.1)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)  # every parameter, once
    depths = {name: block_depth(name, 2) for name in named}
    assert {depths[n] for n in named if "embed" in n or "cls_token" in n} == {0}
    assert {depths[n] for n in named if n.startswith("classifier")} == {3}
    assert sorted(set(depths.values())) == [0, 1, 2, 3]
    for name, parameter in named.items():
        lr, weight_decay = lr_of[id(parameter)]
        assert lr == pytest.approx(0.5 ** (3 - depths[name]))
        assert weight_decay == (0.0 if name.endswith("bias") or "norm" in name else 0.1), name


def test_mixup_collator_makes_soft_targets_and_matching_loss():
    torch.manual_seed(0)
    examples = [{"pixel_values": torch.randn(3, 8, 8), "labels": i % 4} for i in range(6)]
    plain = ClassificationCollator(num_labels=4)(examples)
    assert plain["labels"].tolist() == [0, 1, 2, 3, 0, 1]
    mixed = ClassificationCollator(num_labels=4, mixup_alpha=1.0)(examples)
    assert mixed["labels"].shape == (6, 4)
    torch.testing.assert_close(mixed["labels"].sum(-1), torch.ones(6))
    assert not torch.equal(mixed["pixel_values"], plain["pixel_values"])
    # soft targets that are one-hot give the ordinary cross-entropy
    logits = torch.randn(6, 4)
    one_hot = torch.nn.functional.one_hot(plain["labels"], 4).float()
    expected = torch.nn.functional.cross_entropy(logits, plain["labels"])
    torch.testing.assert_close(soft_target_cross_entropy({"logits": logits}, one_hot), expected)
    torch.testing.assert_close(soft_target_cross_entropy({"logits": logits}, plain["labels"]), expected)
