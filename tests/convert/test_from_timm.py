"""timm -> vitlm: parity with timm's own models and eval transform, refusals, and the saved folder in pipelines.

Reference models come from `timm.create_model(name, pretrained=False)` with perturbed random weights; their state
dicts are saved to .safetensors files that `vitlm.convert.load` hands to timm's own pretrained-loading code.
"""

import math
import re
from functools import partial

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from timm.layers import HybridEmbed, StdConv2d, StdConv2dSame
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import VisionTransformer
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

import vitlm  # noqa: F401  (registers the Auto classes)
from vitlm import (
    VitlmHybridConfig,
    VitlmHybridForImageClassification,
    VitlmImageProcessor,
    VitlmPiTForImageClassification,
    VitlmPiTModel,
    VitlmViTForImageClassification,
    VitlmViTModel,
)
from vitlm.convert import UnsupportedSourceError, convert, load
from vitlm.convert.from_timm import convert_model, image_processor, vitlm_config

TOLERANCE = 1e-4


def random_timm_model(name, **kwargs):
    """timm's model with random weights, each perturbed so that norms and biases differ from their initial ones and
    a swapped or dropped norm or bias shows in the outputs."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def save_checkpoint(model, folder):
    path = folder / "model.safetensors"
    save_file(model.state_dict(), path)
    return path


def pixels(config, batch_size):
    size = config.image_size
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))


def max_diff(actual, expected):
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random vit_tiny_patch16_224 and its weights as a local checkpoint."""
    model = random_timm_model("vit_tiny_patch16_224")
    return model, save_checkpoint(model, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # (height, width): wide, tall, smaller than the crop, near-square
    sizes = [(217, 301), (401, 150), (97, 97), (250, 248)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def test_local_checkpoint_reproduces_timm(tiny):
    reference, checkpoint = tiny
    model, processor = load("timm:vit_tiny_patch16_224", checkpoint=checkpoint)
    assert isinstance(model, VitlmViTForImageClassification) and isinstance(processor, VitlmImageProcessor)
    assert model.config.num_labels == 1000 and model.config.id2label[0] == "tench, Tinca tinca"
    x = pixels(model.config, 4)
    with torch.no_grad():
        expected, actual = reference(x), model(x).logits
    assert max_diff(actual, expected) <= TOLERANCE
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize(
    "spec,batch_size,hybrid",
    [
        ("vit_base_patch16_224", 4, False),
        ("vit_base_r50_s16_384", 2, True),
        # timm's own weights for this tag are a JAX .npz (custom_load); a local safetensors file goes through
        # timm's state-dict loader instead
        ("vit_small_r26_s32_224.augreg_in21k_ft_in1k", 2, True),
        # norm_pre, a patch projection without bias, and a 512-way CLIP projection head without label names
        ("vit_xsmall_patch16_clip_224", 4, False),
    ],
)
def test_classifier_parity(tmp_path, spec, batch_size, hybrid):
    reference = random_timm_model(spec)
    model, _ = load(f"timm:{spec}", checkpoint=save_checkpoint(reference, tmp_path))
    assert type(model) is (VitlmHybridForImageClassification if hybrid else VitlmViTForImageClassification)
    x = pixels(model.config, batch_size)
    with torch.no_grad():
        expected, actual = reference(x), model(x).logits
    assert max_diff(actual, expected) <= TOLERANCE
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("vit_xsmall_patch16_clip_224", {"pre_norm": True, "patch_bias": False, "layer_norm_eps": 1e-5}),
        ("vit_base_patch16_clip_quickgelu_224", {"hidden_act": "quick_gelu", "pre_norm": True}),
        (
            "vit_base_patch16_siglip_gap_224",
            {"use_cls_token": False, "pooling": "mean", "num_prefix_tokens": 0},
        ),
        ("deit_base_distilled_patch16_384", {"use_distillation_token": True, "image_size": 384, "num_labels": 1000}),
        ("vit_large_r50_s32_384", {"backbone_depths": [3, 4, 6, 3], "image_size": 384, "hidden_size": 1024}),
        ("deit3_small_patch16_224", {"layerscale_value": 1e-6, "prefix_position_embeddings": False}),
        ("vit_medium_patch16_gap_256", {"layerscale_value": 1e-6, "pooling": "mean", "use_cls_token": False}),
        (
            "vit_small_patch14_reg4_dinov2",
            {"num_register_tokens": 4, "prefix_position_embeddings": False, "image_size": 518},
        ),
        ("vit_giant_patch14_dinov2", {"mlp_type": "swiglu", "hidden_act": "silu", "intermediate_size": 4096}),
    ],
)
def test_registry_models_translate(spec, expected):
    config = vitlm_config(timm.create_model(spec, pretrained=False, device="meta"), spec)
    assert {name: getattr(config, name) for name in expected} == expected


