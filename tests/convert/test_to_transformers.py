"""vitlm -> transformers: exported models reproduce vitlm's outputs, transformers models survive the round trip
through vitlm bit for bit, and what transformers cannot represent is refused before anything is written."""

import json
import logging

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
)

from tests.conftest import main_output, pixel_batch, text_batch, tiny_config
from vitlm import (
    VitlmDualEncoderConfig,
    VitlmDualEncoderModel,
    VitlmDualEncoderProcessor,
    VitlmHybridForImageClassification,
    VitlmImageProcessor,
    VitlmPiTForImageClassification,
    VitlmViTForImageClassification,
    VitlmViTModel,
)
from vitlm.clip_bpe import clip_tokenizer
from vitlm.convert import Converted, UnsupportedSourceError, load, save
from vitlm.convert.to_transformers import export, to_clip_model, to_vit_model

TOLERANCE = 1e-4
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
PROMPTS = ["a photo of a cat", "a dog!!", "Two HOUSES by the sea"]


def photo(width: int, height: int, seed: int) -> PIL.Image.Image:
    grid = np.random.default_rng(seed).integers(0, 256, (height // 4 + 2, width // 4 + 2, 3), dtype=np.uint8)
    return PIL.Image.fromarray(grid).resize((width, height), PIL.Image.Resampling.BICUBIC)


IMAGES = [photo(width, height, seed) for seed, (width, height) in enumerate([(32, 32), (39, 36), (50, 70), (17, 60)])]


def randomized(model, seed: int = 0):
    """Randomize the vectors initialized to constants (LayerNorms, biases), so that a mapping swapping them fails."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim <= 1:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def dual_config(text_overrides=None, **vision_overrides) -> VitlmDualEncoderConfig:
    """The tiny CLIP preset with CLIP's vocabulary (so that the real tokenizer fits) and the given changes."""
    config = tiny_config("dual")
    text = {**config.text_config.to_dict(), "vocab_size": 49408, "bos_token_id": 49406, "eos_token_id": 49407}
    return VitlmDualEncoderConfig(
        vision_config={**config.vision_config.to_dict(), **vision_overrides},
        text_config={**text, **(text_overrides or {})},
        projection_dim=config.projection_dim,
    )


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer(context_length=16)


def test_clip_export_reproduces_vitlm(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = randomized(VitlmDualEncoderModel(dual_config(hidden_act="quick_gelu")))
    image_processor = VitlmImageProcessor(size=32, crop_size=32, crop_rounding="floor")
    out = export(model, tmp_path / "out", processor=VitlmDualEncoderProcessor(image_processor, tokenizer))
    exported, processor = CLIPModel.from_pretrained(out), AutoProcessor.from_pretrained(out)
    assert isinstance(processor, CLIPProcessor) and type(processor.tokenizer) is CLIPTokenizer

    inputs = VitlmDualEncoderProcessor(image_processor, tokenizer)(
        images=IMAGES, text=PROMPTS, padding="max_length", return_tensors="pt"
    )
    with torch.no_grad():
        expected, actual = model(**inputs), exported(**inputs)
    for name in ("image_embeds", "text_embeds", "logits_per_image"):
        assert max_diff(actual[name], expected[name]) <= TOLERANCE, name

    # the same ids up to the end-of-text token; transformers' CLIP pads with it, open_clip with id 0
    theirs = processor(text=PROMPTS, padding="max_length", return_tensors="pt")
    assert theirs["input_ids"].shape == inputs["input_ids"].shape
    assert torch.equal(theirs["input_ids"] * inputs["attention_mask"], inputs["input_ids"] * inputs["attention_mask"])
    pil_backend = AutoImageProcessor.from_pretrained(out, backend="pil")
    assert type(pil_backend).__name__ == "CLIPImageProcessorPil"
    assert max_diff(pil_backend(IMAGES, return_tensors="pt").pixel_values, inputs["pixel_values"]) <= 1e-5


@pytest.mark.parametrize("classifier", [False, True], ids=["ViTModel", "ViTForImageClassification"])
def test_vit_export_reproduces_vitlm(tmp_path, classifier):
    torch.manual_seed(0)
    if classifier:
        config = tiny_config("vit", qkv_bias=False, id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})
        model, target = VitlmViTForImageClassification(config), ViTForImageClassification
        image_processor = VitlmImageProcessor(size=36, crop_size=32, crop_rounding="floor", image_mean=0.5)
    else:
        config = tiny_config("vit", representation_size=24, image_size=[32, 48])
        model, target = VitlmViTModel(config), ViTModel
        image_processor = VitlmImageProcessor(size={"height": 32, "width": 48}, do_center_crop=False, resample=2)
    model = randomized(model)
    out = export(model, tmp_path / "out", processor=image_processor)
    exported = target.from_pretrained(out)
    pixel_values = pixel_batch(config, batch_size=3, width=48 if not classifier else None)
    with torch.no_grad():
        expected = model(pixel_values, output_hidden_states=True)
        actual = exported(pixel_values, output_hidden_states=True)
    if classifier:
        assert exported.config.id2label == {0: "cat", 1: "dog"}
        assert max_diff(actual.logits, expected.logits) <= TOLERANCE
    else:
        assert max_diff(actual.last_hidden_state, expected.last_hidden_state) <= TOLERANCE
        assert max_diff(actual.pooler_output, expected.pooler_output) <= TOLERANCE
    for ours, theirs in zip(expected.hidden_states, actual.hidden_states, strict=True):
        assert max_diff(theirs, ours) <= TOLERANCE

    pil_backend = AutoImageProcessor.from_pretrained(out, backend="pil")
    assert type(pil_backend).__name__ == "ViTImageProcessorPil"
    expected_pixels = image_processor(IMAGES).pixel_values
    assert max_diff(pil_backend(IMAGES, return_tensors="pt").pixel_values, expected_pixels) <= 1e-5


def clip_source():
    bpe = json.loads(clip_tokenizer().backend_tokenizer.to_str())["model"]
    tokenizer = CLIPTokenizer(vocab=bpe["vocab"], merges=[tuple(merge) for merge in bpe["merges"]])
    config = CLIPConfig(
        text_config=SMALL, vision_config={**SMALL, "image_size": 32, "patch_size": 8}, projection_dim=16
    )
    return CLIPModel(config), CLIPProcessor(CLIPImageProcessor(size=40, crop_size=32), tokenizer)


def vit_source():
    config = ViTConfig(**SMALL, image_size=32, patch_size=8, pooler_output_size=24, qkv_bias=False)
    return ViTModel(config), ViTImageProcessor(size={"height": 32, "width": 32})


def vit_classifier_source():
    config = ViTConfig(**SMALL, image_size=32, patch_size=8, num_labels=3, layer_norm_eps=1e-6)
    return ViTForImageClassification(config), ViTImageProcessor(size={"height": 32, "width": 32}, resample=3)


@pytest.mark.parametrize("build", [clip_source, vit_source, vit_classifier_source], ids=["clip", "vit", "vit-cls"])
def test_round_trip_gives_the_original_weights_and_processor(tmp_path, build):
    torch.manual_seed(0)
    source, processor = build()
    source = randomized(source)
    source.save_pretrained(tmp_path / "source")
    processor.save_pretrained(tmp_path / "source")
    out = export(load(f"hf:{tmp_path / 'source'}"), tmp_path / "out")
    returned = type(source).from_pretrained(out)
    expected, actual = source.state_dict(), returned.state_dict()
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[key], expected[key]) for key in expected)
    inputs = {"pixel_values": pixel_batch(returned.config)}
    if isinstance(source, CLIPModel):
        inputs |= processor(text=PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(main_output(returned(**inputs)), main_output(source(**inputs)))

    image_processor = getattr(processor, "image_processor", processor)
    returned_processor = AutoImageProcessor.from_pretrained(out)
    for name in ("size", "crop_size", "resample", "image_mean", "image_std", "rescale_factor"):
        assert getattr(returned_processor, name) == getattr(image_processor, name), name
    assert bool(returned_processor.do_center_crop) == bool(image_processor.do_center_crop)  # unset reads None
    if hasattr(processor, "tokenizer"):
        assert (
            AutoProcessor.from_pretrained(out).tokenizer(PROMPTS).input_ids == processor.tokenizer(PROMPTS).input_ids
        )


def vit(**overrides):
    return VitlmViTForImageClassification(tiny_config("vit", **overrides))


REFUSED = {
    "rope2d": (lambda: VitlmDualEncoderModel(dual_config(position_embedding_type="rope2d")), "rope2d position"),
    "sincos2d": (lambda: vit(position_embedding_type="sincos2d"), "sincos2d position"),
    "hybrid": (lambda: VitlmHybridForImageClassification(tiny_config("hybrid")), "hybrid CNN stem"),
    "mean-pooling": (lambda: vit(pooling="mean"), "mean pooling"),
    "distillation-token": (lambda: vit(use_distillation_token=True), "distillation token"),
    "drop-path": (lambda: vit(drop_path_rate=0.1), "stochastic depth"),
    "sigmoid-loss": (
        lambda: VitlmDualEncoderModel(VitlmDualEncoderConfig(**{**dual_config().to_dict(), "loss_type": "sigmoid"})),
        "sigmoid loss",
    ),
    "clip-without-pre-norm": (lambda: VitlmDualEncoderModel(dual_config(pre_norm=False)), r"pre_norm=False"),
    "clip-patch-bias": (lambda: VitlmDualEncoderModel(dual_config(patch_bias=True)), "patch projection bias"),
    "clip-legacy-eos": (
        lambda: VitlmDualEncoderModel(dual_config({"eos_token_id": 2})),
        "end-of-text id of 2",
    ),
    "vit-pre-norm": (lambda: vit(pre_norm=True), r"before the encoder \(pre_norm\)"),
    "vit-classifier-representation": (lambda: vit(representation_size=16), "pre-logits layer"),
    "vit-model-without-pooler": (lambda: VitlmViTModel(tiny_config("vit")), "no pooler"),
    "pit": (lambda: VitlmPiTForImageClassification(tiny_config("pit")), "a vitlm_pit image tower"),
    "clip-pit-tower": (
        lambda: VitlmDualEncoderModel(tiny_config("dual", vision_config=tiny_config("pit").to_dict())),
        r"a vitlm_pit image tower \(transformers' CLIP is a plain ViT\)",
    ),
}


@pytest.mark.parametrize("name", REFUSED)
def test_unrepresentable_models_are_refused_by_name_and_nothing_is_written(tmp_path, tokenizer, name):
    build, match = REFUSED[name]
    model = build()
    processor = (
        VitlmDualEncoderProcessor(VitlmImageProcessor(), tokenizer)
        if isinstance(model, VitlmDualEncoderModel)
        else VitlmImageProcessor()
    )
    with pytest.raises(UnsupportedSourceError, match=match):
        export(model, tmp_path / "out", processor=processor)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UnsupportedSourceError, match=match):
        (to_clip_model if isinstance(model, VitlmDualEncoderModel) else to_vit_model)(model)


