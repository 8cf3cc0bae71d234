"""transformers' OWL-ViT detector and ViTMAE -> vitlm's detection and masked-image-modeling heads: random-weight models
built with transformers' own classes, saved with their processors, converted through `vitlm.convert.load("hf:...")`."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import (
    AutoImageProcessor,
    AutoModelForMaskedImageModeling,
    AutoModelForZeroShotObjectDetection,
    CLIPTokenizer,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2ImageProcessor,
    Owlv2Processor,
    OwlViTConfig,
    OwlViTForObjectDetection,
    OwlViTImageProcessor,
    OwlViTProcessor,
    ViTImageProcessor,
    ViTMAEConfig,
    ViTMAEForPreTraining,
    pipeline,
)
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from vitlm import VitlmDualEncoderForObjectDetection, VitlmDualEncoderProcessor, VitlmViTForMaskedImageModeling
from vitlm.clip_bpe import clip_tokenizer
from vitlm.convert import UnsupportedSourceError, convert, load

TOLERANCE = 1e-4
TOWER = {"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
# OwlViTProcessor pads the second image's queries with " ", which transformers does not mask
QUERIES = [["a photo of a cat", "a dog", "a tree"], ["a car", "a house"]]
MAE_GRID = 4  # 32 pixels in patches of 8


def photo(width: int, height: int, seed: int) -> PIL.Image.Image:
    """A smooth random image (bicubic upsampling of a coarse random grid), closer to a photo than pixel noise."""
    grid = np.random.default_rng(seed).integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    return PIL.Image.fromarray(grid).resize((width, height), PIL.Image.Resampling.BICUBIC)


def perturbed(model):
    """Add seeded noise to the tensors transformers initializes to constants (LayerNorms, biases, [CLS] and mask
    tokens), so that a mapping swapping them cannot pass."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim <= 1 or parameter.std() == 0:
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def saved(folder, model, processor) -> str:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def pixels(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def owl_tokenizer() -> CLIPTokenizer:
    """OWL-ViT's tokenizer: CLIP's vocabulary and merges, padding with "!" (id 0) to a context of 16."""
    bpe = json.loads(clip_tokenizer().backend_tokenizer.to_str())["model"]
    merges = [tuple(merge) for merge in bpe["merges"]]
    return CLIPTokenizer(vocab=bpe["vocab"], merges=merges, pad_token="!", model_max_length=16)


def owlvit_config(**overrides) -> OwlViTConfig:
    values = {
        "text_config": {**TOWER, "hidden_size": 16},
        "vision_config": {**TOWER, "hidden_size": 32, "image_size": 64, "patch_size": 16},
        "projection_dim": 16,
    }
    return OwlViTConfig(**{**values, **overrides})


def owl_processor(tokenizer) -> OwlViTProcessor:
    return OwlViTProcessor(OwlViTImageProcessor(size={"height": 64, "width": 64}), tokenizer)


@pytest.fixture(scope="module")
def owlvit(tmp_path_factory, owl_tokenizer):
    """A small OWL-ViT (quick_gelu towers, 4x4 patch grid) and its conversion."""
    torch.manual_seed(0)
    source = perturbed(OwlViTForObjectDetection(owlvit_config()))
    # transformers draws the heads' weights with unit std, which saturates every box coordinate at 0 or 1 in a model
    # this small; unit-gain weights keep boxes (and so the image queries, chosen by IoU) informative
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in [*source.box_head.modules(), *source.class_head.modules()]:
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, module.in_features**-0.5, generator=generator)
    folder = saved(tmp_path_factory.mktemp("owlvit"), source, owl_processor(owl_tokenizer))
    return source, load("hf:" + folder), folder


def test_owlvit_text_queries_match_with_a_masked_query(owlvit, owl_tokenizer):
    source, converted, _ = owlvit
    assert isinstance(converted.model, VitlmDualEncoderForObjectDetection)
    assert isinstance(converted.processor, VitlmDualEncoderProcessor)
    images = [photo(90, 60, seed=0), photo(50, 80, seed=1)]
    inputs = owl_processor(owl_tokenizer)(text=QUERIES, images=images, return_tensors="pt")
    # an all-padding query (ids 0, as OWL-ViT's original code pads), which transformers masks by its first token
    padded_ids, padded_attention = inputs["input_ids"].clone(), inputs["attention_mask"].clone()
    padded_ids[4], padded_attention[4] = 0, 0
    query_mask = padded_ids.reshape(2, 3, -1)[..., 0] > 0
    assert query_mask.tolist() == [[True, True, True], [True, False, True]]
    with torch.no_grad():
        expected = source(input_ids=padded_ids, attention_mask=padded_attention, pixel_values=inputs["pixel_values"])
        # vitlm rejects text without an end-of-text token: the masked query keeps its text, the mask says the rest
        actual = converted.model(**inputs, query_mask=query_mask)
    assert actual.logits.shape == (2, 16, 3) and actual.pred_boxes.shape == (2, 16, 4)
    assert (actual.logits[1, :, 1] == torch.finfo(torch.float32).min).all()
    for name in ("logits", "pred_boxes", "class_embeds", "image_embeds"):
        assert max_diff(actual[name], expected[name]) <= TOLERANCE, name
    unmasked = actual.logits[query_mask[:, None, :].expand(-1, 16, -1)]
    assert unmasked.std() > 0.1 and actual.pred_boxes.std() > 0.1  # nothing saturated or constant