def test_unlabelled_head_keeps_default_label_names():
    # a CLIP tower's 512-way projection head has no class names
    config = vitlm_config(timm.create_model("vit_xsmall_patch16_clip_224", pretrained=False, device="meta"), "test")
    assert config.num_labels == 512 and config.id2label[0] == "LABEL_0"


def test_deit_distilled_parity(tmp_path):
    reference = random_timm_model("deit_tiny_distilled_patch16_224")
    model, _ = load("timm:deit_tiny_distilled_patch16_224", checkpoint=save_checkpoint(reference, tmp_path))
    assert model.config.use_distillation_token
    x = pixels(model.config, 4)
    with torch.no_grad():
        features = reference.forward_features(x)
        expected = reference(x)  # in eval mode, timm averages the two heads as vitlm does
        output = model(x)
    assert max_diff(output.logits, expected) <= TOLERANCE
    assert max_diff(output.cls_logits, reference.head(features[:, 0])) <= TOLERANCE
    assert max_diff(output.distillation_logits, reference.head_dist(features[:, 1])) <= TOLERANCE
    assert torch.equal(output.logits.argmax(-1), expected.argmax(-1))


def test_base_model_parity(tmp_path):
    # DINO's weights have no classifier (num_classes=0): the base model, whose pooled output is timm's features
    reference = random_timm_model("vit_small_patch16_224.dino")
    assert reference.num_classes == 0
    model, _ = load("timm:vit_small_patch16_224.dino", checkpoint=save_checkpoint(reference, tmp_path))
    assert type(model) is VitlmViTModel
    x = pixels(model.config, 2)
    with torch.no_grad():
        output = model(x)
        assert max_diff(output.last_hidden_state, reference.forward_features(x)) <= TOLERANCE
        assert max_diff(output.pooler_output, reference(x)) <= TOLERANCE


@pytest.mark.parametrize(
    "kwargs",
    [
        # average pooling after the final norm is vitlm's mean pooling, with or without a class token
        {"class_token": False, "global_pool": "avg", "fc_norm": False},
        {"global_pool": "avg", "fc_norm": False, "act_layer": "gelu_tanh", "qkv_bias": False},
        {"act_layer": "quick_gelu", "pre_norm": True, "num_classes": 0},
    ],
)
def test_variant_parity(kwargs):
    """Options no registered model name combines, translated and mapped by the converter's own functions."""
    reference = random_timm_model("vit_tiny_patch16_224", depth=2, **kwargs)
    model = convert_model(reference, vitlm_config(reference, "test"), "test")
    x = pixels(model.config, 2)
    with torch.no_grad():
        output = model(x)
        expected = reference(x)
    actual = output.logits if reference.num_classes else output.pooler_output
    assert max_diff(actual, expected) <= TOLERANCE


def test_classification_folder_loads_and_runs_in_pipeline(tmp_path, tiny):
    reference, checkpoint = tiny
    out_dir = convert("timm:vit_tiny_patch16_224", tmp_path / "converted", checkpoint=checkpoint)

    model = AutoModelForImageClassification.from_pretrained(out_dir)
    processor = AutoImageProcessor.from_pretrained(out_dir)
    assert isinstance(model, VitlmViTForImageClassification) and isinstance(processor, VitlmImageProcessor)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (180, 260, 3), dtype=np.uint8))
    transform = create_transform(**resolve_data_config({}, model=reference))
    with torch.no_grad():
        expected = reference(transform(image)[None])
        actual = model(**processor(image, return_tensors="pt")).logits
    assert max_diff(actual, expected) <= TOLERANCE

    result = pipeline("image-classification", model=str(out_dir))(image)
    assert result[0]["label"] == ImageNetInfo().index_to_description(expected.argmax().item())


