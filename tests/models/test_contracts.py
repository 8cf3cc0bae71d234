"""The contracts transformers' common model tests check, for every public vitlm model class (heads included): save /
load, determinism, batching, attention back-ends, gradient checkpointing, hidden states and attentions, training,
problem types, tuple outputs and the features API."""

import inspect

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from tests.conftest import pixel_batch, text_batch, tiny_config
from vitlm import (
    VitlmDualEncoderForImageClassification,
    VitlmDualEncoderForObjectDetection,
    VitlmDualEncoderForSemanticSegmentation,
    VitlmDualEncoderModel,
    VitlmHybridForImageClassification,
    VitlmHybridModel,
    VitlmPiTConfig,
    VitlmPiTForImageClassification,
    VitlmPiTModel,
    VitlmSwinForImageClassification,
    VitlmSwinModel,
    VitlmTextModel,
    VitlmViTForImageClassification,
    VitlmViTForInpaintingSynthesis,
    VitlmViTForMaskedImageModeling,
    VitlmViTForSemanticSegmentation,
    VitlmViTMAEModel,
    VitlmViTModel,
)


def variant(model_class, name):
    """`model_class` under a name of its own (a subclass adding nothing), so that an option set of its family gets
    contract cases of its own."""
    return type(f"{model_class.__name__}_{name}", (model_class,), {})


# the ViT with the self-supervised checkpoints' options: layer scale, registers, SwiGLU, [CLS] + mean pooling
DINOV2_MODEL, DINOV2_CLASSIFIER = variant(VitlmViTModel, "dinov2"), variant(VitlmViTForImageClassification, "dinov2")
# and BEiT's: mean pooling with the LayerNorm after it, a mask token, positions without the [CLS] row
BEIT_OPTIONS = dict(pooling="mean", norm_after_pooling=True, use_mask_token=True, prefix_position_embeddings=False)
# and its relative position bias (per block, then one shared), with queries and values biased, no absolute position
BEIT_RELATIVE = dict(position_embedding_type="none", key_bias=False, pooling="mean", norm_after_pooling=True)
BEIT_SHARED_MODEL = variant(VitlmViTModel, "beit_shared")
BEIT_MODEL = variant(VitlmViTModel, "beit")
# Segmenter: the linear decoder on 2 x 2 sub-patches; the mask transformer over the hierarchical and hybrid towers'
# last stage (Swin's split into sub-patches)
SEGMENTER_LINEAR = variant(VitlmViTForSemanticSegmentation, "linear")
SEGMENTER_SWIN = variant(VitlmViTForSemanticSegmentation, "swin")
SEGMENTER_PIT = variant(VitlmViTForSemanticSegmentation, "pit")
SEGMENTER_HYBRID = variant(VitlmViTForSemanticSegmentation, "hybrid")
MAE_DECODER = {
    "decoder_hidden_size": 16,
    "decoder_num_hidden_layers": 1,
    "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 32,
}
CONFIGS = {
    VitlmViTModel: lambda **kw: tiny_config("vit", **kw),
    VitlmViTForImageClassification: lambda **kw: tiny_config("vit", num_labels=3, **kw),
    VitlmViTMAEModel: lambda **kw: tiny_config("vit_mae", **MAE_DECODER, **kw),
    VitlmViTForMaskedImageModeling: lambda **kw: tiny_config("vit_mae", **MAE_DECODER, **kw),
    VitlmHybridModel: lambda **kw: tiny_config("hybrid", **kw),
    VitlmHybridForImageClassification: lambda **kw: tiny_config("hybrid", num_labels=3, **kw),
    VitlmTextModel: lambda **kw: type(tiny_config("dual").text_config)(
        **{**tiny_config("dual").text_config.to_dict(), **kw}
    ),
    VitlmDualEncoderModel: lambda **kw: tiny_config("dual", **kw),
    VitlmDualEncoderForImageClassification: lambda **kw: tiny_config("dual", num_labels=3, **kw),
    VitlmDualEncoderForObjectDetection: lambda **kw: tiny_config("dual", **kw),
    VitlmPiTModel: lambda **kw: tiny_config("pit", **kw),
    VitlmPiTForImageClassification: lambda **kw: tiny_config("pit", num_labels=3, **kw),
    VitlmSwinModel: lambda **kw: tiny_config("swin", **kw),
    VitlmSwinForImageClassification: lambda **kw: tiny_config("swin", num_labels=3, **kw),
    DINOV2_MODEL: lambda **kw: tiny_config("dinov2", pooling="cls", **kw),
    DINOV2_CLASSIFIER: lambda **kw: tiny_config("dinov2", num_labels=3, **kw),
    BEIT_MODEL: lambda **kw: tiny_config("vit", **BEIT_OPTIONS, layerscale_value=0.5, **kw),
    BEIT_SHARED_MODEL: lambda **kw: tiny_config("vit", **BEIT_RELATIVE, relative_position_bias="shared", **kw),
    VitlmViTForInpaintingSynthesis: lambda **kw: tiny_config("vit_synthesis", **kw),
    VitlmViTForSemanticSegmentation: lambda **kw: tiny_config("segmenter", **kw),
    SEGMENTER_LINEAR: lambda **kw: tiny_config("segmenter", decoder_type="linear", subpatch_factor=2, **kw),
    SEGMENTER_SWIN: lambda **kw: tiny_config(
        "segmenter", vision_config=tiny_config("swin").to_dict(), subpatch_factor=2, **kw
    ),
    SEGMENTER_PIT: lambda **kw: tiny_config("segmenter", vision_config=tiny_config("pit").to_dict(), **kw),
    SEGMENTER_HYBRID: lambda **kw: tiny_config("segmenter", vision_config=tiny_config("hybrid").to_dict(), **kw),
    VitlmDualEncoderForSemanticSegmentation: lambda **kw: tiny_config("dual", **kw),
}
MODEL_CLASSES = list(CONFIGS)
CLASSIFIERS = [
    VitlmViTForImageClassification,
    VitlmHybridForImageClassification,
    VitlmDualEncoderForImageClassification,
    VitlmPiTForImageClassification,
    VitlmSwinForImageClassification,
    DINOV2_CLASSIFIER,
]


