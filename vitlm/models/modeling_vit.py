"""The plain Vision Transformer: patch stem, [CLS] token, position encoding, pre-LN encoder, final LayerNorm."""

import os
import threading
from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_vitlm import VitlmViTConfig, encoder_model_type
from .layers import (
    VitlmAttention,
    VitlmBlock,
    VitlmEncoder,
    VitlmLayerScale,
    VitlmPatchEmbeddings,
    VitlmPositionEncoding,
    VitlmRelativePositionBias,
    VitlmVisionEmbeddings,
)

# transformers' `from_pretrained` and `from_config` set torch's default dtype and patch `torch.nn.init` for the whole
# process, then put back what they found: two that overlap in threads put back each other's changes and leave them
# for good (float16 as every thread's default dtype, initializers that do nothing). vitlm's take turns.
_BUILDING = threading.RLock()


class VitlmPreTrainedModel(PreTrainedModel):
    """Conventions shared by every vitlm model: weight init, attention back-ends, a complete remote-code auto_map."""

    supports_gradient_checkpointing = True
    _no_split_modules = ["VitlmBlock", "VitlmVisionEmbeddings"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # What transformers' output capturing records in the encoders of models whose forward is `@capture_outputs`:
    # `hidden_states` the input of the first block and every block's output (before the final LayerNorm, as CLIP's),
    # `attentions` every attention's weights.
    _can_record_outputs = {"hidden_states": VitlmBlock, "attentions": VitlmAttention}
    # Every Auto class a saved repo answers to with `trust_remote_code=True`, as "module.Class".
    _remote_auto_map: dict[str, str] = {}
    # Losses are per-batch means that ignore `num_items_in_batch`: Trainer must scale them for gradient accumulation
    # (it would not for a forward taking **kwargs without this).
    accepts_loss_kwargs = False
    # The Hub task (widget, search filter) of a repo holding this class; `push_to_hub` writes it into the model card.
    pipeline_tag: str | None = None

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range if hasattr(self.config, "initializer_range") else 0.02
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VitlmVisionEmbeddings):
            for token in (module.cls_token, module.distillation_token, module.register_tokens, module.mask_token):
                if token is not None:
                    init.trunc_normal_(token, std=std)
        elif isinstance(module, VitlmAttention) and module.q_bias is not None:
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
        elif isinstance(module, VitlmLayerScale):
            init.constant_(module.scale, module.value)
        elif isinstance(module, VitlmPositionEncoding) and module.type == "learned":
            init.trunc_normal_(module.position_embeddings, std=std)
        elif isinstance(module, VitlmRelativePositionBias):
            init.trunc_normal_(module.relative_position_bias_table, std=std)

    # ---- loading checkpoints: refuse damaged ones in one error, report non-finite weights ----
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, stricter about what it reads. Weights come from safetensors only:
        unpickling a `pytorch_model.bin` can run code (pass `use_safetensors=False` for a file you trust). A missing
        config.json, a damaged safetensors file or weights of the wrong shape end in one error naming them (without
        `ignore_mismatched_sizes`), and NaN / inf weights are reported as a warning."""
        from safetensors import SafetensorError  # a dependency of transformers, as `tokenizers` is

        source = str(pretrained_model_name_or_path)
        safetensors_only = kwargs.get("use_safetensors") is None
        if safetensors_only:
            kwargs["use_safetensors"] = True
        own_config, saved_config = kwargs.get("config") is None, {}
        if pretrained_model_name_or_path is not None:
            hub_kwargs = (
                "cache_dir",
                "force_download",
                "local_files_only",
                "proxies",
                "revision",
                "subfolder",
                "token",
            )
            hub_kwargs = {name: kwargs[name] for name in hub_kwargs if name in kwargs}
            try:
                saved_config = cls.config_class.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)[0]
            except (OSError, ValueError):
                if own_config:
                    raise
            if own_config and (not saved_config or not isinstance(saved_config, dict)):
                # transformers builds a default config when config.json is missing: a model the weights may not fit
                raise OSError(f"{source} has no config.json holding a JSON object: it is not a saved model folder")
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        output_loading_info = kwargs.pop("output_loading_info", False)
        try:
            with _BUILDING:
                model, info = super().from_pretrained(
                    pretrained_model_name_or_path,
                    *model_args,
                    ignore_mismatched_sizes=True,
                    output_loading_info=True,
                    **kwargs,
                )
        except SafetensorError as error:
            raise OSError(
                f"the weights of {source} cannot be read ({error}): the safetensors file is truncated or damaged; "
                "download or save it again"
            ) from error
        except OSError as error:
            if not safetensors_only or "safetensors" not in str(error):
                raise
            raise OSError(
                f"{source} has no model.safetensors: vitlm reads weights from safetensors files only, as a pickled "
                "pytorch_model.bin can run code when loaded (pass use_safetensors=False to read one you trust)"
            ) from error
        if info["mismatched_keys"] and not ignore_mismatched_sizes:
            shapes = [
                f"{key} {tuple(stored)} (model: {tuple(built)})" for key, stored, built in info["mismatched_keys"]
            ]
            raise ValueError(
                f"the weights of {source} do not fit its config: {len(shapes)} of the wrong shape, "
                f"{', '.join(sorted(shapes)[:3])}; pass ignore_mismatched_sizes=True to initialize those afresh"
            )
        saved_as = (saved_config.get("architectures") or [None])[0] if isinstance(saved_config, dict) else None
        if info["missing_keys"] and saved_as == cls.__name__:
            # a base model's weights loaded into a head model lack the head, as transformers expects; a checkpoint this
            # very class saved (its own config.json says so, whatever config is passed in) lacks nothing, or it is
            # damaged: the missing weights would be random
            missing = sorted(info["missing_keys"])
            raise ValueError(
                f"the weights of {source}, saved by {saved_as}, lack {len(missing)} of its weights "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): the file is incomplete; save or "
                "download it again"
            )
        model.warn_if_nonfinite(source)
        return (model, info) if output_loading_info else model

    @classmethod
    def _from_config(cls, config, **kwargs):
        with _BUILDING:
            return super()._from_config(config, **kwargs)

    def warn_if_nonfinite(self, source: str):
        """Log a warning naming the weights that hold NaN or inf values: such a model answers NaN, with no error."""
        from transformers.utils import logging

        bad = [
            name
            for name, tensor in self.state_dict().items()
            if tensor.is_floating_point() and not tensor.is_meta and not torch.isfinite(tensor).all()
        ]
        if bad:
            logging.get_logger(__name__).warning(
                f"{source}: {len(bad)} weights hold NaN or inf values ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}); the model's outputs will not be finite"
            )

    def save_pretrained(self, save_directory, *args, **kwargs):
        if os.path.isfile(save_directory):  # transformers logs an error and returns, saving nothing
            raise NotADirectoryError(f"{os.fspath(save_directory)} is a file: `save_pretrained` writes a folder")
        # transformers writes only the saved class's own Auto entry; list the family's others too, so that a repo
        # saved from a base model still loads as the head model (and vice versa) with `trust_remote_code=True`.
        if self._auto_class is not None:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._remote_auto_map}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _upload_modified_files(self, working_dir, *args, **kwargs):
        # Both `push_to_hub` and `save_pretrained(push_to_hub=True)` pass through here with the README.md about to be
        # uploaded (the repo's own card, or transformers' template naming library "transformers"): claim it for
        # vitlm in that same commit, keeping the card's text and every other field (license, datasets, ...).
        readme = os.path.join(working_dir, "README.md")
        if os.path.isfile(readme):
            # imported here: loading a model must not depend on card-writing code
            from transformers.utils.hub import ModelCard

            card = ModelCard.load(readme)
            card.data.library_name = "vitlm"
            card.data.pipeline_tag = self.pipeline_tag or card.data.pipeline_tag
            card.data.tags = list(dict.fromkeys([*(card.data.tags or []), "vitlm", self.config.model_type]))
            card.save(readme)
        return super()._upload_modified_files(working_dir, *args, **kwargs)


class VitlmViTPreTrainedModel(VitlmPreTrainedModel):
    config_class = VitlmViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    _remote_auto_map = {
        "AutoModel": "modeling_vit.VitlmViTModel",
        "AutoModelForImageClassification": "modeling_vit.VitlmViTForImageClassification",
    }


class VitlmViTModel(VitlmViTPreTrainedModel):
    """Outputs the final hidden states and a pooled image representation ([CLS] or mean of patches, then the
    optional pre-logits layer)."""

    pipeline_tag = "image-feature-extraction"

    def __init__(self, config: VitlmViTConfig):
        super().__init__(config)
        # MAE's config extends the ViT's with its head's fields. Model types are compared, not classes: remote code
        # may load the configuration module twice.
        if encoder_model_type(config.model_type) != encoder_model_type(self.config_class.model_type):
            raise ValueError(
                f"{type(self).__name__} needs a {self.config_class.__name__} ({self.config_class.model_type!r}), got "
                f"{config.model_type!r}: use the class of that family"
            )
        self.embeddings = VitlmVisionEmbeddings(config, self.build_stem(config))
        self.pre_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.pre_norm else None
        self.encoder = VitlmEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = (
            nn.Sequential(nn.Linear(config.hidden_size, config.representation_size), nn.Tanh())
            if config.representation_size
            else None
        )
        self.post_init()

    @property
    def pooled_size(self) -> int:
        width = self.config.hidden_size * (2 if self.config.pooling == "cls_mean" else 1)
        return self.config.representation_size or width

    @staticmethod
    def build_stem(config) -> nn.Module:
        """The module turning pixels into patch tokens on their grid; the only part the hybrid replaces."""
        return VitlmPatchEmbeddings(config)

    def get_input_embeddings(self):
        return self.embeddings.stem

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        keep_indices: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        interpolate_pos_encoding (`bool`): resize learned position embeddings (or stretch fixed ones) to an input
            resolution other than `config.image_size`.
        keep_indices (`torch.LongTensor` of shape `(batch_size, num_kept)`, *optional*): encode only these patches
            (row-major grid indices), as MAE's encoder does; prefix tokens are always kept.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*): patches whose
            embedding the mask token replaces (needs `config.use_mask_token`), as in BEiT's pretraining.
        """
        pixel_values = pixel_values.to(self.dtype) if torch.is_tensor(pixel_values) else pixel_values
        hidden_states, rotary_embeddings = self.embeddings(
            pixel_values, interpolate_pos_encoding, keep_indices, bool_masked_pos
        )
        if self.pre_layernorm is not None:
            hidden_states = self.pre_layernorm(hidden_states)
        grid_size = tuple(side // self.config.stem_stride for side in pixel_values.shape[-2:])
        if (
            self.config.relative_position_bias != "none"
            and grid_size != tuple(self.config.grid_size)
            and not interpolate_pos_encoding
        ):
            raise ValueError(
                f"the input's patch grid {grid_size[0]}x{grid_size[1]} differs from the model's "
                f"{self.config.grid_size[0]}x{self.config.grid_size[1]} (relative position bias); pass "
                "`interpolate_pos_encoding=True` to resize it"
            )
        hidden_states = self.encoder(
            hidden_states, rotary_embeddings=rotary_embeddings, grid_size=grid_size, **kwargs
        ).last_hidden_state
        if self.config.norm_after_pooling:
            last_hidden_state = hidden_states
            pooled_output = self.layernorm(self.pool(hidden_states))
        else:
            last_hidden_state = self.layernorm(hidden_states)
            pooled_output = self.pool(last_hidden_state)
        if self.pooler is not None:
            pooled_output = self.pooler(pooled_output)
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled_output)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image's representation from its tokens, by `config.pooling` (registers are never pooled)."""
        if self.config.pooling == "cls":
            return tokens[:, 0]
        patches_mean = tokens[:, self.config.num_prefix_tokens :].mean(dim=1)
        return patches_mean if self.config.pooling == "mean" else torch.cat([tokens[:, 0], patches_mean], dim=-1)