@pytest.mark.parametrize(
    "data_config",
    [
        resolve_data_config({}, model=timm.create_model(spec, pretrained=False, device="meta"))
        for spec in (
            "vit_base_patch16_224.augreg2_in21k_ft_in1k",  # bicubic, crop_pct 0.9, inception mean/std
            "vit_base_r50_s16_384.orig_in21k_ft_in1k",  # crop_pct 1.0 at 384
            "vit_base_patch16_224_miil.in21k_ft_in1k",  # bilinear, crop_pct 0.875, mean 0 / std 1
        )
    ]
    + [
        {
            "input_size": (3, 224, 224),
            "interpolation": "bicubic",
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "crop_pct": 0.95,
            "crop_mode": "squash",
        }
    ],
)
def test_processor_matches_timm_transform(images, data_config):
    processor = image_processor(data_config)
    transform = create_transform(**data_config)
    actual = processor(images, return_tensors="pt")["pixel_values"]
    expected = torch.stack([transform(image) for image in images])
    assert max_diff(actual, expected) <= 1e-5


@pytest.mark.parametrize("input_size,crop_mode", [((3, 224, 224), "border"), ((3, 224, 320), "center")])
def test_processor_refuses_crops_it_cannot_reproduce(input_size, crop_mode):
    data_config = {
        "input_size": input_size,
        "interpolation": "bicubic",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 0.9,
        "crop_mode": crop_mode,
    }
    with pytest.raises(UnsupportedSourceError, match=f"crop_mode='{crop_mode}'"):
        image_processor(data_config)


@pytest.mark.parametrize(
    "spec,feature",
    [
        ("vit_base_patch16_reg4_gap_256", "the final norm after pooling (fc_norm)"),
        ("vit_base_patch16_siglip_224", "global_pool='map'"),
        ("vit_small_resnet26d_224", "FeatureListNet hybrid backbone"),
        ("vit_tiny_r_s16_p8_224", "Sequential hybrid backbone"),
        ("vit_relpos_small_patch16_224", "VisionTransformerRelPos"),
        ("eva02_tiny_patch14_224", "Eva"),
    ],
)
def test_unsupported_registry_models_are_refused_before_loading_weights(spec, feature):
    # no checkpoint and no network: a refusal must come from the architecture alone
    with pytest.raises(UnsupportedSourceError, match=re.escape(feature)):
        load(f"timm:{spec}")


def tiny_hybrid(**backbone_kwargs):
    """A small hybrid on the meta device; by default the `vit_*_r50_*` backbone: non-preact, 'same' padding."""
    options = {"preact": False, "stem_type": "same", "conv_layer": partial(StdConv2dSame, eps=1e-8), **backbone_kwargs}
    backbone = ResNetV2(layers=(1, 1), num_classes=0, global_pool="", device="meta", **options)
    embed = partial(HybridEmbed, backbone=backbone)
    return VisionTransformer(
        img_size=64, patch_size=1, embed_layer=embed, embed_dim=64, depth=1, num_heads=2, device="meta"
    )


@pytest.mark.parametrize(
    "build,feature",
    [
        (
            lambda: timm.create_model("vit_tiny_patch16_224", scale_attn_norm=True, device="meta"),
            "a norm inside attention",
        ),
        (lambda: timm.create_model("vit_tiny_patch16_224", qk_norm=True, device="meta"), "qk_norm"),
        (lambda: timm.create_model("vit_tiny_patch16_224", norm_layer="rmsnorm", device="meta"), "RmsNorm norms"),
        (lambda: timm.create_model("vit_tiny_patch16_224", act_layer="relu", device="meta"), "ReLU activation"),
        (lambda: timm.create_model("vit_tiny_patch16_224", global_pool="avg", device="meta"), "(fc_norm)"),
        (lambda: timm.create_model("vit_tiny_patch16_224", global_pool="avgmax", device="meta"), "'avgmax'"),
        (lambda: timm.create_model("vit_tiny_patch16_224", final_norm=False, device="meta"), "final_norm=False"),
        (lambda: timm.create_model("vit_tiny_patch16_224", proj_bias=False, device="meta"), "proj_bias=False"),
        (
            lambda: timm.create_model("deit_tiny_distilled_patch16_224", num_classes=0, device="meta"),
            "DeiT distilled model without classifiers",
        ),
        (lambda: tiny_hybrid(preact=True), "pre-activation ResNetV2 (preact=True)"),
        (lambda: tiny_hybrid(stem_type="", conv_layer=partial(StdConv2d, eps=1e-8)), "'SAME' padding"),
        (lambda: tiny_hybrid(avg_down=True), "avg_down=True"),
    ],
)
def test_unsupported_options_are_refused(build, feature):
    with pytest.raises(UnsupportedSourceError, match=re.escape(feature)):
        vitlm_config(build(), "test")