def test_every_refusal_is_listed_at_once():
    model = VitlmDualEncoderModel(dual_config(pre_norm=False, patch_bias=True))
    with pytest.raises(UnsupportedSourceError, match="pre_norm=False.*patch projection bias"):
        to_clip_model(model)


def test_an_existing_folder_is_kept_unless_overwrite(tmp_path):
    model, processor = randomized(vit()), VitlmImageProcessor(size=32, crop_size=32, crop_rounding="floor")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        export(model, out, processor=processor)
    assert [path.name for path in out.iterdir()] == ["notes.txt"]
    export(model, out, processor=processor, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # no staging folders left behind


def test_export_from_a_saved_vitlm_folder_warns_about_crop_rounding(tmp_path, tokenizer, caplog):
    torch.manual_seed(0)
    model = randomized(VitlmDualEncoderModel(dual_config()))
    # open_clip's preprocessing rounds crop offsets as torchvision does; transformers floors them
    processor = VitlmDualEncoderProcessor(VitlmImageProcessor(size=32, crop_size=32), tokenizer)
    folder = save(Converted(model, processor), tmp_path / "vitlm")
    with caplog.at_level(logging.WARNING):
        out = export(folder, tmp_path / "out")
    assert "floor" in caplog.text
    input_ids, attention_mask = text_batch(model.config)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_batch(model.config)}
    with torch.no_grad():
        expected, actual = model(**inputs).logits_per_image, CLIPModel.from_pretrained(out)(**inputs).logits_per_image
    assert max_diff(actual, expected) <= TOLERANCE


def test_a_processor_is_required_with_a_bare_model(tmp_path):
    with pytest.raises(ValueError, match="processor"):
        export(vit(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