def test_owlvit_at_another_resolution(owlvit, owl_tokenizer):
    source, converted, _ = owlvit
    inputs = owl_tokenizer(["a cat", "a dog"], padding=True, return_tensors="pt")
    pixel_values = pixels(2, 3, 48, 96, seed=2)  # a 3x6 grid instead of 4x4
    with torch.no_grad():
        expected = source(**inputs, pixel_values=pixel_values, interpolate_pos_encoding=True)
        actual = converted.model(**inputs, pixel_values=pixel_values, interpolate_pos_encoding=True)
    assert actual.pred_boxes.shape == (2, 18, 4)
    assert max_diff(actual.logits, expected.logits) <= TOLERANCE
    assert max_diff(actual.pred_boxes, expected.pred_boxes) <= TOLERANCE


def test_owlvit_image_queries_pick_transformers_tokens(owlvit):
    source, converted, _ = owlvit
    query_pixel_values, pixel_values = pixels(8, 3, 64, 64, seed=3), pixels(8, 3, 64, 64, seed=4)
    with torch.no_grad():
        expected = source.image_guided_detection(pixel_values=pixel_values, query_pixel_values=query_pixel_values)
        query_features = source.image_embedder(query_pixel_values)[0]
        expected_queries = source.embed_image_query(query_features.flatten(1, 2), query_features)[0][:, 0]
        queries = converted.model.image_query_embeddings(query_pixel_values)
        actual = converted.model(pixel_values=pixel_values, query_embeds=queries[:, None])
    # transformers returns the chosen token's unnormalized class embedding, vitlm its normalized one (`class_embeds`)
    expected_queries = expected_queries / (expected_queries.norm(dim=-1, keepdim=True) + 1e-6)
    assert max_diff(queries, expected_queries) <= TOLERANCE
    assert max_diff(actual.logits, expected.logits) <= TOLERANCE
    assert max_diff(actual.pred_boxes, expected.target_pred_boxes) <= TOLERANCE


def test_owlvit_converted_folder_serves_the_pipeline_as_transformers_does(owlvit, tmp_path):
    _, _, folder = owlvit
    out = convert("hf:" + folder, tmp_path / "converted")
    assert isinstance(AutoModelForZeroShotObjectDetection.from_pretrained(out), VitlmDualEncoderForObjectDetection)
    image, labels = photo(120, 72, seed=5), ["a cat", "a remote control"]
    # transformers' PIL backend, which vitlm's image processor equals (its default torchvision backend resamples
    # uint8 tensors, a level or two of 255 away)
    source_detector = pipeline(
        "zero-shot-object-detection",
        model=folder,
        image_processor=AutoImageProcessor.from_pretrained(folder, backend="pil"),
    )
    expected = source_detector(image, candidate_labels=labels, threshold=0.0)
    actual = pipeline("zero-shot-object-detection", model=str(out))(image, candidate_labels=labels, threshold=0.0)
    assert len(actual) == len(expected) == 2 * 16
    for ours, theirs in zip(actual[:5], expected[:5]):
        assert ours["label"] == theirs["label"]
        assert ours["score"] == pytest.approx(theirs["score"], abs=TOLERANCE)
        # vitlm clips boxes to the image, transformers does not
        limits = {"xmin": 120, "xmax": 120, "ymin": 72, "ymax": 72}
        assert all(abs(ours["box"][k] - min(max(v, 0), limits[k])) <= 1 for k, v in theirs["box"].items())


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: OwlViTForObjectDetection(owlvit_config(projection_dim=24)), "a class head of width 16"),
        (
            lambda: OwlViTForObjectDetection(
                owlvit_config(text_config={**TOWER, "hidden_size": 16, "vocab_size": 900})
            ),
            "OWL-ViT's text pooling at the highest token id",
        ),
        (
            lambda: Owlv2ForObjectDetection(
                Owlv2Config(
                    text_config={**TOWER, "hidden_size": 16},
                    vision_config={**TOWER, "hidden_size": 32, "image_size": 64, "patch_size": 16},
                    projection_dim=16,
                )
            ),
            "objectness head",
        ),
    ],
    ids=["class-head-width", "tokenizer-layout", "owlv2"],
)
def test_unsupported_detectors_are_refused_and_nothing_is_written(tmp_path, owl_tokenizer, build, match):
    model = build()
    owlv2 = isinstance(model, Owlv2ForObjectDetection)
    processor = Owlv2Processor(Owlv2ImageProcessor(), owl_tokenizer) if owlv2 else owl_processor(owl_tokenizer)
    folder = saved(tmp_path / "source", model, processor)
    with pytest.raises(UnsupportedSourceError, match=match):
        convert("hf:" + folder, tmp_path / "converted")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["source"]