def test_tiny_hybrid_control_case_maps():
    config = vitlm_config(tiny_hybrid(), "test")
    assert isinstance(config, VitlmHybridConfig) and config.backbone_depths == [1, 1]
    assert config.backbone_std_conv_eps == 1e-8 and config.backbone_num_groups == 32


def test_refused_conversion_leaves_no_folder(tmp_path):
    # an EVA-02 model (rotary attention, SwiGLU without packing), with a real checkpoint to load
    checkpoint = save_checkpoint(timm.create_model("eva02_tiny_patch14_224", pretrained=False), tmp_path)
    with pytest.raises(UnsupportedSourceError, match="Eva"):
        convert("timm:eva02_tiny_patch14_224", tmp_path / "converted", checkpoint=checkpoint)
    assert [path.name for path in tmp_path.iterdir()] == ["model.safetensors"]


def test_checkpoint_must_be_safetensors(tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        load("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "model.pth")


def test_a_weight_the_tables_do_not_account_for_is_refused_by_name():
    """An extra weight (under a block's attention, which a rule covers, but vitlm's attention lacks) and a missing one
    are named on both sides."""
    reference = random_timm_model("vit_tiny_patch16_224", depth=2)
    config = vitlm_config(reference, "test")
    reference.blocks[0].attn.register_buffer("extra_scale", torch.ones(1))
    with pytest.raises(
        UnsupportedSourceError, match=r"vit\.encoder\.layers\.0\.attention\.extra_scale \(from blocks\.0"
    ):
        convert_model(reference, config, "test")
    del reference.blocks[0].attn.extra_scale
    reference.blocks[1].mlp.fc2.bias = None
    with pytest.raises(
        UnsupportedSourceError, match=r"missing: \['vit\.encoder\.layers\.1\.mlp\.fc2\.bias \(from blocks"
    ):
        convert_model(reference, config, "test")


# ---- PiT (timm's PoolingVisionTransformer) ----


def pit_stage_maps(model, outputs):
    """vitlm's stage outputs as timm's `forward_intermediates` gives them: the patch tokens on their grid, NCHW."""
    prefix = model.config.num_prefix_tokens
    maps = []
    for hidden_states in outputs.hidden_states[1:]:
        patches = hidden_states[:, prefix:]
        side = math.isqrt(patches.shape[1])
        maps.append(patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side))
    return maps


@pytest.mark.parametrize("spec", ["pit_ti_224", "pit_b_distilled_224"])
def test_pit_parity(tmp_path, spec):
    """Full-size models, random weights, 16 inputs: logits, both heads of the distilled model and every stage's map."""
    reference = random_timm_model(spec)
    model, processor = load(f"timm:{spec}", checkpoint=save_checkpoint(reference, tmp_path))
    assert type(model) is VitlmPiTForImageClassification and model.config.id2label[0] == "tench, Tinca tinca"
    assert processor.crop_size == {"height": 224, "width": 224} and processor.size == {"shortest_edge": 248}
    x = pixels(model.config, 16)
    with torch.no_grad():
        # one pass of timm's: the normed class tokens (`forward_features`) and each stage's map
        features, stage_maps = reference.forward_intermediates(x)
        expected = reference.forward_head(features)  # in eval mode the distilled heads' mean, as vitlm's
        output = model(x, output_hidden_states=True)
    assert max_diff(output.logits, expected) <= TOLERANCE
    assert torch.equal(output.logits.argmax(-1), expected.argmax(-1))
    for actual, wanted in zip(pit_stage_maps(model, output), stage_maps, strict=True):
        assert max_diff(actual, wanted) <= TOLERANCE
    if model.config.use_distillation_token:
        assert max_diff(output.cls_logits, reference.head(features[:, 0])) <= TOLERANCE
        assert max_diff(output.distillation_logits, reference.head_dist(features[:, 1])) <= TOLERANCE


@pytest.mark.parametrize("spec,size", [("pit_ti_224", 256), ("pit_b_distilled_224", 280)])
def test_pit_parity_at_another_resolution(spec, size):
    """The 224 model with `interpolate_pos_encoding=True` against timm's model built at `size` holding the same
    weights, its position table resized by timm's own `resample_abs_pos_embed` (bicubic; `antialias=False`, as vitlm
    resizes without antialiasing, which for an enlargement is plain bicubic with PyTorch's a = -0.75)."""
    from timm.layers import resample_abs_pos_embed

    reference = random_timm_model(spec)
    model = convert_model(reference, vitlm_config(reference, spec), spec)
    resized = timm.create_model(spec, pretrained=False, img_size=size).eval()
    state = reference.state_dict()
    table = state["pos_embed"]  # (1, width, height, width) on the 224 grid
    grid = resized.patch_embed.grid_size
    tokens = resample_abs_pos_embed(table.flatten(2).transpose(1, 2), grid, num_prefix_tokens=0, antialias=False)
    state["pos_embed"] = tokens.transpose(1, 2).reshape(1, -1, *grid)
    resized.load_state_dict(state)
    x = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = resized(x)
        actual = model(x, interpolate_pos_encoding=True).logits
    assert max_diff(actual, expected) <= TOLERANCE
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(x[:1])


def test_pit_built_at_another_resolution_converts():
    """timm's PiT built for 256-pixel inputs (a 31x31 patch grid) is a vitlm PiT of that image size."""
    reference = random_timm_model("pit_ti_224", img_size=256, depth=[1, 1, 1])
    model = convert_model(reference, vitlm_config(reference, "test"), "test")
    assert model.config.image_size == 256 and model.config.grid_size == (31, 31)
    x = torch.randn(4, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x)) <= TOLERANCE


