"""transformers -> vitlm: models built with transformers' own classes and random weights, saved to a folder with their
processor, and converted through `vitlm.convert.load("hf:<folder>")`."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    ConvNextImageProcessor,
    DeiTConfig,
    DeiTModel,
    ViTConfig,
    ViTForImageClassification,
    ViTForMaskedImageModeling,
    ViTImageProcessor,
    ViTModel,
)

from vitlm import VitlmDualEncoderModel, VitlmImageProcessor, VitlmViTForImageClassification, VitlmViTModel
from vitlm.clip_bpe import clip_tokenizer
from vitlm.convert import UnsupportedSourceError, convert, load
from vitlm.convert.from_transformers import convert_image_processor

TOLERANCE = 1e-4
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
LABELS = ["cat", "dog", "bird", "car", "tree", "house", "boat", "horse", "flower", "mountain"]
PROMPTS = [f"a photo of a {label}" for label in LABELS]
# (width, height): portrait, landscape, smaller and larger than 224, and crop offsets of x.5 (227, 231: the resized
# side exceeds the crop by 3 modulo 4, where transformers floors and torchvision rounds)
IMAGE_SIZES = [(224, 224), (227, 224), (224, 231), (320, 240), (240, 320), (500, 375), (375, 500), (100, 150)]
IMAGE_SIZES += [(64, 64), (1000, 230), (230, 1000), (300, 227), (256, 256), (231, 300), (640, 480), (33, 45)]


def photo(width: int, height: int, seed: int) -> PIL.Image.Image:
    """A smooth random image (bicubic upsampling of a coarse random grid), closer to a photo than pixel noise."""
    grid = np.random.default_rng(seed).integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    return PIL.Image.fromarray(grid).resize((width, height), PIL.Image.Resampling.BICUBIC)


IMAGES = [photo(width, height, seed) for seed, (width, height) in enumerate(IMAGE_SIZES)]


def randomized(model, seed: int = 0):
    """Randomize the vectors transformers initializes to constants (LayerNorms to ones and zeros, biases to zeros), so
    that a mapping swapping them cannot pass; matrices are random already."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim <= 1:
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def source_tokenizer() -> CLIPTokenizer:
    """transformers' plain CLIPTokenizer on CLIP's vocabulary and merges."""
    bpe = json.loads(clip_tokenizer().backend_tokenizer.to_str())["model"]
    return CLIPTokenizer(vocab=bpe["vocab"], merges=[tuple(merge) for merge in bpe["merges"]])


