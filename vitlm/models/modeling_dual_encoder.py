"""CLIP-style dual encoder: a vision tower (ViT, hybrid or Swin), a causal text tower, projections and a temperature.

The towers are the families' own base models, chosen by the vision config's `model_type`; each exposes the size
of its pooled output (`pooled_size`: [CLS] or mean of tokens), which the projection reads."""

import string
from dataclasses import dataclass
from typing import Any, Unpack

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_vitlm import VitlmDualEncoderConfig, VitlmTextConfig
from .layers import VitlmEncoder
from .modeling_hybrid import VitlmHybridModel
from .modeling_pit import VitlmPiTModel
from .modeling_swin import VitlmSwinModel
from .modeling_vit import VitlmPreTrainedModel, VitlmViTModel

VISION_MODEL_CLASSES = {
    "vitlm_vit": VitlmViTModel,
    "vitlm_hybrid": VitlmHybridModel,
    "vitlm_pit": VitlmPiTModel,
    "vitlm_swin": VitlmSwinModel,
}


def check_input_ids(input_ids, attention_mask, config: VitlmTextConfig) -> torch.Tensor:
    """Validate a text batch and return each sequence's pooling position: its first end-of-text token."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"`input_ids` must be a (batch, length) tensor, got {shape}")
    if input_ids.shape[1] > config.max_position_embeddings:
        raise ValueError(
            f"`input_ids` has {input_ids.shape[1]} tokens, more than the text tower's context of "
            f"{config.max_position_embeddings}; tokenize with `truncation=True`"
        )
    is_eos = input_ids == config.eos_token_id
    value_checks = [
        (
            ((input_ids >= 0) & (input_ids < config.vocab_size)).all(),
            f"`input_ids` holds ids outside the vocabulary [0, {config.vocab_size})",
        ),
        (
            # A causal tower pooling at the end-of-text token reads left-padded text wrongly.
            attention_mask is None or (attention_mask[:, 1:] <= attention_mask[:, :-1]).all(),
            "`attention_mask` must be right-padded (padding_side='right'), as CLIP's tokenizer pads",
        ),
        (
            is_eos.any(dim=1).all(),
            f"every sequence in `input_ids` must contain the end-of-text token (id {config.eos_token_id}), where the "
            "text tower pools; tokenize with the model's tokenizer, which adds it even when truncating",
        ),
    ]
    for valid, message in value_checks:
        if torch.compiler.is_compiling():
            # A compiled (or exported) graph cannot branch on values: the check runs inside it as an assertion, which
            # raises a RuntimeError with the same message (an ONNX graph drops it).
            if isinstance(valid, torch.Tensor):
                torch._assert_async(valid, message)
        elif not valid:
            raise ValueError(message)
    return is_eos.int().argmax(dim=1)


class VitlmTextPreTrainedModel(VitlmPreTrainedModel):
    config_class = VitlmTextConfig
    base_model_prefix = "text_model"
    main_input_name = "input_ids"


class VitlmTextModel(VitlmTextPreTrainedModel):
    """CLIP's text transformer: token + learned position embeddings, causal pre-LN encoder, final LayerNorm, and
    the pooled output taken at the first end-of-text token. Deliberately stricter than `CLIPTextModel`, which
    silently pools at the wrong token for them: left-padded batches and sequences without an end-of-text token are
    refused."""

    pipeline_tag = "feature-extraction"

    def __init__(self, config: VitlmTextConfig):
        super().__init__(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.encoder = VitlmEncoder(config, is_causal=True)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.token_embedding

    def set_input_embeddings(self, value):
        self.token_embedding = value

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        attention_mask (`torch.Tensor` of shape `(batch_size, length)`, *optional*): accepted for tokenizer output
            and checked to be right-padded; causal attention already keeps every position up to the end-of-text
            token from seeing the padding after it.
        """
        pool_positions = check_input_ids(input_ids, attention_mask, self.config)
        hidden_states = self.token_embedding(input_ids) + self.position_embedding.weight[: input_ids.shape[1]]
        last_hidden_state = self.final_layer_norm(self.encoder(hidden_states, **kwargs).last_hidden_state)
        pooled_output = last_hidden_state[torch.arange(last_hidden_state.shape[0]), pool_positions]
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled_output)