def test_pit_without_classifier_is_the_base_model():
    reference = random_timm_model("pit_ti_224", num_classes=0, depth=[1, 1, 1])
    model = convert_model(reference, vitlm_config(reference, "test"), "test")
    assert type(model) is VitlmPiTModel
    x = pixels(model.config, 2)
    with torch.no_grad():
        assert max_diff(model(x).pooler_output, reference(x)) <= TOLERANCE


@pytest.mark.parametrize(
    "kwargs,feature",
    [
        ({"global_pool": ""}, "global_pool=''"),
        ({"distilled": True, "num_classes": 0}, "a distilled PiT without classifiers"),
        ({"stride": 5}, "`patch_size` (16) must be a multiple of `stride` (5)"),
    ],
)
def test_unsupported_pit_options_are_refused(kwargs, feature):
    reference = timm.create_model("pit_ti_224", pretrained=False, device="meta", depth=[1, 1, 1], **kwargs)
    with pytest.raises(UnsupportedSourceError, match=re.escape(feature)):
        vitlm_config(reference, "test")


# ---- self-supervised checkpoints: DINO, DINOv2 (layer scale), DINOv2-reg (registers without class position) ----


@pytest.mark.parametrize(
    "spec", ["vit_small_patch14_dinov2.lvd142m", "vit_small_patch14_reg4_dinov2.lvd142m", "vit_base_patch16_224.dino"]
)
def test_self_supervised_parity_at_full_size(tmp_path, spec):
    """Full-size models with random weights: the base model's tokens and pooled features are timm's."""
    reference = random_timm_model(spec)
    model, processor = load(f"timm:{spec}", checkpoint=save_checkpoint(reference, tmp_path))
    assert type(model) is VitlmViTModel
    assert processor.crop_size["height"] == model.config.image_size
    x = pixels(model.config, 1)
    with torch.no_grad():
        output = model(x)
        assert max_diff(output.last_hidden_state, reference.forward_features(x)) <= TOLERANCE
        assert max_diff(output.pooler_output, reference.forward_head(reference.forward_features(x))) <= TOLERANCE


@pytest.mark.parametrize(
    "spec,size",
    [("vit_small_patch14_dinov2", 224), ("vit_small_patch14_reg4_dinov2", 280), ("vit_base_patch16_224.dino", 288)],
)
def test_self_supervised_parity_at_another_resolution(spec, size):
    """The native model with `interpolate_pos_encoding=True` against timm's model built at `size` holding the same
    weights, its position table resized by timm's own `resample_abs_pos_embed` (not antialiased, as vitlm)."""
    from timm.layers import resample_abs_pos_embed

    reference = random_timm_model(spec)
    model = convert_model(reference, vitlm_config(reference, spec), spec)
    resized = timm.create_model(spec, pretrained=False, img_size=size).eval()
    state = reference.state_dict()
    prefix = 0 if reference.no_embed_class else reference.num_prefix_tokens
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"], resized.patch_embed.grid_size, num_prefix_tokens=prefix, antialias=False
    )
    resized.load_state_dict(state)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert max_diff(model(x, interpolate_pos_encoding=True).last_hidden_state, resized.forward_features(x)) <= (
            TOLERANCE
        )
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(x)


