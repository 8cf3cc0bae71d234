import pytest
import torch

from tests.conftest import main_output, model_inputs, pixel_batch, tiny_config
from vitlm import (
    VitlmDualEncoderModel,
    VitlmHybridForImageClassification,
    VitlmHybridModel,
    VitlmViTForImageClassification,
    VitlmViTForMaskedImageModeling,
    VitlmViTModel,
)

POSITION_TYPES = ["learned", "sincos2d", "rope2d"]
FAMILY_MODELS = [
    ("vit", VitlmViTModel),
    ("vit", VitlmViTForImageClassification),
    ("hybrid", VitlmHybridModel),
    ("hybrid", VitlmHybridForImageClassification),
    ("dual", VitlmDualEncoderModel),
    ("vit_mae", VitlmViTForMaskedImageModeling),
]


def build(model_class, config, attn_implementation="sdpa", seed=0):
    torch.manual_seed(seed)
    return model_class._from_config(config, attn_implementation=attn_implementation).eval()


@pytest.mark.parametrize("position_type", POSITION_TYPES)
def test_every_position_encoding_trains(position_type):
    config = tiny_config("vit", position_embedding_type=position_type, num_labels=4)
    model = build(VitlmViTForImageClassification, config).train()
    pixel_values, labels = pixel_batch(config, batch_size=8), torch.arange(8) % 4
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("position_type", POSITION_TYPES)
@pytest.mark.parametrize("height,width", [(48, 48), (24, 40)])
def test_every_position_encoding_runs_at_other_resolutions(position_type, height, width):
    config = tiny_config("vit", position_embedding_type=position_type)
    model = build(VitlmViTModel, config)
    pixel_values = pixel_batch(config, height=height, width=width)
    stride = config.patch_size
    with torch.no_grad():
        outputs = model(pixel_values, interpolate_pos_encoding=True)
        if position_type != "learned":  # fixed encodings extend to any grid without interpolation
            extended = model(pixel_values).last_hidden_state
            assert extended.shape == outputs.last_hidden_state.shape
    tokens = config.num_prefix_tokens + (height // stride) * (width // stride)
    assert outputs.last_hidden_state.shape == (2, tokens, config.hidden_size)
    assert torch.isfinite(outputs.last_hidden_state).all()


def test_learned_positions_refuse_another_grid_without_interpolation():
    config = tiny_config("vit", position_embedding_type="learned")
    model = build(VitlmViTModel, config)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(pixel_batch(config, height=48, width=48))


@pytest.mark.parametrize("position_type", POSITION_TYPES)
def test_interpolation_at_the_native_resolution_changes_nothing(position_type):
    config = tiny_config("vit", position_embedding_type=position_type)
    model = build(VitlmViTModel, config)
    pixel_values = pixel_batch(config)
    with torch.no_grad():
        plain = model(pixel_values).last_hidden_state
        interpolated = model(pixel_values, interpolate_pos_encoding=True).last_hidden_state
    torch.testing.assert_close(interpolated, plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family,model_class", FAMILY_MODELS)
def test_sdpa_and_eager_agree(family, model_class):
    sdpa = build(model_class, tiny_config(family), "sdpa")
    eager = build(model_class, tiny_config(family), "eager")
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    inputs = model_inputs(sdpa)
    with torch.no_grad():
        difference = (main_output(sdpa(**inputs)) - main_output(eager(**inputs))).abs().max().item()
    assert difference <= 1e-5


@pytest.mark.parametrize("family,model_class", FAMILY_MODELS)
def test_output_attentions_and_hidden_states(family, model_class):
    model = build(model_class, tiny_config(family))
    with torch.no_grad():
        outputs = model(**model_inputs(model), output_attentions=True, output_hidden_states=True)
    towers = (
        [
            (outputs.vision_model_output, model.config.vision_config),
            (outputs.text_model_output, model.config.text_config),
        ]
        if family == "dual"
        else [(outputs, model.config)]
    )
    for tower_outputs, config in towers:
        assert len(tower_outputs.attentions) == config.num_hidden_layers
        assert len(tower_outputs.hidden_states) == config.num_hidden_layers + 1
        tokens = tower_outputs.hidden_states[0].shape[1]
        for attentions in tower_outputs.attentions:
            assert attentions.shape == (2, config.num_attention_heads, tokens, tokens)
            torch.testing.assert_close(attentions.sum(-1), torch.ones(2, config.num_attention_heads, tokens))
    if family == "dual":  # the text tower is causal: no attention to later positions
        text_attentions = outputs.text_model_output.attentions[0]
        assert text_attentions.triu(1).abs().max() == 0


def test_flex_attention_matches_sdpa():
    config = tiny_config("vit")
    sdpa = build(VitlmViTModel, config, "sdpa")
    flex = build(VitlmViTModel, tiny_config("vit"), "flex_attention")
    flex.load_state_dict(sdpa.state_dict())
    pixel_values = pixel_batch(config)
    with torch.no_grad():
        torch.testing.assert_close(
            flex(pixel_values).last_hidden_state, sdpa(pixel_values).last_hidden_state, atol=1e-5, rtol=0
        )


@pytest.mark.parametrize(
    "family,model_class", [("vit", VitlmViTForImageClassification), ("dual", VitlmDualEncoderModel)]
)
def test_gradient_checkpointing_gives_the_same_gradients(family, model_class):
    plain = build(model_class, tiny_config(family)).train()
    checkpointed = build(model_class, tiny_config(family)).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.gradient_checkpointing_enable()
    assert checkpointed.is_gradient_checkpointing
    inputs = model_inputs(plain)
    extra = {"labels": torch.tensor([0, 1])} if family == "vit" else {"return_loss": True}
    for model in (plain, checkpointed):
        model(**inputs, **extra).loss.backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


@pytest.mark.parametrize(
    "problem_type,labels,reference",
    [
        (
            "single_label_classification",
            torch.tensor([0, 2]),
            lambda logits, y: torch.nn.functional.cross_entropy(logits, y),
        ),
        (
            "multi_label_classification",
            torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
            lambda logits, y: torch.nn.functional.binary_cross_entropy_with_logits(logits, y),
        ),
        (
            "regression",
            torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]]),
            lambda logits, y: torch.nn.functional.mse_loss(logits, y),
        ),
    ],
)
def test_classification_loss_follows_problem_type(problem_type, labels, reference):
    config = tiny_config("vit", num_labels=3, problem_type=problem_type)
    model = build(VitlmViTForImageClassification, config)
    outputs = model(pixel_batch(config), labels=labels)
    torch.testing.assert_close(outputs.loss, reference(outputs.logits, labels))


