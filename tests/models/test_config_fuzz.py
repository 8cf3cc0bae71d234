"""Seeded config fuzzing: every generated config is either refused at config time with a ValueError naming a field,
or valid; a valid one round-trips through save/load, and (when small enough to build cheaply) gives a model whose
forward on valid input is finite. Covers every model family and every way of building or changing a config."""

import json
import math
import random
import re

import pytest
import torch
from transformers import AutoConfig

from vitlm import (
    VitlmDualEncoderConfig,
    VitlmHybridConfig,
    VitlmPiTConfig,
    VitlmSegmenterConfig,
    VitlmSwinConfig,
    VitlmTextConfig,
    VitlmViTConfig,
    VitlmViTMAEConfig,
    VitlmViTSynthesisConfig,
)
from vitlm.models import (
    VitlmDualEncoderForObjectDetection,
    VitlmDualEncoderForSemanticSegmentation,
    VitlmDualEncoderModel,
    VitlmHybridForImageClassification,
    VitlmPiTForImageClassification,
    VitlmSwinForImageClassification,
    VitlmTextModel,
    VitlmViTForImageClassification,
    VitlmViTForInpaintingSynthesis,
    VitlmViTForMaskedImageModeling,
    VitlmViTForSemanticSegmentation,
)
from vitlm.models.configuration_vitlm import FIELD_RULES
from vitlm.training.run import apply_overrides, parse_overrides

SEED = 16
CASES_PER_FAMILY = 300
NAN, INF = float("nan"), float("inf")
# values no field accepts, or accepts only by accident: every field gets some of these
ADVERSARIAL = [NAN, INF, -INF, -1, 0, 10**12, 1e300, True, False, "false", "16", None, [16], [16, 16, 16], 16.0, 2.5]