def mae_table(width: int) -> torch.Tensor:
    """MAE's fixed table as transformers' `ViTMAEEmbeddings.initialize_weights` builds it: the rows for (h, w) are
    rotated by half the width into MAE's original layout (x first)."""
    table = build_2d_sinusoidal_position_embedding(MAE_GRID, MAE_GRID, width, cls_token=True)
    return table.roll(width // 2, dims=-1)[None]


def mae_source(**overrides) -> ViTMAEForPreTraining:
    config = ViTMAEConfig(
        **{**TOWER, "hidden_size": 32, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6},
        image_size=32,
        patch_size=8,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        **overrides,
    )
    model = perturbed(ViTMAEForPreTraining(config))
    # a freshly built ViTMAEForPreTraining (transformers 5) leaves both fixed tables at zero; pretrained ones hold them
    with torch.no_grad():
        model.vit.embeddings.position_embeddings.copy_(mae_table(config.hidden_size))
        model.decoder.decoder_pos_embed.copy_(mae_table(config.decoder_hidden_size))
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["pixels", "norm-pix-loss"])
def mae(request, tmp_path_factory):
    source = mae_source(norm_pix_loss=request.param, qkv_bias=not request.param, mask_ratio=0.6)
    folder = saved(tmp_path_factory.mktemp("mae"), source, ViTImageProcessor(size={"height": 32, "width": 32}))
    return source, load("hf:" + folder), folder


def test_mae_masks_reconstructs_and_scores_as_transformers(mae):
    source, converted, _ = mae
    assert isinstance(converted.model, VitlmViTForMaskedImageModeling)
    config = converted.model.config
    assert (config.norm_pix_loss, config.mask_ratio, config.qkv_bias) == (
        source.config.norm_pix_loss,
        0.6,
        source.config.qkv_bias,
    )
    pixel_values, noise = pixels(3, 3, 32, 32, seed=6), torch.rand(3, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected, actual = source(pixel_values, noise=noise), converted.model(pixel_values, noise=noise)
    assert torch.equal(actual.ids_restore, expected.ids_restore) and torch.equal(actual.mask, expected.mask)
    assert actual.mask.sum(dim=1).tolist() == [10, 10, 10]  # 16 - int(16 * 0.4) patches masked
    assert max_diff(actual.logits, expected.logits) <= TOLERANCE
    assert max_diff(actual.loss, expected.loss) <= TOLERANCE


def test_mae_converted_folder_loads_with_the_auto_class(mae, tmp_path):
    source, _, folder = mae
    out = convert("hf:" + folder, tmp_path / "converted")
    model, processor = AutoModelForMaskedImageModeling.from_pretrained(out), AutoImageProcessor.from_pretrained(out)
    assert isinstance(model, VitlmViTForMaskedImageModeling)
    image = photo(50, 40, seed=8)
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    source_pixel_values = AutoImageProcessor.from_pretrained(folder, backend="pil")(image, return_tensors="pt")
    assert max_diff(pixel_values, source_pixel_values["pixel_values"]) <= 1e-5
    noise = torch.rand(1, 16, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected, actual = source(pixel_values, noise=noise), model(pixel_values, noise=noise)
    assert max_diff(actual.logits, expected.logits) <= TOLERANCE


@pytest.mark.parametrize("name", ["vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"])
@pytest.mark.parametrize(
    "alter",
    [
        lambda table: table + 0.01 * torch.randn(table.shape, generator=torch.Generator().manual_seed(0)),
        lambda table: torch.zeros_like(table),
        lambda table: torch.cat([table[:, :1] + 0.5, table[:, 1:]], dim=1),
    ],
    ids=["trained", "zero", "cls-position"],
)
def test_mae_tables_other_than_the_formula_are_refused_and_nothing_is_written(tmp_path, name, alter):
    source = mae_source()
    table = source.get_parameter(name)
    with torch.no_grad():
        table.copy_(alter(table.detach().clone()))
    folder = saved(tmp_path / "source", source, ViTImageProcessor(size={"height": 32, "width": 32}))
    short_name = name.rpartition(".")[2]
    with pytest.raises(UnsupportedSourceError, match=f"`{short_name}` is not MAE's fixed 2D sin-cos table"):
        convert("hf:" + folder, tmp_path / "converted")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["source"]