def test_distillation_token_logits_average_both_heads():
    config = tiny_config("vit", use_distillation_token=True, num_labels=3)
    model = build(VitlmViTForImageClassification, config)
    pixel_values = pixel_batch(config)
    outputs = model(pixel_values, labels=torch.tensor([0, 1]))
    hidden = model.vit(pixel_values).last_hidden_state
    assert hidden.shape[1] == 2 + (config.image_size // config.patch_size) ** 2
    torch.testing.assert_close(outputs.cls_logits, model.classifier(hidden[:, 0]))
    torch.testing.assert_close(outputs.distillation_logits, model.distillation_classifier(hidden[:, 1]))
    torch.testing.assert_close(outputs.logits, (outputs.cls_logits + outputs.distillation_logits) / 2)


def test_mean_pooling_averages_patch_states():
    config = tiny_config("vit", use_cls_token=False, pooling="mean")
    model = build(VitlmViTModel, config)
    outputs = model(pixel_batch(config))
    assert outputs.last_hidden_state.shape[1] == (config.image_size // config.patch_size) ** 2
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state.mean(1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "family,model_class", [("vit", VitlmViTModel), ("hybrid", VitlmHybridModel), ("dual", VitlmDualEncoderModel)]
)
def test_half_precision_follows_float32(dtype, family, model_class):
    model = build(model_class, tiny_config(family))
    inputs = model_inputs(model)
    with torch.no_grad():
        reference = main_output(model(**inputs))
        half = main_output(model.to(dtype)(**inputs))
    assert half.dtype == dtype
    scale = reference.abs().max().item()
    assert (half.float() - reference).abs().max().item() <= 0.05 * max(scale, 1.0)


@pytest.mark.parametrize(
    "pixel_values,message",
    [
        (torch.randn(3, 32, 32), "batch, channels, height, width"),
        (torch.randn(2, 1, 32, 32), "1 channels"),
        (torch.randn(2, 3, 30, 32), "not divisible"),
        ([[0.0]], "batch, channels, height, width"),
    ],
)
def test_bad_pixel_values_raise_a_clear_error(pixel_values, message):
    model = build(VitlmViTModel, tiny_config("vit", image_size=32, patch_size=8))
    with pytest.raises(ValueError, match=message):
        model(pixel_values)


def test_representation_layer_is_linear_tanh_on_the_pooled_state():
    config = tiny_config("vit", representation_size=12, num_labels=3)
    model = build(VitlmViTForImageClassification, config)
    outputs = model.vit(pixel_batch(config))
    assert outputs.pooler_output.shape == (2, 12)
    dense = model.vit.pooler[0]
    torch.testing.assert_close(outputs.pooler_output, torch.tanh(dense(outputs.last_hidden_state[:, 0])))
    assert model.classifier.in_features == 12