VIT_BASE = dict(
    image_size=16,
    patch_size=8,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
)
MAE_BASE = dict(
    VIT_BASE,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=32,
)
SYNTHESIS_BASE = dict(VIT_BASE, use_cls_token=False, codebook_size=8, code_patch_size=4)
HYBRID_BASE = {
    **VIT_BASE,
    "image_size": 16,
    "patch_size": 1,
    "backbone_depths": [1],
    "backbone_stem_width": 8,
    "backbone_num_groups": 8,
}
PIT_BASE = dict(image_size=16, patch_size=4, stride=2, depths=[1, 1], hidden_sizes=[8, 16], num_heads=[2, 2])
SWIN_BASE = dict(image_size=16, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4)
TEXT_BASE = dict(vocab_size=50, max_position_embeddings=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
TEXT_BASE["intermediate_size"] = 32

# plausible values per field, valid or not, so that many generated configs are valid and get built
VIT_VALUES = {
    "image_size": [8, 16, 24, 32, [16, 24], [16, 8], [16, 12]],
    "patch_size": [4, 8, 3, 16],
    "num_channels": [1, 3, 4],
    "hidden_size": [8, 12, 16, 24, 30, 32],
    "num_hidden_layers": [1, 2],
    "num_attention_heads": [1, 2, 3, 4],
    "intermediate_size": [8, 16, 32],
    "hidden_act": ["gelu", "quick_gelu", "relu", "swishy"],
    "layer_norm_eps": [1e-6, 1e-5, 0.1, 1.0, 2.0],
    "hidden_dropout_prob": [0.0, 0.1, 0.5, 0.99, 1.0],
    "attention_probs_dropout_prob": [0.0, 0.1, 0.99],
    "drop_path_rate": [0.0, 0.1, 0.9],
    "qkv_bias": [True, False],
    "patch_bias": [True, False],
    "position_embedding_type": ["learned", "sincos2d", "rope2d", "alibi"],
    "rope_theta": [1, 10, 100.0, 10000, 1e30, 0.5],
    "use_cls_token": [True, False],
    "use_distillation_token": [True, False],
    "pooling": ["cls", "mean", "max"],
    "pre_norm": [True, False],
    "representation_size": [None, 8, 16],
    "initializer_range": [0.02, 1e-10, 0.5, 1.0, 2.0],
    "num_labels": [0, 1, 2, 5],
    "problem_type": [None, "regression", "single_label_classification", "multi_label_classification", "ranking"],
}
MAE_VALUES = {
    **VIT_VALUES,
    "decoder_hidden_size": [8, 12, 16, 24, 30],
    "decoder_num_hidden_layers": [1, 2],
    "decoder_num_attention_heads": [1, 2, 3, 4],
    "decoder_intermediate_size": [8, 16],
    "mask_ratio": [0.0, 0.5, 0.75, 0.9, 0.99],
    "norm_pix_loss": [True, False],
}
SYNTHESIS_VALUES = {
    **VIT_VALUES,
    "codebook_size": [2, 8, 16, 1, 10**6],
    "code_patch_size": [1, 2, 4, 3, 8, 16],
    "sampling_steps": [1, 4, 8, 0],
    "sampling_temperature": [0.0, 0.5, 1.0, 200.0, -1.0],
    "use_mask_token": [True, False],
}
HYBRID_VALUES = {
    **VIT_VALUES,
    "image_size": [8, 16, 32, [16, 32], 12],
    "patch_size": [1, 2],
    "backbone_depths": [[1], [1, 1], [2, 1], [1, 1, 1], []],
    "backbone_stem_width": [4, 6, 8, 16],
    "backbone_width_factor": [1, 2],
    "backbone_num_groups": [1, 2, 4, 8, 3],
    "backbone_std_conv_eps": [1e-8, 1e-5, 1.0],
}
PIT_VALUES = {
    "image_size": [8, 12, 16, 24, [16, 12], 4, 9],
    "patch_size": [2, 4, 6, 3],
    "stride": [1, 2, 3, 4],
    "num_channels": [1, 3],
    "depths": [[1], [1, 1], [2, 1], [1, 1, 1], [], [1, 0]],
    "hidden_sizes": [[8], [8, 16], [8, 8], [8, 12], [4, 8, 16], [6, 12, 24]],
    "num_heads": [[1], [2, 2], [1, 2], [2, 4, 4], [3, 3, 3], [4]],
    "mlp_ratio": [0.5, 1, 2.0, 4.0, 0.01, 100.0],
    "hidden_act": ["gelu", "quick_gelu", "swishy"],
    "layer_norm_eps": [1e-6, 0.1],
    "hidden_dropout_prob": [0.0, 0.5],
    "attention_probs_dropout_prob": [0.0, 0.5],
    "drop_path_rate": [0.0, 0.5],
    "qkv_bias": [True, False],
    "use_distillation_token": [True, False],
    "initializer_range": [0.02, 1.0],
    "num_labels": [0, 1, 3],
}
SWIN_VALUES = {
    "image_size": [8, 12, 16, [16, 8], [10, 14], 9],
    "patch_size": [1, 2, 3, 4],
    "num_channels": [1, 3],
    "embed_dim": [3, 4, 6, 8, 12],
    "depths": [[1], [1, 1], [2, 1], [1, 2, 1], [], [0, 1]],
    "num_heads": [[1], [1, 2], [2, 2], [2, 4, 2], [3, 1], []],
    "window_size": [1, 2, 3, 4, 7, [2, 4]],
    "mlp_ratio": [0.5, 1.0, 4.0, 0.01, 0.0, -1.0],
    "qkv_bias": [True, False],
    "hidden_act": ["gelu", "relu", "swishy"],
    "layer_norm_eps": [1e-5, 0.1, 2.0],
    "hidden_dropout_prob": [0.0, 0.5, 1.0],
    "attention_probs_dropout_prob": [0.0, 0.5],
    "drop_path_rate": [0.0, 0.5],
    "initializer_range": [0.02, 1.0],
    "num_labels": [0, 2, 5],
    "problem_type": [None, "regression", "single_label_classification", "multi_label_classification"],
}
TEXT_VALUES = {
    "vocab_size": [2, 3, 50, 100],
    "max_position_embeddings": [1, 2, 8, 16],
    "hidden_size": [8, 12, 16, 30],
    "num_hidden_layers": [1, 2],
    "num_attention_heads": [1, 2, 3, 4],
    "intermediate_size": [8, 16],
    "hidden_act": ["gelu", "quick_gelu", "swishy"],
    "layer_norm_eps": [1e-5, 0.1],
    "hidden_dropout_prob": [0.0, 0.5],
    "attention_probs_dropout_prob": [0.0, 0.5],
    "qkv_bias": [True, False],
    "initializer_range": [0.02, 1.0],
    "bos_token_id": [None, 0, 1, 48, 49406],
    "eos_token_id": [None, 0, 1, 49, 49407],
    "pad_token_id": [None, 0, 1, 49],
}
DUAL_VALUES = {
    "projection_dim": [1, 8, 16],
    "logit_scale_init_value": [0.0, 2.659, 4.6, 11.0, 11.09, 11.1, 20.0, -5.0, 1e4],
    "logit_bias_init_value": [-10.0, 0.0, 1e4, 65000.0],
    "loss_type": ["softmax", "sigmoid", "triplet"],
    "prompt_templates": [None, ["a photo of a {}."], ["no placeholder"], "a {}"],
}
# Segmenter's head, over any image tower
SEGMENTER_VALUES = {
    "decoder_type": ["linear", "mask_transformer", "upernet"],
    "mask_decoder_layers": [1, 2, 0, -1],
    "mask_decoder_heads": [1, 2, 4, 3, 0],
    "num_labels": [1, 3, 0],
    "subpatch_factor": [1, 2, 0, 9],
}
SEGMENTER_TOWERS = {"segmenter_vit": "vitlm_vit", "segmenter_pit": "vitlm_pit", "segmenter_swin": "vitlm_swin"}
# the self-supervised checkpoints' options (DINOv2, BEiT), fuzzed with the ViT's
SSL_VALUES = {
    **VIT_VALUES,
    "layerscale_value": [None, 1e-5, 1.0, 0.0, 2.0],
    "num_register_tokens": [0, 1, 4, 2000],
    "mlp_type": ["mlp", "swiglu", "geglu"],
    "pooling": ["cls", "mean", "cls_mean", "max"],
    "norm_after_pooling": [True, False],
    "interpolate_antialias": [True, False],
    "prefix_position_embeddings": [True, False],
    "use_mask_token": [True, False],
    "relative_position_bias": ["none", "per_layer", "shared", "global"],
    "key_bias": [True, False],
    "position_embedding_type": ["learned", "none", "rope2d", "alibi"],
}
FAMILIES = {
    "vitlm_vit": (VitlmViTConfig, VIT_BASE, VIT_VALUES),
    "vitlm_vit_ssl": (VitlmViTConfig, VIT_BASE, SSL_VALUES),
    "vitlm_vit_mae": (VitlmViTMAEConfig, MAE_BASE, MAE_VALUES),
    "vitlm_vit_synthesis": (VitlmViTSynthesisConfig, SYNTHESIS_BASE, SYNTHESIS_VALUES),
    "vitlm_hybrid": (VitlmHybridConfig, HYBRID_BASE, HYBRID_VALUES),
    "vitlm_text": (VitlmTextConfig, TEXT_BASE, TEXT_VALUES),
    "vitlm_pit": (VitlmPiTConfig, PIT_BASE, PIT_VALUES),
    "vitlm_swin": (VitlmSwinConfig, SWIN_BASE, SWIN_VALUES),
}
METHODS = (
    "constructor",
    "from_dict",
    "from_pretrained",
    "AutoConfig.from_pretrained",
    "update",
    "update_from_string",
    "setattr",
    "overrides",
)
# a message names a field when it quotes one of these: the fields with a rule and the config sections
FIELD_NAME = re.compile(r"`(\w+)[`.=]|'(\w+)'")
KNOWN_FIELDS = set(FIELD_RULES) | {"vision_config", "text_config"}


def random_value(rng, values):
    return rng.choice(values) if rng.random() < 0.7 else rng.choice(ADVERSARIAL)


def random_changes(rng, values, count):
    return {name: random_value(rng, values[name]) for name in rng.sample(sorted(values), count)}


def dual_base(vision_family):
    vision = dict(FAMILIES[vision_family][1], model_type=vision_family)
    return dict(vision_config=vision, text_config=dict(TEXT_BASE), projection_dim=8)


def random_case(rng, family):
    """(config class, base values, changes): changes of a dual encoder may be nested dicts for its towers."""
    count = rng.choice([1, 1, 2, 3])
    if family.startswith("dual"):
        vision_family = {"dual_hybrid": "vitlm_hybrid", "dual_pit": "vitlm_pit", "dual_swin": "vitlm_swin"}.get(
            family, "vitlm_vit"
        )
        changes = random_changes(rng, DUAL_VALUES, rng.choice([0, 1, 2]))
        tower = rng.choice(["vision_config", "text_config", None])
        if tower == "vision_config":
            changes[tower] = random_changes(rng, FAMILIES[vision_family][2], count)
        elif tower == "text_config":
            changes[tower] = random_changes(rng, TEXT_VALUES, count)
        return VitlmDualEncoderConfig, dual_base(vision_family), changes or {"projection_dim": 0}
    if family in SEGMENTER_TOWERS:
        vision_family = SEGMENTER_TOWERS[family]
        base = dict(
            vision_config=dict(FAMILIES[vision_family][1], model_type=vision_family),
            mask_decoder_layers=1,
            mask_decoder_heads=2,
            num_labels=3,
        )
        changes = random_changes(rng, SEGMENTER_VALUES, rng.choice([0, 1, 2]))
        if rng.random() < 0.5:
            changes["vision_config"] = random_changes(rng, FAMILIES[vision_family][2], count)
        return VitlmSegmenterConfig, base, changes or {"mask_decoder_layers": 0}
    config_class, base, values = FAMILIES[family]
    return config_class, dict(base), random_changes(rng, values, count)


def as_text(value):
    """A value as `update_from_string` and `--config-overrides` read it."""
    return str(value).lower() if isinstance(value, bool) else json.dumps(value) if value is not None else "None"


def build(method, config_class, base, changes, tmp_path):
    """The config that `method` makes from `base` changed by `changes`."""
    if method == "constructor":
        return config_class(**merge(base, changes))
    if method == "from_dict":
        return config_class.from_dict(merge(base, changes))
    config = config_class(**base)
    if method.endswith("from_pretrained"):
        config.save_pretrained(tmp_path)
        loader = AutoConfig if method.startswith("AutoConfig") else config_class
        return loader.from_pretrained(tmp_path, **changes)
    if method == "update":
        config.update(changes)
    elif method == "update_from_string":
        flat = flatten(changes)
        targets = {key.rpartition(".")[0] for key in flat}
        for target in targets:  # transformers' format has no nesting: each tower is updated on its own
            owner = getattr(config, target) if target else config
            owner.update_from_string(
                ",".join(
                    f"{k.rpartition('.')[2]}={as_text(v)}" for k, v in flat.items() if k.rpartition(".")[0] == target
                )
            )
    elif method == "setattr":
        for key, value in flatten(changes).items():
            owner, _, name = key.rpartition(".")
            setattr(getattr(config, owner) if owner else config, name, value)
    else:  # `vitlm train --config-overrides`
        apply_overrides(config, parse_overrides(",".join(f"{k}={as_text(v)}" for k, v in flatten(changes).items())))
    return config


def merge(base, changes):
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = (
            {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def flatten(changes, prefix=""):
    flat = {}
    for key, value in changes.items():
        if isinstance(value, dict) and key.endswith("_config"):
            flat.update(flatten(value, f"{key}."))
        else:
            flat[prefix + key] = value
    return flat


def small(config) -> bool:
    """Cheap enough to build and run in a test: every size at most 100, at most 8x8 patches, 3 backbone blocks."""
    towers = [getattr(config, name) for name in ("vision_config", "text_config") if hasattr(config, name)]
    for tower in [config, *towers]:
        for key, value in tower.to_dict().items():
            values = value if isinstance(value, list) else [value]
            if key.endswith("_token_id") or key == "rope_theta" or not all(isinstance(v, int) for v in values):
                continue
            if max(values, default=0) > 100 or key == "backbone_depths" and sum(values) > 3:
                return False
        if hasattr(tower, "grid_size") and max(tower.grid_size) > 8:
            return False
    return True


def text_inputs(text, generator, batch_size=2):
    """Token ids ending in end-of-text then padding, as CLIP's tokenizer lays them out."""
    length = min(text.max_position_embeddings, 6)
    ids = torch.randint(0, text.vocab_size, (batch_size, length), generator=generator)
    ids[ids == text.eos_token_id] = (text.eos_token_id + 1) % text.vocab_size
    for row in range(batch_size):
        end = max(length - 1 - row, 0)
        ids[row, end] = text.eos_token_id
        ids[row, end + 1 :] = text.pad_token_id if text.pad_token_id is not None else text.eos_token_id
    return ids


def pixels(vision, generator, batch_size=2):
    height, width = vision.image_size if isinstance(vision.image_size, list) else [vision.image_size] * 2
    return torch.randn(batch_size, vision.num_channels, height, width, generator=generator)


def run_models(config, seed, train):
    """Build the family's models from `config`, run a forward on valid input, return every output tensor."""
    generator = torch.Generator().manual_seed(seed)
    if isinstance(config, VitlmDualEncoderConfig):
        model = VitlmDualEncoderModel(config)
        inputs = dict(
            input_ids=text_inputs(config.text_config, generator),
            pixel_values=pixels(config.vision_config, generator),
            return_loss=True,
        )
        detector_inputs = {k: inputs[k] for k in ("input_ids", "pixel_values")}
        runs = [(model, inputs), (VitlmDualEncoderForObjectDetection(config), detector_inputs)]
        if model.vision_model.pooled_size == config.vision_config.hidden_size:  # else refused by the segmenter
            runs.append((VitlmDualEncoderForSemanticSegmentation(config), detector_inputs))
    elif isinstance(config, VitlmSegmenterConfig):
        pixel_values = pixels(config.vision_config, generator)
        labels = torch.randint(0, max(config.num_labels, 1), (2, *pixel_values.shape[-2:]), generator=generator)
        runs = [(VitlmViTForSemanticSegmentation(config), dict(pixel_values=pixel_values, labels=labels))]
    elif isinstance(config, VitlmTextConfig):
        runs = [(VitlmTextModel(config), dict(input_ids=text_inputs(config, generator)))]
    elif isinstance(config, VitlmViTMAEConfig):
        grid = config.grid_size
        noise = torch.rand(2, grid[0] * grid[1], generator=generator)
        runs = [(VitlmViTForMaskedImageModeling(config), dict(pixel_values=pixels(config, generator), noise=noise))]
    elif isinstance(config, VitlmViTSynthesisConfig):
        grid = config.grid_size
        noise = torch.rand(2, grid[0] * grid[1], generator=generator)
        runs = [(VitlmViTForInpaintingSynthesis(config), dict(pixel_values=pixels(config, generator), noise=noise))]
    else:
        classifier_class = {
            VitlmHybridConfig: VitlmHybridForImageClassification,
            VitlmPiTConfig: VitlmPiTForImageClassification,
            VitlmSwinConfig: VitlmSwinForImageClassification,
        }.get(type(config), VitlmViTForImageClassification)
        pixel_values = pixels(config, generator)
        labels = None
        if config.num_labels > 0:
            labels = (
                torch.randn(2, config.num_labels, generator=generator)
                if config.problem_type == "regression"
                else torch.randint(0, 2, (2, config.num_labels), generator=generator).float()
                if config.problem_type == "multi_label_classification"
                else torch.randint(0, config.num_labels, (2,), generator=generator)
            )
        runs = [(classifier_class(config), dict(pixel_values=pixel_values, labels=labels))]
    tensors = []
    for model, inputs in runs:
        model.train(train)
        with torch.no_grad():
            output = model(**inputs)
        tensors += [value for value in output.values() if isinstance(value, torch.Tensor)]
    return tensors


def generate_cases():
    rng = random.Random(SEED)
    families = ["vitlm_vit", "vitlm_vit_mae", "vitlm_hybrid", "vitlm_text", "dual_vit", "dual_hybrid"]
    families += ["vitlm_pit", "dual_pit", "vitlm_swin", "dual_swin"]
    families.append("vitlm_vit_ssl")
    families.append("vitlm_vit_synthesis")
    families += list(SEGMENTER_TOWERS)
    return [
        (family, rng.choice(METHODS), random_case(rng, family)) for family in families for _ in range(CASES_PER_FAMILY)
    ]


def test_fuzzed_configs_are_refused_naming_a_field_or_build_finite_models(tmp_path):
    torch.manual_seed(SEED)
    counts = {"refused": 0, "valid": 0, "built": 0, "forwards": 0}
    failures = []
    for index, (family, method, (config_class, base, changes)) in enumerate(generate_cases()):
        case = f"#{index} {family} {method} {changes!r}"
        try:
            config = build(method, config_class, base, changes, tmp_path / str(index))
        except ValueError as error:
            named = {name for match in FIELD_NAME.findall(str(error)) for name in match if name}
            if not named & KNOWN_FIELDS:
                failures.append(f"{case}: refused without naming a field: {error}")
            counts["refused"] += 1
            continue
        except Exception as error:  # noqa: BLE001 (any other exception is a finding)
            failures.append(f"{case}: {type(error).__name__}: {error}")
            continue
        counts["valid"] += 1
        try:
            config.validate()
            if counts["valid"] % 4 == 0:  # what is saved loads back the same
                config.save_pretrained(tmp_path / f"saved{index}")
                loaded = type(config).from_pretrained(tmp_path / f"saved{index}").to_diff_dict()
                assert loaded == config.to_diff_dict()
            if small(config):
                counts["built"] += 1
                tensors = run_models(config, seed=index, train=counts["built"] % 2 == 0)
                counts["forwards"] += 1
                if not all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()):
                    failures.append(f"{case}: non-finite output")
        except Exception as error:  # noqa: BLE001
            failures.append(f"{case}: valid config, then {type(error).__name__}: {error}")
    print(counts)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])
    total = sum(counts[k] for k in ("refused", "valid"))
    assert total >= 1000 and counts["forwards"] >= 300 and counts["refused"] >= 300, counts


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "changes,field",
    [
        ({"layer_norm_eps": NAN}, "layer_norm_eps"),
        ({"position_embedding_type": "alibi"}, "position_embedding_type"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
        ({"initializer_range": 0}, "initializer_range"),
        ({"qkv_bias": "false"}, "qkv_bias"),
    ],
)
def test_each_way_of_changing_a_config_refuses_naming_the_field(method, changes, field, tmp_path):
    if method == "update_from_string" and field == "qkv_bias":
        changes = {"qkv_bias": "maybe"}  # the string format reads "false" as False, as transformers does
    with pytest.raises(ValueError, match=field):
        build(method, VitlmViTConfig, dict(VIT_BASE), changes, tmp_path)