@pytest.mark.parametrize(
    "kwargs",
    [
        # DINOv2-giant's packed SwiGLU with layer scale, small
        {"mlp_layer": "swiglu_packed", "act_layer": "silu", "mlp_ratio": 2.66667 * 2, "embed_dim": 96},
        # DeiT-3: layer scale, no class position, a classifier
        {"init_values": 1e-6, "no_embed_class": True, "num_classes": 5},
        # registers with average pooling (they are not pooled) and a classifier
        {"reg_tokens": 2, "no_embed_class": True, "global_pool": "avg", "fc_norm": False, "num_classes": 3},
    ],
)
def test_self_supervised_variant_parity(kwargs):
    kwargs = dict(kwargs)
    if kwargs.get("mlp_layer") == "swiglu_packed":
        from timm.layers import SwiGLUPacked

        kwargs["mlp_layer"] = SwiGLUPacked
    reference = random_timm_model("vit_small_patch14_dinov2", depth=2, img_size=56, **kwargs)
    model = convert_model(reference, vitlm_config(reference, "test"), "test")
    x = pixels(model.config, 2)
    with torch.no_grad():
        output = model(x)
        expected = reference(x)
    actual = output.logits if reference.num_classes else output.pooler_output
    assert max_diff(actual, expected) <= TOLERANCE


def test_registers_with_positions_are_refused():
    reference = timm.create_model("vit_tiny_patch16_224", reg_tokens=2, device="meta")
    with pytest.raises(UnsupportedSourceError, match="register tokens with rows in the position table"):
        vitlm_config(reference, "test")


def test_glu_gating_with_the_second_half_is_refused():
    from functools import partial as bind

    from timm.layers import GluMlp

    reference = timm.create_model(
        "vit_tiny_patch16_224", mlp_layer=bind(GluMlp, gate_last=True), act_layer="silu", device="meta"
    )
    with pytest.raises(UnsupportedSourceError, match="GluMlp gating with the second half"):
        vitlm_config(reference, "test")


# ---- BEiT: relative position bias (per block or shared), query and value biases, layer scale, mean + fc_norm ----


def test_beit_parity_at_full_size(tmp_path):
    """beit_base_patch16_224 (its ImageNet-22k-then-1k tag) with random weights: logits and pooled features."""
    spec = "beit_base_patch16_224.in22k_ft_in22k_in1k"
    reference = random_timm_model(spec)
    model, processor = load(f"timm:{spec}", checkpoint=save_checkpoint(reference, tmp_path))
    assert type(model) is VitlmViTForImageClassification
    config = model.config
    assert (config.relative_position_bias, config.position_embedding_type, config.key_bias) == (
        "per_layer",
        "none",
        False,
    )
    assert config.pooling == "mean" and config.norm_after_pooling and processor.crop_size["height"] == 224
    x = pixels(config, 2)
    with torch.no_grad():
        output = model(x)
        expected = reference(x)
        features = reference.forward_head(reference.forward_features(x), pre_logits=True)
        assert max_diff(output.logits, expected) <= TOLERANCE
        assert max_diff(model.vit(x).pooler_output, features) <= TOLERANCE
    assert torch.equal(output.logits.argmax(-1), expected.argmax(-1))
    with pytest.raises(ValueError, match="relative position bias.*interpolate_pos_encoding=True"):
        model(torch.randn(1, 3, 256, 256))


@pytest.mark.parametrize(
    "kwargs,relative",
    [
        ({"use_shared_rel_pos_bias": True, "use_rel_pos_bias": False, "num_classes": 0}, "shared"),
        ({"use_abs_pos_emb": True, "use_rel_pos_bias": False, "init_values": None, "num_classes": 4}, "none"),
        ({"qkv_bias": False, "num_classes": 3}, "per_layer"),
    ],
)
def test_beit_variant_parity(kwargs, relative):
    reference = random_timm_model("beit_base_patch16_224", depth=2, embed_dim=64, num_heads=4, **kwargs)
    model = convert_model(reference, vitlm_config(reference, "test"), "test")
    assert model.config.relative_position_bias == relative
    x = pixels(model.config, 2)
    with torch.no_grad():
        output = model(x)
        expected = reference(x)
    actual = output.logits if reference.num_classes else output.pooler_output
    assert max_diff(actual, expected) <= TOLERANCE