@dataclass
class VitlmImageClassifierOutput(ImageClassifierOutput):
    r"""
    cls_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
        Logits of the [CLS] head, when the model has a distillation token (`logits` averages both heads, as DeiT does).
    distillation_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
        Logits of the distillation-token head.
    """

    cls_logits: torch.FloatTensor | None = None
    distillation_logits: torch.FloatTensor | None = None


class VitlmViTForImageClassification(VitlmViTPreTrainedModel):
    """A linear classifier on the pooled output; the loss (single-label, multi-label or regression) follows
    `config.problem_type` as in transformers. With a distillation token a second head reads that token and the
    logits are the two heads' mean (DeiT inference); without a teacher both heads learn from the labels."""

    base_model_class = VitlmViTModel
    pipeline_tag = "image-classification"

    def __init__(self, config: VitlmViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = self.base_model_class(config)
        pooled_size = self.vit.pooled_size
        self.classifier = nn.Linear(pooled_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.distillation_classifier = (
            nn.Linear(config.hidden_size, config.num_labels)
            if config.use_distillation_token and config.num_labels > 0
            else None
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VitlmImageClassifierOutput | tuple:
        outputs = self.vit(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs)
        logits = cls_logits = self.classifier(outputs.pooler_output)
        distillation_logits = None
        if self.distillation_classifier is not None:
            distillation_logits = self.distillation_classifier(outputs.last_hidden_state[:, 1])
            logits = (cls_logits + distillation_logits) / 2

        loss = None
        if labels is not None:
            if distillation_logits is None:
                loss = self.loss_function(labels, logits, self.config)
            else:
                loss = (
                    self.loss_function(labels, cls_logits, self.config)
                    + self.loss_function(labels, distillation_logits, self.config)
                ) / 2

        return VitlmImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cls_logits=cls_logits if distillation_logits is not None else None,
            distillation_logits=distillation_logits,
        )


__all__ = ["VitlmPreTrainedModel", "VitlmViTPreTrainedModel", "VitlmViTModel", "VitlmViTForImageClassification"]