@dataclass
class VitlmDualEncoderOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `return_loss=True`):
        Contrastive loss: CLIP's symmetric cross-entropy or SigLIP's sigmoid loss, per `config.loss_type`.
    logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`):
        Scaled cosine similarities (plus the bias for the sigmoid loss) of every image with every text.
    logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`):
        The transpose of `logits_per_image`.
    text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
        L2-normalized projected text embeddings.
    image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
        L2-normalized projected image embeddings.
    text_model_output, vision_model_output ([`BaseModelOutputWithPooling`]):
        The towers' outputs.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v.to_tuple() if k in ("text_model_output", "vision_model_output") else v for k, v in self.items())


def scaled_similarity(queries, keys, logit_scale, logit_bias=None) -> torch.Tensor:
    """(queries, keys) logits of normalized embeddings: cosine similarity times the temperature, plus SigLIP's bias."""
    logits = queries @ keys.t() * logit_scale.exp()
    return logits if logit_bias is None else logits + logit_bias


def contrastive_loss(logits_per_text: torch.Tensor, loss_type: str) -> torch.Tensor:
    """CLIP's symmetric cross-entropy, or SigLIP's pairwise sigmoid loss summed over pairs and averaged over texts."""
    if loss_type == "sigmoid":
        labels = 2 * torch.eye(*logits_per_text.shape, device=logits_per_text.device) - 1
        return -nn.functional.logsigmoid(labels * logits_per_text).sum() / logits_per_text.shape[0]
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (
        nn.functional.cross_entropy(logits_per_text, targets)
        + nn.functional.cross_entropy(logits_per_text.t(), targets)
    ) / 2