def saved(folder, model, processor) -> str:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def small_clip_config(**text_overrides) -> CLIPConfig:
    return CLIPConfig(
        text_config={**SMALL, **text_overrides},
        vision_config={**SMALL, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )


@pytest.fixture(scope="module")
def clip_b32(tmp_path_factory):
    """OpenAI CLIP ViT-B/32's architecture at full size (transformers' default CLIPConfig), with random weights."""
    torch.manual_seed(0)
    model = randomized(CLIPModel(CLIPConfig()))
    processor = CLIPProcessor(CLIPImageProcessor(), source_tokenizer())
    folder = saved(tmp_path_factory.mktemp("clip-b32"), model, processor)
    converted = load("hf:" + folder)
    # each side with its own processor: transformers' as `AutoProcessor` hands it to users (torchvision backend)
    source_inputs = AutoProcessor.from_pretrained(folder)(
        images=IMAGES, text=PROMPTS, padding=True, return_tensors="pt"
    )
    vitlm_inputs = converted.processor(images=IMAGES, text=PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        outputs = {
            "source": model(**source_inputs),
            "vitlm on the same inputs": converted.model(**source_inputs),
            "vitlm on its own inputs": converted.model(**vitlm_inputs),
        }
    return converted, source_inputs, vitlm_inputs, outputs


def test_clip_b32_embeddings_and_logits_match(clip_b32):
    converted, _, _, outputs = clip_b32
    assert isinstance(converted.model, VitlmDualEncoderModel)
    expected, actual = outputs["source"], outputs["vitlm on the same inputs"]
    assert actual.logits_per_image.shape == (16, 10)
    for name in ("image_embeds", "text_embeds", "logits_per_image"):
        assert max_diff(actual[name], expected[name]) <= TOLERANCE, name


def test_clip_b32_zero_shot_top1_is_identical_with_each_sides_processor(clip_b32):
    _, source_inputs, vitlm_inputs, outputs = clip_b32
    assert torch.equal(vitlm_inputs["input_ids"], source_inputs["input_ids"])
    expected, actual = outputs["source"].logits_per_image, outputs["vitlm on its own inputs"].logits_per_image
    assert torch.equal(actual.argmax(dim=1), expected.argmax(dim=1))
    assert len(set(expected.argmax(dim=1).tolist())) > 1  # the images do not all pick the same prompt


def test_clip_keeps_the_source_tokenizer(clip_b32):
    converted = clip_b32[0]
    tokenizer = converted.processor.tokenizer
    assert type(tokenizer) is CLIPTokenizer
    texts = ["A photo of a CAT!!", "naïve café &amp; “quotes”", "", "word " * 100]
    expected = source_tokenizer()(texts, padding="max_length", truncation=True)["input_ids"]
    assert tokenizer(texts, padding="max_length", truncation=True)["input_ids"] == expected


def test_saved_conversion_reloads_with_the_same_tokenizer_and_outputs(tmp_path):
    source = randomized(CLIPModel(small_clip_config()))
    processor = CLIPProcessor(CLIPImageProcessor(size=32, crop_size=32), source_tokenizer())
    out = convert("hf:" + saved(tmp_path / "source", source, processor), tmp_path / "converted")
    reloaded_model, reloaded_processor = AutoModel.from_pretrained(out), AutoProcessor.from_pretrained(out)
    assert isinstance(reloaded_model, VitlmDualEncoderModel)
    assert reloaded_processor.image_processor.crop_rounding == "floor"
    inputs = reloaded_processor(images=IMAGES[:4], text=PROMPTS[:3], padding=True, return_tensors="pt")
    assert torch.equal(
        inputs["input_ids"], processor(text=PROMPTS[:3], padding=True, return_tensors="pt")["input_ids"]
    )
    with torch.no_grad():
        expected, actual = source(**inputs).logits_per_image, reloaded_model(**inputs).logits_per_image
    assert max_diff(actual, expected) <= TOLERANCE


def test_legacy_eos_id_pools_where_transformers_argmax_does(tmp_path):
    # configs written before transformers fixed CLIP's special ids: transformers pools at argmax(input_ids)
    source = randomized(CLIPModel(small_clip_config(bos_token_id=0, eos_token_id=2, pad_token_id=1)))
    processor = CLIPProcessor(CLIPImageProcessor(size=32, crop_size=32), source_tokenizer())
    converted = load("hf:" + saved(tmp_path, source, processor))
    assert converted.model.config.text_config.eos_token_id == 49407
    # padded with end-of-text tokens, as transformers' CLIP tokenizer pads: both pool at the first one
    input_ids = processor(text=PROMPTS, padding="max_length", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = source.get_text_features(input_ids=input_ids).pooler_output
        actual = converted.model.get_text_features(input_ids=input_ids).pooler_output
    assert max_diff(actual, expected) <= TOLERANCE


def test_legacy_eos_id_without_clips_vocabulary_layout_is_refused(tmp_path):
    source = CLIPModel(small_clip_config(vocab_size=1000, bos_token_id=0, eos_token_id=2, pad_token_id=1))
    processor = CLIPProcessor(CLIPImageProcessor(size=32, crop_size=32), source_tokenizer())
    with pytest.raises(UnsupportedSourceError, match="legacy text pooling at the highest token id"):
        load("hf:" + saved(tmp_path, source, processor))


def test_clip_vision_model(tmp_path):
    source = randomized(CLIPVisionModel(CLIPVisionConfig(**SMALL, image_size=32, patch_size=8, hidden_act="gelu")))
    source.set_attn_implementation("eager")  # the attention weights only exist there
    converted = load("hf:" + saved(tmp_path, source, CLIPImageProcessor(size=32, crop_size=32)))
    assert type(converted.model) is VitlmViTModel and isinstance(converted.processor, VitlmImageProcessor)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = source(pixel_values, output_hidden_states=True, output_attentions=True)
        actual = converted.model(pixel_values, output_hidden_states=True, output_attentions=True)
        # transformers layer-norms only the pooled [CLS] state of CLIP's last hidden state; vitlm every token
        expected_last = source.post_layernorm(expected.last_hidden_state)
    assert max_diff(actual.pooler_output, expected.pooler_output) <= TOLERANCE
    assert max_diff(actual.last_hidden_state, expected_last) <= TOLERANCE
    assert len(actual.hidden_states) == len(expected.hidden_states) == 3
    assert len(actual.attentions) == len(expected.attentions) == 2
    for ours, theirs in zip(actual.hidden_states + actual.attentions, expected.hidden_states + expected.attentions):
        assert max_diff(ours, theirs) <= TOLERANCE


@pytest.mark.parametrize("pooler", [True, False])
def test_vit_model(tmp_path, pooler):
    config = ViTConfig(**SMALL, image_size=32, patch_size=8, pooler_output_size=24, hidden_dropout_prob=0.1)
    source = randomized(ViTModel(config, add_pooling_layer=pooler))
    source.set_attn_implementation("eager")
    converted = load("hf:" + saved(tmp_path, source, ViTImageProcessor(size={"height": 32, "width": 32})))
    assert type(converted.model) is VitlmViTModel
    assert converted.model.config.representation_size == (24 if pooler else None)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = source(pixel_values, output_hidden_states=True, output_attentions=True)
        actual = converted.model(pixel_values, output_hidden_states=True, output_attentions=True)
    assert max_diff(actual.last_hidden_state, expected.last_hidden_state) <= TOLERANCE
    if pooler:
        assert max_diff(actual.pooler_output, expected.pooler_output) <= TOLERANCE
    else:  # transformers returns no pooled output; vitlm's is the [CLS] state
        assert expected.pooler_output is None and torch.equal(actual.pooler_output, actual.last_hidden_state[:, 0])
    assert len(actual.hidden_states) == len(expected.hidden_states) == 3
    for ours, theirs in zip(actual.hidden_states + actual.attentions, expected.hidden_states + expected.attentions):
        assert max_diff(ours, theirs) <= TOLERANCE


def test_vit_for_image_classification(tmp_path):
    labels = {0: "cat", 1: "dog", 2: "bird"}
    config = ViTConfig(
        **SMALL,
        image_size=[32, 48],
        patch_size=8,
        qkv_bias=False,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        id2label=labels,
        label2id={name: index for index, name in labels.items()},
    )
    source = randomized(ViTForImageClassification(config))
    converted = load("hf:" + saved(tmp_path, source, ViTImageProcessor(size={"height": 32, "width": 48})))
    assert type(converted.model) is VitlmViTForImageClassification
    assert converted.model.config.id2label == labels and converted.model.config.label2id == config.label2id
    pixel_values = torch.randn(3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = source(pixel_values).logits, converted.model(pixel_values).logits
    assert actual.shape == (3, 3) and max_diff(actual, expected) <= TOLERANCE


@pytest.mark.parametrize(
    "build, match",
    [
        (
            lambda: ViTForMaskedImageModeling(ViTConfig(**SMALL, image_size=32, patch_size=8)),
            "ViTForMaskedImageModeling",
        ),
        (lambda: ViTModel(ViTConfig(**SMALL, image_size=32, patch_size=8, pooler_act="relu")), "'relu' activation"),
        (lambda: DeiTModel(DeiTConfig(**SMALL, image_size=32, patch_size=8)), "'deit' model"),
        (
            lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**SMALL, image_size=32, patch_size=8)),
            "CLIPVisionModelWithProjection",
        ),
    ],
    ids=["masked-image-modeling", "relu-pooler", "deit", "clip-vision-with-projection"],
)
def test_unsupported_models_are_refused_by_name(tmp_path, build, match):
    folder = saved(tmp_path, build(), ViTImageProcessor(size={"height": 32, "width": 32}))
    with pytest.raises(UnsupportedSourceError, match=match):
        load("hf:" + folder)


def test_pickled_weights_are_refused(tmp_path):
    model = ViTModel(ViTConfig(**SMALL, image_size=32, patch_size=8))
    model.config.save_pretrained(tmp_path)
    ViTImageProcessor().save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsupportedSourceError, match="no safetensors weights"):
        load("hf:" + str(tmp_path))


@pytest.mark.parametrize(
    "processor, match",
    [
        (ViTImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}), "resizing to"),
        (ConvNextImageProcessor(), "ConvNextImageProcessor"),
    ],
    ids=["longest-edge", "convnext"],
)
def test_unsupported_image_processors_are_refused(tmp_path, processor, match):
    processor.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedSourceError, match=match):
        convert_image_processor(AutoImageProcessor.from_pretrained(tmp_path))


