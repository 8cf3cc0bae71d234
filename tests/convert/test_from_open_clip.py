"""open_clip -> vitlm: parity with open_clip's own models, preprocessing and tokenizer; refusals; saved folders.

Reference models come from open_clip's constructors with random weights; the converted side always uses its own
processor on the same PIL images and strings.
"""

import json
import re
from operator import attrgetter

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModel, AutoProcessor, pipeline

import vitlm  # noqa: F401  (registers the Auto classes)
from vitlm.convert import Converted, UnsupportedSourceError, convert, load
from vitlm.convert.from_open_clip import convert_model

PROMPTS = [f"a photo of a {name}" for name in "cat dog car plane ship bird frog horse deer truck".split()]
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny(vision=None, text=None, **model):
    """A two-layer open_clip model config, with overrides of its towers' and the model's options."""
    return {
        **TINY,
        "vision_cfg": {**TINY["vision_cfg"], **(vision or {})},
        "text_cfg": {**TINY["text_cfg"], **(text or {})},
        **model,
    }


# name -> (open_clip config, expected vitlm config values)
SUPPORTED = {
    "vitlm-test-quickgelu": (
        tiny(quick_gelu=True),
        {"vision_config.hidden_act": "quick_gelu", "text_config.hidden_act": "quick_gelu", "loss_type": "softmax"},
    ),
    # SigLIP-style loss, on CustomTextCLIP's `text.` layout, pooled at the end-of-text id
    "vitlm-test-sigmoid": (
        tiny(text={"pool_type": "eos", "eos_id": 49407}, custom_text=True, init_logit_bias=-10.0),
        {"loss_type": "sigmoid", "vision_config.hidden_act": "gelu"},
    ),
    "vitlm-test-variants": (
        tiny(
            vision={
                "no_ln_pre": True,
                "pool_type": "avg",
                "pos_embed_type": "sin_cos_2d",
                "act_kwargs": {"approximate": "tanh"},
                "norm_kwargs": {"eps": 1e-6},
            },
            text={"block_type": "custom"},
            nonscalar_logit_scale=True,
        ),
        {
            "vision_config.pre_norm": False,
            "vision_config.pooling": "mean",
            "vision_config.hidden_act": "gelu_pytorch_tanh",
            "vision_config.layer_norm_eps": 1e-6,
            "text_config.layer_norm_eps": 1e-5,
        },
    ),
    # a LayerNorm acts on each token alone: normalizing after taking the class token changes nothing
    "vitlm-test-final-ln-after-pool": (
        tiny(vision={"final_ln_after_pool": True, "patch_dropout": 0.5}),
        {"vision_config.pre_norm": True, "vision_config.pooling": "cls"},
    ),
}
# name -> (open_clip config, the refusal's wording)
UNSUPPORTED = {
    "vitlm-test-timm": (tiny(vision={"timm_model_name": "vit_tiny_patch16_224", "timm_pool": "token"}), "TimmModel"),
    "vitlm-test-resnet": (tiny(vision={"layers": [1, 1, 1, 1], "width": 16, "head_width": 16}), "ModifiedResNet"),
    "vitlm-test-coca": (
        tiny(
            vision={"attentional_pool": True, "attn_pooler_heads": 2},
            text={"embed_cls": True},
            multimodal_cfg={"width": 64, "heads": 2, "layers": 1, "attn_pooler_heads": 2},
            custom_text=True,
        ),
        "CoCa",
    ),
    "vitlm-test-attn-pool": (
        tiny(vision={"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2}),
        "attentional pooling",
    ),
    "vitlm-test-layer-scale": (tiny(text={"ls_init_value": 1e-5}), r"text layer scale \(ls_init_value\)"),
    "vitlm-test-qk-norm": (tiny(vision={"qk_norm": True}), r"image query/key LayerNorms \(qk_norm\)"),
    "vitlm-test-avg-final-ln": (
        tiny(vision={"pool_type": "avg", "final_ln_after_pool": True}),
        "LayerNorm after average pooling",
    ),
    "vitlm-test-text-cls": (tiny(text={"embed_cls": True}, custom_text=True), "text class token"),
    "vitlm-test-bidirectional": (tiny(text={"no_causal_mask": True}), "bidirectional text attention"),
    "vitlm-test-last-token": (tiny(text={"pool_type": "last"}), "text pooling 'last'"),
    "vitlm-test-proj-bias": (tiny(text={"proj_bias": True}), "text projection bias"),
    "vitlm-test-vocab": (tiny(text={"vocab_size": 32000}), "32000-token vocabulary"),
    "vitlm-test-cleaning": (tiny(text={"tokenizer_kwargs": {"clean": "canonicalize"}}), "text cleaning"),
}


@pytest.fixture(scope="module", autouse=True)
def registered_configs():
    configs = {name: config for name, (config, _) in {**SUPPORTED, **UNSUPPORTED}.items()}
    open_clip.factory._MODEL_CONFIGS.update(configs)
    yield
    for name in configs:
        del open_clip.factory._MODEL_CONFIGS[name]


def perturbed(model, seed=0):
    """Noise on every weight: open_clip's init leaves biases at zero and norms at identity, which would hide a
    swapped or transposed mapping."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def build(name, seed=0):
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    return perturbed(model, seed), preprocess


def photos(count, seed=0, smallest=96, largest=320):
    """Textured colour fields of assorted sizes (smaller and larger than the model's input), some grayscale."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        height, width = (int(side) for side in rng.integers(smallest, largest, size=2))
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((width, height))
        pixels = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 24, (height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        images.append(image.convert("L") if index % 5 == 4 else image)
    return images


def run_both(reference, preprocess, tokenizer, converted, images, texts):
    """Each side's (image embeddings, text embeddings, logits per image), from its own preprocessing."""
    with torch.no_grad():
        pixels = torch.stack([preprocess(image) for image in images])
        image_embeds, text_embeds, logit_scale, *bias = reference(pixels, tokenizer(texts))
        # open_clip's `get_logits`, without encoding everything a second time
        logits = logit_scale * image_embeds @ text_embeds.t() + (bias[0] if bias else 0)
        inputs = converted.processor(images=images, text=texts, padding=True, return_tensors="pt")
        assert (inputs["pixel_values"] - pixels).abs().max() <= 1e-5
        outputs = converted.model(**inputs)
    return (image_embeds, text_embeds, logits), (outputs.image_embeds, outputs.text_embeds, outputs.logits_per_image)


def assert_parity(reference_outputs, vitlm_outputs, atol=1e-4):
    for name, expected, actual in zip(("image_embeds", "text_embeds", "logits"), reference_outputs, vitlm_outputs):
        assert actual.shape == expected.shape, name
        assert (actual - expected).abs().max() <= atol, name


@pytest.fixture(scope="module")
def vit_b_32():
    return build("ViT-B-32")


@pytest.fixture(scope="module")
def vit_b_32_checkpoint(vit_b_32, tmp_path_factory):
    path = tmp_path_factory.mktemp("open_clip") / "vit_b_32.safetensors"
    save_file(vit_b_32[0].state_dict(), path)
    return path


def test_vit_b_32_parity_and_zero_shot(vit_b_32):
    reference, preprocess = vit_b_32
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    converted = convert_model(reference, tokenizer)

    vision, text = converted.model.config.vision_config, converted.model.config.text_config
    assert (vision.patch_size, vision.hidden_size, vision.num_hidden_layers) == (32, 768, 12)
    assert vision.hidden_act == "gelu" and vision.pre_norm and not vision.patch_bias and vision.layer_norm_eps == 1e-5
    assert (text.vocab_size, text.max_position_embeddings) == (49408, 77)
    assert (text.bos_token_id, text.eos_token_id) == (49406, 49407)
    assert converted.model.config.loss_type == "softmax" and converted.model.logit_bias is None
    assert converted.model.config.logit_scale_init_value == pytest.approx(reference.logit_scale.item())

    images = photos(16)
    reference_outputs, vitlm_outputs = run_both(reference, preprocess, tokenizer, converted, images, PROMPTS)
    assert_parity(reference_outputs, vitlm_outputs)
    assert torch.equal(vitlm_outputs[2].argmax(dim=1), reference_outputs[2].argmax(dim=1))


@pytest.mark.parametrize("spelling", ["tag", "checkpoint"])
def test_loads_weights_through_open_clips_pretrained_path(vit_b_32, vit_b_32_checkpoint, spelling):
    reference, preprocess = vit_b_32
    if spelling == "tag":
        converted = load(f"open_clip:ViT-B-32/{vit_b_32_checkpoint}")
    else:
        converted = load("open_clip:ViT-B-32", checkpoint=vit_b_32_checkpoint)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    assert_parity(*run_both(reference, preprocess, tokenizer, converted, photos(2, seed=1), PROMPTS[:3]))


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_supported_variants(name, tmp_path):
    reference, preprocess = build(name)
    checkpoint = tmp_path / "weights.safetensors"
    save_file(reference.state_dict(), checkpoint)
    converted = load(f"open_clip:{name}", checkpoint=checkpoint)

    config = converted.model.config
    for key, value in SUPPORTED[name][1].items():
        assert attrgetter(key)(config) == value, key
    assert config.logit_scale_init_value == pytest.approx(reference.logit_scale.item())
    if reference.logit_bias is not None:
        assert converted.model.logit_bias.item() == pytest.approx(reference.logit_bias.item())
        assert config.logit_bias_init_value == pytest.approx(reference.logit_bias.item())
    tokenizer = open_clip.get_tokenizer(name)
    images = photos(3, seed=2, smallest=40, largest=120)
    assert_parity(*run_both(reference, preprocess, tokenizer, converted, images, PROMPTS[:4]))


def write_local_dir(folder, model_config, preprocess_config, state_dict=None):
    folder.mkdir()
    config = {"model_cfg": model_config, "preprocess_cfg": preprocess_config}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if state_dict is not None:
        save_file(state_dict, folder / "open_clip_model.safetensors")
    return folder


def test_local_dir_with_squash_resizing_to_a_non_square_input(tmp_path):
    model_config = tiny(vision={"image_size": [64, 96]})
    preprocess_config = {"resize_mode": "squash", "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3}
    torch.manual_seed(0)
    weights = perturbed(open_clip.model.CLIP(**model_config)).state_dict()
    folder = write_local_dir(tmp_path / "model", model_config, preprocess_config, weights)
    source = f"local-dir:{folder}"
    reference, _, preprocess = open_clip.create_model_and_transforms(source)

    converted = load(f"open_clip:{source}")
    image_processor = converted.processor.image_processor
    assert converted.model.config.vision_config.image_size == [64, 96]
    assert image_processor.size == {"height": 64, "width": 96} and not image_processor.do_center_crop
    assert image_processor.image_mean == [0.5] * 3 and image_processor.resample == Image.Resampling.BILINEAR
    images, tokenizer = photos(3, seed=3, smallest=30, largest=150), open_clip.get_tokenizer(source)
    assert_parity(*run_both(reference.eval(), preprocess, tokenizer, converted, images, PROMPTS[:2]))


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_architectures_are_refused_before_writing(name, tmp_path):
    out_dir = tmp_path / "out"
    with pytest.raises(UnsupportedSourceError, match=UNSUPPORTED[name][1]):
        convert(f"open_clip:{name}", out_dir, random_weights=True)
    assert list(tmp_path.iterdir()) == []


def test_letterbox_preprocessing_is_refused(tmp_path):
    folder = write_local_dir(tmp_path / "model", tiny(), {"resize_mode": "longest"})
    with pytest.raises(UnsupportedSourceError, match="'longest' resizing"):
        load(f"open_clip:local-dir:{folder}")


def test_checkpoint_needs_a_tag_or_name_it_can_replace(tmp_path):
    with pytest.raises(ValueError, match="names its weights itself"):
        load("open_clip:hf-hub:org/repo", checkpoint=tmp_path / "weights.safetensors")
    with pytest.raises(ValueError, match="not one of open_clip's pretrained tags"):
        load("open_clip:ViT-B-32/no-such-tag", checkpoint=tmp_path / "weights.safetensors")


def test_a_tag_that_cannot_be_downloaded_is_an_os_error_naming_the_source(monkeypatch):
    """open_clip downloads a tag's weights itself and says why it could not as a RuntimeError; vitlm passes the
    reason on as an OSError naming the source, which the CLI prints in one line."""

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': no connection")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(OSError, match=r"^open_clip:ViT-B-32/openai: Failed to download weights for tag 'openai'"):
        load("open_clip:ViT-B-32/openai")


def test_convert_writes_a_folder_that_transformers_loads(vit_b_32, vit_b_32_checkpoint, tmp_path):
    reference, preprocess = vit_b_32
    out_dir = convert("open_clip:ViT-B-32", tmp_path / "converted", checkpoint=vit_b_32_checkpoint)

    files = {path.name for path in out_dir.iterdir()}
    # transformers 5 nests the image processor's settings in processor_config.json
    expected = {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json"}
    assert expected <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]

    loaded = Converted(AutoModel.from_pretrained(out_dir).eval(), AutoProcessor.from_pretrained(out_dir))
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    images = photos(2, seed=4)
    assert_parity(*run_both(reference, preprocess, tokenizer, loaded, images, PROMPTS[:3]))

    labels, template = ["cat", "dog", "car", "plane", "ship"], "a photo of a {}."
    classifier = pipeline("zero-shot-image-classification", model=str(out_dir))
    result = classifier(images[0], candidate_labels=labels, hypothesis_template=template)
    with torch.no_grad():
        logits, _ = reference.get_logits(preprocess(images[0])[None], tokenizer([template.format(x) for x in labels]))
    assert result[0]["label"] == labels[logits[0].argmax()]


def test_a_weight_the_tables_do_not_account_for_is_refused_by_name():
    """A weight no rule maps and a missing one are named, on both sides for the missing one."""
    torch.manual_seed(0)
    reference = perturbed(open_clip.model.CLIP(**tiny()))
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    reference.visual.register_buffer("extra_scale", torch.ones(1))
    with pytest.raises(UnsupportedSourceError, match=r"no rule maps: \['visual\.extra_scale'\]"):
        convert_model(reference, tokenizer)
    del reference.visual.extra_scale
    reference.transformer.resblocks[0].mlp.c_proj.bias = None
    missing = "text_model.encoder.layers.0.mlp.fc2.bias (from transformer.resblocks.0.mlp.c_proj.bias)"
    with pytest.raises(UnsupportedSourceError, match=re.escape(f"missing: ['{missing}']")):
        convert_model(reference, tokenizer)