class VitlmDualEncoderModel(VitlmPreTrainedModel):
    """Image and text towers projected into one embedding space, scored by scaled cosine similarity."""

    config_class = VitlmDualEncoderConfig
    base_model_prefix = "dual_encoder"
    main_input_name = "input_ids"
    pipeline_tag = "zero-shot-image-classification"
    _remote_auto_map = {
        "AutoModel": "modeling_dual_encoder.VitlmDualEncoderModel",
        "AutoModelForZeroShotImageClassification": "modeling_dual_encoder.VitlmDualEncoderModel",
        "AutoModelForImageClassification": "modeling_dual_encoder.VitlmDualEncoderForImageClassification",
    }

    def __init__(self, config: VitlmDualEncoderConfig):
        super().__init__(config)
        self.vision_model = VISION_MODEL_CLASSES[config.vision_config.model_type](config.vision_config)
        self.text_model = VitlmTextModel(config.text_config)
        self.visual_projection = nn.Linear(self.vision_model.pooled_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.logit_bias = (
            nn.Parameter(torch.tensor(config.logit_bias_init_value)) if config.loss_type == "sigmoid" else None
        )
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            # Every linear layer width-scaled, as CLIP inits its towers. The towers' own init, which runs first, is a
            # flat 0.02: 4-9x too small at widths 32-128, and small towers trained from it settle on the easiest cue
            # (colour, in the shapes world) and never learn shape. Loaded weights are left alone (`init` skips them).
            for linear in self.modules():
                if isinstance(linear, nn.Linear):
                    init.trunc_normal_(linear.weight, std=linear.in_features**-0.5)
            init.constant_(self.logit_scale, self.config.logit_scale_init_value)
            if self.logit_bias is not None:
                init.constant_(self.logit_bias, self.config.logit_bias_init_value)

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs
    ) -> BaseModelOutputWithPooling | tuple:
        """The vision tower's outputs, with `pooler_output` replaced by the projected (unnormalized) embedding; a
        tuple with `return_dict=False` (or `config.return_dict=False`), as `CLIPModel`'s."""
        outputs = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        outputs.pooler_output = self.visual_projection(outputs.pooler_output)
        return outputs

    @can_return_tuple
    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling | tuple:
        """The text tower's outputs, with `pooler_output` replaced by the projected (unnormalized) embedding; a
        tuple with `return_dict=False` (or `config.return_dict=False`), as `CLIPModel`'s."""
        outputs = self.text_model(input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VitlmDualEncoderOutput | tuple:
        if input_ids is None or pixel_values is None:
            missing = "input_ids" if input_ids is None else "pixel_values"
            raise ValueError(
                f"`{missing}` is required: forward scores images against texts; use `get_image_features` or "
                "`get_text_features` for one modality"
            )
        vision_outputs = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        text_outputs = self.text_model(input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        image_embeds = nn.functional.normalize(self.visual_projection(vision_outputs.pooler_output), dim=-1)
        text_embeds = nn.functional.normalize(self.text_projection(text_outputs.pooler_output), dim=-1)

        logits_per_text = scaled_similarity(text_embeds, image_embeds, self.logit_scale, self.logit_bias)
        if return_loss and logits_per_text.shape[0] != logits_per_text.shape[1]:
            raise ValueError(
                f"`return_loss=True` needs one text per image (matching pairs), got {logits_per_text.shape[0]} texts "
                f"for {logits_per_text.shape[1]} images"
            )
        loss = contrastive_loss(logits_per_text, self.config.loss_type) if return_loss else None

        return VitlmDualEncoderOutput(
            loss=loss,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )


class VitlmDualEncoderForImageClassification(VitlmPreTrainedModel):
    """Zero-shot classification compiled into an image classifier: the normalized class embeddings (CLIP's prompt
    ensemble) are computed once by `from_dual_encoder` and stored in the model, so classifying runs only the image
    tower and costs the same for 10 or 10,000 classes. Saved and reloaded like any classifier (`id2label` holds the
    class names), it also serves `pipeline("image-classification")`.

    The class embeddings are a weight like a linear head's (logits are the scaled dot products of the normalized
    image embedding with them): fine-tuning, e.g. with `Trainer`, starts from the zero-shot classes and adapts them
    with the image tower. Built from a config alone, the model runs with random class embeddings, as any untrained
    head does. Stricter than transformers: loading a repo whose image tower loads but which has no class embeddings
    (a dual encoder's) is refused, not filled with random classes."""

    config_class = VitlmDualEncoderConfig
    base_model_prefix = "dual_encoder"
    main_input_name = "pixel_values"
    pipeline_tag = "image-classification"  # its classes are fixed when built: no candidate labels to take
    _remote_auto_map = {
        "AutoModelForImageClassification": "modeling_dual_encoder.VitlmDualEncoderForImageClassification"
    }

    def __init__(self, config: VitlmDualEncoderConfig):
        super().__init__(config)
        self.vision_model = VISION_MODEL_CLASSES[config.vision_config.model_type](config.vision_config)
        self.visual_projection = nn.Linear(self.vision_model.pooled_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.logit_bias = (
            nn.Parameter(torch.tensor(config.logit_bias_init_value)) if config.loss_type == "sigmoid" else None
        )
        self.class_embeddings = nn.Parameter(torch.empty(config.num_labels, config.projection_dim))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            # random directions of unit expected norm, like the normalized text embeddings `from_dual_encoder` stores
            init.normal_(self.class_embeddings, std=self.config.projection_dim**-0.5)
            init.constant_(self.logit_scale, self.config.logit_scale_init_value)
            if self.logit_bias is not None:
                init.constant_(self.logit_bias, self.config.logit_bias_init_value)

    @classmethod
    def from_pretrained(cls, *args, output_loading_info: bool = False, **kwargs):
        model, loading_info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing = loading_info["missing_keys"]
        if "class_embeddings" in missing and "visual_projection.weight" not in missing:
            # A dual encoder's repo: random class embeddings would give confident, meaningless answers. (A checkpoint
            # missing everything is transformers' case of a new model, reported as such.)
            raise ValueError(
                "this checkpoint has no class embeddings (it is a dual encoder's, not a zero-shot classifier's); "
                "load it with `AutoModel` and build the classifier with "
                "`VitlmDualEncoderForImageClassification.from_dual_encoder(model, tokenizer, class_names)`"
            )
        return (model, loading_info) if output_loading_info else model

    @classmethod
    @torch.no_grad()
    def from_dual_encoder(
        cls, model: VitlmDualEncoderModel, tokenizer, class_names, templates=None, batch_size=256
    ) -> "VitlmDualEncoderForImageClassification":
        """Build the classifier: each class embedding is the normalized mean of its normalized prompt embeddings.
        `templates` default to the model's own `config.prompt_templates` (the captions' style it was trained on),
        else CLIP's "a photo of a {}.". Safe to call from many threads at once."""
        class_names = list(class_names)
        templates = default_templates(model.config) if templates is None else list(templates)
        if not class_names or any(not str(name).strip() for name in class_names):
            raise ValueError("`class_names` must be a non-empty list of non-empty names")
        if len(set(class_names)) != len(class_names):
            raise ValueError(
                f"`class_names` has duplicates: {sorted({n for n in class_names if class_names.count(n) > 1})}"
            )
        check_templates(templates)
        config = model.config.__class__.from_dict(
            {
                **model.config.to_dict(),
                "id2label": dict(enumerate(class_names)),
                "label2id": {name: i for i, name in enumerate(class_names)},
                "prompt_templates": templates,
                "problem_type": "multi_label_classification" if model.config.loss_type == "sigmoid" else None,
            }
        )
        state_dict = {
            name: tensor.clone()  # copies: the classifier must not share (and, fine-tuned, change) the model's weights
            for name, tensor in model.state_dict().items()
            if not name.startswith(("text_model.", "text_projection."))
        }
        state_dict["class_embeddings"] = encode_class_names(model, tokenizer, class_names, templates, batch_size).to(
            model.dtype
        )
        # Every tensor comes from `state_dict`, so the classifier is built without values on the meta device and
        # then takes them. The device context is per thread, unlike transformers' `no_init_weights`, which patches
        # `torch.nn.init` for the whole process: models built in other threads meanwhile must initialize normally.
        with torch.device("meta"):
            classifier = cls(config)
        classifier.load_state_dict(state_dict, assign=True)
        return classifier.eval()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput | tuple:
        outputs = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        image_embeds = nn.functional.normalize(self.visual_projection(outputs.pooler_output), dim=-1)
        logits = scaled_similarity(image_embeds, self.class_embeddings, self.logit_scale, self.logit_bias)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


@torch.no_grad()
def check_templates(templates: list[str]) -> None:
    """A ValueError naming the first of `templates` that is not a prompt with exactly one `{}` where the class name
    goes and no other replacement field (`{{` and `}}` are literal braces), or saying that there are none."""
    if not templates:
        raise ValueError("`templates` must be a non-empty list of prompts, each with a '{}' for the class name")
    for template in templates:
        try:
            fields = [field[1:] for field in string.Formatter().parse(template) if field[1] is not None]
        except (TypeError, ValueError):  # not a string, or an unmatched brace
            fields = None
        if fields != [("", "", None)]:
            raise ValueError(
                f"the prompt template {template!r} must contain one '{{}}' where the class name goes and no other "
                "braces (write '{{' and '}}' for literal ones)"
            )


def default_templates(config) -> list[str]:
    return list(getattr(config, "prompt_templates", None) or ["a photo of a {}."])


def encode_class_names(model: VitlmDualEncoderModel, tokenizer, class_names, templates, batch_size=256):
    """(classes, projection_dim) normalized class embeddings: CLIP's ensemble over prompt templates."""
    prompts = [template.format(name) for name in class_names for template in templates]
    embeddings = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt").to(
            model.device
        )
        features = model.get_text_features(
            tokens["input_ids"], tokens["attention_mask"], return_dict=True
        ).pooler_output
        embeddings.append(nn.functional.normalize(features.float(), dim=-1))
    per_prompt = torch.cat(embeddings).view(len(class_names), len(templates), -1)
    return nn.functional.normalize(per_prompt.mean(dim=1), dim=-1)


__all__ = [
    "VitlmTextModel",
    "VitlmDualEncoderModel",
    "VitlmDualEncoderForImageClassification",
    "check_templates",
    "default_templates",
    "encode_class_names",
]