def build(model_class, attn_implementation="sdpa", seed=0, **config_overrides):
    torch.manual_seed(seed)
    config = CONFIGS[model_class](**config_overrides)
    return model_class._from_config(config, attn_implementation=attn_implementation).eval()


def inputs_for(model, batch_size=2, seed=0):
    """A batch every forward argument of which is batch-first, so that it can be cut into single samples."""
    parameters = inspect.signature(model.forward).parameters
    config = model.config
    inputs = {}
    if "pixel_values" in parameters:
        inputs["pixel_values"] = pixel_batch(config, batch_size, seed=seed)
    if "input_ids" in parameters:
        text = config if isinstance(model, VitlmTextModel) else config.text_config
        inputs["input_ids"], inputs["attention_mask"] = text_batch(
            type("Holder", (), {"text_config": text}), batch_size, seed=seed
        )
    if "noise" in parameters:
        grid = config.grid_size
        inputs["noise"] = torch.rand(batch_size, grid[0] * grid[1], generator=torch.Generator().manual_seed(seed))
    return inputs


def per_sample_outputs(model, outputs) -> dict[str, torch.Tensor]:
    """The batch-first outputs that must not depend on the rest of the batch."""
    if isinstance(model, VitlmDualEncoderModel):
        return {"image_embeds": outputs.image_embeds, "text_embeds": outputs.text_embeds}
    if isinstance(model, VitlmDualEncoderForObjectDetection):
        return {"logits": outputs.logits, "pred_boxes": outputs.pred_boxes}
    if getattr(outputs, "logits", None) is not None:
        return {"logits": outputs.logits}
    return {"last_hidden_state": outputs.last_hidden_state, "pooler_output": outputs.pooler_output}