def test_a_refused_change_leaves_the_config_as_it_was():
    config = VitlmViTConfig(**VIT_BASE)
    before = config.to_dict()
    with pytest.raises(ValueError, match="num_attention_heads"):
        config.update({"hidden_size": 24, "num_attention_heads": 5})
    with pytest.raises(ValueError, match="hidden_size"):
        config.hidden_size = 15
    assert config.to_dict() == before
    config.update({"hidden_size": 24, "num_attention_heads": 3})  # fields that must change together, in one change
    assert (config.hidden_size, config.num_attention_heads) == (24, 3)


def test_logit_scale_bound_keeps_float16_logits_finite():
    limit = torch.finfo(torch.float16).max
    assert math.exp(math.log(limit)) <= limit * (1 + 1e-9)
    VitlmDualEncoderConfig(**dual_base("vitlm_vit"), logit_scale_init_value=math.log(limit) - 1e-6)
    with pytest.raises(ValueError, match="logit_scale_init_value"):
        VitlmDualEncoderConfig(**dual_base("vitlm_vit"), logit_scale_init_value=math.log(limit) + 1e-3)
    with pytest.raises(ValueError, match="logit_scale_init_value"):  # with SigLIP's bias, less room is left
        VitlmDualEncoderConfig(**dual_base("vitlm_vit"), loss_type="sigmoid", logit_scale_init_value=11.09)