@pytest.mark.parametrize(
    "source",
    [
        CLIPImageProcessor(),
        ViTImageProcessor(),
        ViTImageProcessor(size={"height": 40, "width": 56}, resample=PIL.Image.Resampling.BICUBIC, image_mean=0.3),
    ],
    ids=["clip", "vit", "vit-bicubic-non-square"],
)
def test_image_processor_matches_transformers(tmp_path, source):
    source.save_pretrained(tmp_path)
    ours = convert_image_processor(AutoImageProcessor.from_pretrained(tmp_path))
    pil_backend = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    default_backend = AutoImageProcessor.from_pretrained(tmp_path)
    assert default_backend.backend == "torchvision"
    std = torch.tensor(source.image_std)[:, None, None]
    for image in IMAGES:
        actual = ours(image).pixel_values
        # exactly the PIL backend: same PIL resampling, same crop offsets
        assert max_diff(actual, pil_backend(image, return_tensors="pt").pixel_values) <= 1e-5
        # the default backend resamples uint8 tensors with torchvision: at most two levels of 255 apart
        levels = ((actual - default_backend(image, return_tensors="pt").pixel_values) * std * 255).abs()
        assert levels.max() <= 2.001
    if source.do_center_crop:  # torchvision's rounding of the crop offset would be a pixel off (227 - 224 = 3)
        rounded = ours(IMAGES[1], crop_rounding="round").pixel_values
        assert max_diff(rounded, ours(IMAGES[1]).pixel_values) > 0.1