def training_loss(model, inputs):
    if isinstance(model, VitlmDualEncoderModel):
        return model(**inputs, return_loss=True).loss
    if isinstance(model, VitlmDualEncoderForObjectDetection):
        labels = [
            {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.3 + 0.2 * i, 0.5, 0.2, 0.3]])}
            for i in range(len(inputs["pixel_values"]))
        ]
        return model(**inputs, labels=labels).loss
    if isinstance(model, (VitlmViTForSemanticSegmentation, VitlmDualEncoderForSemanticSegmentation)):
        num_classes = model.config.num_labels if isinstance(model, VitlmViTForSemanticSegmentation) else 2
        pixels = inputs["pixel_values"]
        labels = torch.randint(0, num_classes, (len(pixels), *pixels.shape[-2:]), generator=torch.Generator())
        return model(**inputs, labels=labels).loss
    if "labels" in inspect.signature(model.forward).parameters:
        return model(**inputs, labels=torch.arange(len(inputs["pixel_values"])) % model.config.num_labels).loss
    outputs = model(**inputs)
    if outputs.get("loss") is not None:  # masked image modeling
        return outputs.loss
    return outputs.last_hidden_state.pow(2).mean() + outputs.pooler_output.pow(2).mean()


def towers(model, outputs) -> list[tuple[object, object]]:
    """(outputs, config) of each encoder whose hidden states and attentions `outputs` carries."""
    dual = (VitlmDualEncoderModel, VitlmDualEncoderForObjectDetection, VitlmDualEncoderForSemanticSegmentation)
    if isinstance(model, dual):
        return [
            (outputs.vision_model_output, model.config.vision_config),
            (outputs.text_model_output, model.config.text_config),
        ]
    if isinstance(model, (VitlmDualEncoderForImageClassification, VitlmViTForSemanticSegmentation)):
        return [(outputs, model.config.vision_config)]
    return [(outputs, model.config)]