def test_small_vocabulary_text_config_defaults_its_special_tokens_into_the_vocabulary():
    config = VitlmTextConfig(vocab_size=99)
    assert (config.bos_token_id, config.eos_token_id) == (97, 98)
    assert (VitlmTextConfig().bos_token_id, VitlmTextConfig().eos_token_id) == (49406, 49407)  # CLIP's
    with pytest.raises(ValueError, match="eos_token_id"):
        VitlmTextConfig(vocab_size=99, eos_token_id=49407)


def test_config_overrides_refuse_unknown_keys_and_reach_towers():
    config = VitlmDualEncoderConfig(**dual_base("vitlm_vit"))
    apply_overrides(config, parse_overrides("vision_config.hidden_size=32,vision_config.num_attention_heads=4"))
    assert (config.vision_config.hidden_size, config.vision_config.num_attention_heads) == (32, 4)
    assert config.vision_config.image_size == VIT_BASE["image_size"]  # the tower's other fields are kept
    with pytest.raises(ValueError, match="hiden_size"):
        apply_overrides(config, parse_overrides("vision_config.hiden_size=32"))
    with pytest.raises(ValueError, match="position_embedding_type"):
        apply_overrides(VitlmViTConfig(**VIT_BASE), parse_overrides("position_embedding_type=alibi,layer_norm_eps=-1"))


def test_integer_values_of_real_fields_build_float_parameters():
    # found by the fuzz: `logit_scale_init_value=0` made an integer tensor that cannot be a parameter
    config = VitlmDualEncoderConfig(
        **dual_base("vitlm_vit"), loss_type="sigmoid", logit_scale_init_value=0, logit_bias_init_value=-10
    )
    assert isinstance(config.logit_scale_init_value, float) and isinstance(config.logit_bias_init_value, float)
    model = VitlmDualEncoderModel(config)
    assert model.logit_scale.dtype == model.logit_bias.dtype == torch.float32