def assert_pit_stages(outputs, config: VitlmPiTConfig):
    """A PiT records the embeddings and each stage's output (its grid halved, rounding up, from stage to stage, its
    width the stage's), and every block's attention weights."""
    grid, shapes, attention_shapes = config.grid_size, [], []
    for index, (depth, width, heads) in enumerate(zip(config.depths, config.hidden_sizes, config.num_heads)):
        if index:
            grid = tuple((side + 1) // 2 for side in grid)
        tokens = config.num_prefix_tokens + grid[0] * grid[1]
        shapes.append((2, tokens, width))
        attention_shapes += [(2, heads, tokens, tokens)] * depth
    assert [tuple(h.shape) for h in outputs.hidden_states] == [shapes[0], *shapes]
    assert [tuple(a.shape) for a in outputs.attentions] == attention_shapes
    for attentions in outputs.attentions:
        torch.testing.assert_close(attentions.sum(-1), torch.ones(attentions.shape[:-1]))


def assert_outputs_equal(actual: dict, expected: dict, atol=0.0):
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_save_load_round_trip_and_determinism(model_class, tmp_path):
    model = build(model_class)
    inputs = inputs_for(model)
    with torch.no_grad():
        first = per_sample_outputs(model, model(**inputs))
        assert_outputs_equal(per_sample_outputs(model, model(**inputs)), first)
        model.save_pretrained(tmp_path)
        reloaded = model_class.from_pretrained(tmp_path).eval()
        assert type(reloaded) is model_class
        for name, tensor in model.state_dict().items():
            assert torch.equal(reloaded.state_dict()[name], tensor), name
        assert_outputs_equal(per_sample_outputs(reloaded, reloaded(**inputs)), first)


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_a_sample_gives_the_same_outputs_alone_or_in_a_batch(model_class):
    model = build(model_class)
    inputs = inputs_for(model, batch_size=3)
    with torch.no_grad():
        batched = per_sample_outputs(model, model(**inputs))
        for i in range(3):
            alone = per_sample_outputs(model, model(**{k: v[i : i + 1] for k, v in inputs.items()}))
            for name, tensor in batched.items():
                # float32 rounding (a conv stem computes a batch by another algorithm than one image) scales with the
                # values: the segmenter's logits are cosines times a learned scale, up to ~6 here
                atol = 1e-5 * max(1.0, tensor.abs().max().item())
                assert_outputs_equal({name: alone[name]}, {name: tensor[i : i + 1]}, atol=atol)


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_tuple_outputs_hold_the_same_tensors(model_class):
    model = build(model_class)
    inputs = inputs_for(model)
    with torch.no_grad():
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
        model.config.return_dict = False
        from_config = model(**inputs)
    expected = [v for v in as_dict.to_tuple()]
    for outputs in (as_tuple, from_config):
        assert isinstance(outputs, tuple) and len(outputs) == len(expected)
        for actual, wanted in zip(outputs, expected):
            if isinstance(wanted, torch.Tensor):
                assert torch.equal(actual, wanted)


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_eager_and_sdpa_attention_agree(model_class):
    sdpa = build(model_class, "sdpa")
    eager = build(model_class, "eager", seed=1)
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    inputs = inputs_for(sdpa)
    with torch.no_grad():
        assert_outputs_equal(
            per_sample_outputs(eager, eager(**inputs)), per_sample_outputs(sdpa, sdpa(**inputs)), 1e-5
        )


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(model_class):
    plain = build(model_class).train()
    checkpointed = build(model_class, seed=1).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.gradient_checkpointing_enable()
    assert checkpointed.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    inputs = inputs_for(plain)
    losses = [training_loss(model, inputs) for model in (plain, checkpointed)]
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=1e-6)
    for loss in losses:
        loss.backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("via", ["arguments", "config"])
def test_hidden_states_and_attentions(model_class, via):
    model = build(model_class, "eager")  # the only back-end that gives attention weights, so configs demand it
    arguments = {"output_hidden_states": True, "output_attentions": True}
    if via == "config":
        # a composite model's towers read their own configs, as CLIP's do
        for config in (model.config, *(getattr(model.config, key, None) for key in ("vision_config", "text_config"))):
            if config is not None:
                config.output_hidden_states = config.output_attentions = True
        arguments = {}
    inputs = inputs_for(model)
    with torch.no_grad():
        outputs = model(**inputs, **arguments)
        plain = model(**inputs, output_hidden_states=False, output_attentions=False)
    for tower_outputs, config in towers(model, outputs):
        if isinstance(config, VitlmPiTConfig):
            assert_pit_stages(tower_outputs, config)
            continue
        assert len(tower_outputs.hidden_states) == config.num_hidden_layers + 1
        if hasattr(config, "depths"):  # a hierarchical (Swin) tower
            hidden_shapes, attention_shapes = swin_output_shapes(config, 2)
        else:
            tokens = tower_outputs.hidden_states[0].shape[1]
            hidden_shapes = [(2, tokens, config.hidden_size)] * (config.num_hidden_layers + 1)
            attention_shapes = [(2, config.num_attention_heads, tokens, tokens)] * config.num_hidden_layers
        assert [tuple(h.shape) for h in tower_outputs.hidden_states] == hidden_shapes
        assert [tuple(a.shape) for a in tower_outputs.attentions] == attention_shapes
        for attentions in tower_outputs.attentions:
            torch.testing.assert_close(attentions.sum(-1), torch.ones(attentions.shape[:-1]))
    for tower_outputs, _ in towers(model, plain):
        assert tower_outputs.hidden_states is None and tower_outputs.attentions is None
    # asking for them changes no result
    assert_outputs_equal(per_sample_outputs(model, outputs), per_sample_outputs(model, plain), atol=1e-5)


def swin_output_shapes(config, batch_size):
    """Swin's hidden states (the stem's tokens, then each stage's) and attentions (every block's, per window) at
    the configured resolution, from the config alone."""
    height = width = config.image_size // config.patch_size
    hidden_shapes = [(batch_size, height * width, config.embed_dim)]
    attention_shapes = []
    for stage, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
        if stage:
            height, width = (height + 1) // 2, (width + 1) // 2
        window = min(config.window_size, height, width)
        windows = -(-height // window) * -(-width // window)
        hidden_shapes.append((batch_size, height * width, config.embed_dim * 2**stage))
        attention_shapes += [(batch_size * windows, heads, window * window, window * window)] * depth
    return hidden_shapes, attention_shapes


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_a_training_step_changes_the_weights_through_finite_gradients(model_class):
    model = build(model_class).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = training_loss(model, inputs_for(model))
    assert torch.isfinite(loss)
    loss.backward()
    with_gradients = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    # (a gradient far below a weight's float resolution may leave it unchanged)
    assert changed <= with_gradients and len(changed) >= 0.9 * len(with_gradients)
    # the whole image (or text) encoder learns, from its first layer on
    first = next(name for name in before if "embedding" in name or "stem" in name)
    assert first in changed, first


@pytest.mark.parametrize("model_class", CLASSIFIERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "problem_type,labels,reference",
    [
        ("single_label_classification", torch.tensor([0, 2]), torch.nn.functional.cross_entropy),
        (
            "multi_label_classification",
            torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
            torch.nn.functional.binary_cross_entropy_with_logits,
        ),
        ("regression", torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]]), torch.nn.functional.mse_loss),
    ],
)
def test_classification_losses_follow_the_problem_type(model_class, problem_type, labels, reference):
    model = build(model_class, problem_type=problem_type)
    outputs = model(**inputs_for(model), labels=labels)
    torch.testing.assert_close(outputs.loss, reference(outputs.logits, labels))
    outputs.loss.backward()  # a loss that trains
    assert torch.isfinite(next(model.parameters()).grad).all()


@pytest.mark.parametrize("modality", ["image", "text"])
def test_the_features_api_follows_return_dict_as_clip_does(modality):
    model = build(VitlmDualEncoderModel)
    inputs = inputs_for(model)
    if modality == "image":
        get_features, arguments = model.get_image_features, {"pixel_values": inputs["pixel_values"]}
        tower, projection = model.vision_model, model.visual_projection
    else:
        get_features = model.get_text_features
        arguments = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        tower, projection = model.text_model, model.text_projection
    with torch.no_grad():
        expected = projection(tower(**arguments).pooler_output)
        outputs = get_features(**arguments)
        assert isinstance(outputs, BaseModelOutputWithPooling)
        assert torch.equal(outputs.pooler_output, expected) and expected.shape == (2, model.config.projection_dim)
        assert torch.equal(get_features(**arguments, return_dict=True).pooler_output, expected)
        as_tuple = get_features(**arguments, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], expected)
        assert torch.equal(as_tuple[0], outputs.last_hidden_state)
        with_states = get_features(**arguments, output_hidden_states=True, return_dict=False)
        assert len(with_states) == 3 and len(with_states[2]) == tower.config.num_hidden_layers + 1
        model.config.return_dict = False
        assert isinstance(get_features(**arguments), tuple)
        assert torch.equal(get_features(**arguments, return_dict=True).pooler_output, expected)


def test_the_detector_takes_pixel_values_first_as_its_main_input():
    for model_class in MODEL_CLASSES:
        first = list(inspect.signature(model_class.forward).parameters)[1]
        assert first == model_class.main_input_name, model_class.__name__
    model = build(VitlmDualEncoderForObjectDetection)
    inputs = inputs_for(model)
    with torch.no_grad():
        positional = model(inputs.pop("pixel_values"), **inputs)
        assert positional.logits.shape == (2, 16, 1)
