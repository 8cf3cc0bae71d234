"""The synthesis inpainting head: MaskGIT-style iterative parallel decoding of discrete patch codes on a ViT encoder.

A patch is a grid of small pixel squares, each one of the `codebook_size` codewords the model holds (a k-means
codebook of square pixels, fitted on the training images by `vitlm train masked-image-modeling --head synthesis`;
stored as a buffer, so a saved repo runs without vitlm). The encoder reads every visible patch's pixels and a mask
token for each hidden one; a linear head gives every patch a distribution over the codes of its squares. Training is
cross-entropy at the masked patches. Sampling (`sample_patches`) starts from every hidden patch masked and, round by
round, draws codes for all of them at once, keeps the most confident draws (with noise that fades over the rounds)
and masks the rest again, fewer each round along a cosine schedule, until none is left (Chang et al., MaskGIT, 2022).
Each draw comes from a `torch.Generator`, so a seed gives one completion, and other seeds other ones.

Preparing an image and pasting the samples back, every unmasked pixel unchanged, is the image processor's
(`VitlmImageProcessor.prepare_inpainting` and `post_process_inpainting`); `VitlmViTForInpaintingSynthesis.inpaint`
runs the three steps.
"""

import math
from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple

from .configuration_vitlm import VitlmViTSynthesisConfig
from .image_processing_vitlm import as_pil_image, as_rgb
from .inpainting_utils import patchify, unpatchify
from .modeling_vit import VitlmViTModel, VitlmViTPreTrainedModel

# The Auto classes a synthesis repo answers to with `trust_remote_code=True`: the same as vitlm registers locally.
SYNTHESIS_REMOTE_AUTO_MAP = {
    "AutoModelForMaskedImageModeling": "modeling_synthesis.VitlmViTForInpaintingSynthesis",
}


def masking_ratio(progress: torch.Tensor | float) -> torch.Tensor:
    """MaskGIT's cosine schedule: the share of hidden patches still masked after `progress` (0 to 1) of decoding,
    and the distribution of mask ratios training draws from (`cos(pi/2 * u)`, u uniform)."""
    return torch.cos(torch.as_tensor(progress, dtype=torch.float32) * math.pi / 2)


def gumbel_noise(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard Gumbel draws, made on the CPU so that a seed gives the same draws on every device."""
    uniform = torch.rand(shape, generator=generator).clamp(1e-20, 1.0 - 1e-7)
    return (-torch.log(-torch.log(uniform))).to(device)


@dataclass
class VitlmInpaintingSynthesisOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`): cross-entropy of the codes of the masked patches, averaged per image, then over the
        images.
    logits (`torch.FloatTensor` of shape `(batch_size, num_patches, codes_per_patch, codebook_size)`): per patch, the
        scores of every codeword for each of its squares (row-major).
    mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`): 1 for masked patches, 0 for visible ones.
    hidden_states, attentions: the encoder's, when requested.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class VitlmViTForInpaintingSynthesis(VitlmViTPreTrainedModel):
    """A ViT encoder (with a mask token) and a linear head over its patch states predicting the codes of each patch's
    pixel squares; `sample_patches` decodes hidden patches by MaskGIT's iterative parallel sampling, `inpaint` fills
    an image's masked pixels with several samples."""

    config_class = VitlmViTSynthesisConfig
    pipeline_tag = "image-to-image"
    _remote_auto_map = SYNTHESIS_REMOTE_AUTO_MAP

    def __init__(self, config: VitlmViTSynthesisConfig):
        if config.model_type != VitlmViTSynthesisConfig.model_type:  # not isinstance: remote code may load it twice
            raise ValueError(
                f"{type(self).__name__} needs a VitlmViTSynthesisConfig (the synthesis head's fields), got a "
                f"{config.model_type} config: `VitlmViTSynthesisConfig.from_encoder_config(config, ...)` makes one "
                "from a VitlmViTConfig"
            )
        super().__init__(config)
        self.vit = VitlmViTModel(config)
        self.code_head = nn.Linear(config.hidden_size, config.codes_per_patch * config.codebook_size)
        # the tokenizer: codewords in the processor's normalized pixel space, laid out as `patchify` lays out a square
        square = config.code_patch_size**2 * config.num_channels
        self.register_buffer("codebook", torch.zeros(config.codebook_size, square))
        self.post_init()

    # ---- the tokenizer: pixel squares <-> codes

    def pixel_squares(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(batch, channels, H, W) -> (batch, patches, codes_per_patch, square): each patch's squares, row-major."""
        square, patch = self.config.code_patch_size, self.config.patch_size
        per_side = patch // square
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        squares = patchify(pixel_values, square)
        squares = squares.reshape(len(squares), grid[0], per_side, grid[1], per_side, -1).transpose(2, 3)
        return squares.reshape(len(squares), grid[0] * grid[1], per_side**2, -1)

    @torch.no_grad()
    def tokenize(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """(batch, patches, codes_per_patch): the nearest codeword of every pixel square."""
        squares = self.pixel_squares(pixel_values.float())
        codebook = self.codebook.float()
        # squared distances up to each square's own norm, which does not change the nearest codeword
        distances = codebook.square().sum(-1) - 2 * squares @ codebook.T
        return distances.argmin(-1)

    def code_pixels(self, codes: torch.LongTensor) -> torch.Tensor:
        """(batch, patches, codes_per_patch) codes -> (batch, patches, patch_size**2 * channels) pixels, laid out as
        `patchify` lays out patches."""
        batch, patches, _ = codes.shape
        square, per_side = self.config.code_patch_size, self.config.patch_size // self.config.code_patch_size
        pixels = self.codebook[codes].reshape(batch, patches, per_side, per_side, square, square, -1)
        return pixels.permute(0, 1, 2, 4, 3, 5, 6).reshape(batch, patches, -1)

    # ---- training

    def default_mask(self, batch_size: int, num_patches: int, noise=None, device=None) -> torch.Tensor:
        """(batch, patches) bool: without a given mask, the half of the patches with the highest `noise` (uniform when
        not given) is masked. Training draws its masks along the cosine schedule instead (vitlm's collator)."""
        if noise is None:
            noise = torch.rand(batch_size, num_patches, device=device)
        elif noise.shape != (batch_size, num_patches):
            raise ValueError(
                f"`noise` must have shape {(batch_size, num_patches)} (batch, patches), got {tuple(noise.shape)}"
            )
        rank = noise.to(device).argsort(dim=1).argsort(dim=1)
        return rank >= num_patches - max(1, num_patches // 2)

    def code_logits(self, pixel_values, bool_masked_pos, interpolate_pos_encoding=False, **kwargs):
        """(logits of shape (batch, patches, codes_per_patch, codebook_size), the encoder's output)."""
        encoded = self.vit(
            pixel_values,
            bool_masked_pos=bool_masked_pos,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
            **kwargs,
        )
        states = encoded.last_hidden_state[:, self.config.num_prefix_tokens :]
        logits = self.code_head(states).unflatten(-1, (self.config.codes_per_patch, self.config.codebook_size))
        return logits, encoded

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VitlmInpaintingSynthesisOutput | tuple:
        r"""
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*): the patches to predict
            (hidden from the encoder by the mask token); default: see `default_mask`.
        noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*): without `bool_masked_pos`, the
            half of the patches with the highest values is masked.
        """
        patch_size = self.config.patch_size
        num_patches = (pixel_values.shape[-2] // patch_size) * (pixel_values.shape[-1] // patch_size)
        if bool_masked_pos is None:
            bool_masked_pos = self.default_mask(len(pixel_values), num_patches, noise, pixel_values.device)
        bool_masked_pos = bool_masked_pos.to(pixel_values.device).bool()
        logits, encoded = self.code_logits(pixel_values, bool_masked_pos, interpolate_pos_encoding, **kwargs)
        targets = self.tokenize(pixel_values)
        per_code = nn.functional.cross_entropy(logits.flatten(0, 2).float(), targets.flatten(), reduction="none")
        per_patch = per_code.view(targets.shape).mean(-1) * bool_masked_pos
        # each image's mean over its masked patches, then the images' mean: masks of the cosine schedule cover very
        # different numbers of patches, and a mean per image keeps every image's weight the same
        loss = (per_patch.sum(1) / bool_masked_pos.sum(1).clamp(min=1)).mean()
        return VitlmInpaintingSynthesisOutput(
            loss=loss,
            logits=logits,
            mask=bool_masked_pos.to(pixel_values.dtype),
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )

    # ---- sampling

    @torch.no_grad()
    def sample_patches(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor,
        num_samples: int = 1,
        steps: int | None = None,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Samples of the masked patches by MaskGIT's decoding: `(batch_size * num_samples, num_patches,
        patch_size**2 * channels)` pixels (the samples of each image next to each other), the visible patches as
        given, the masked ones made of codewords, in the layout of `patchify` (what `post_process_inpainting` reads
        as `logits`).

        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, channels, height, width)`): the images; the pixels of
                masked patches are never read.
            bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`): the patches to generate.
            num_samples (`int`): completions per image.
            steps (`int`, *optional*): decoding rounds (default `config.sampling_steps`); each fixes some of the
                patches still masked, the last all of them.
            temperature (`float`, *optional*): of the codes' distribution, and the scale of the noise on the order
                in which patches are fixed (default `config.sampling_temperature`; 0: always the most likely code,
                most confident first, the same for every seed).
            generator (`torch.Generator`, *optional*): the source of every random draw (a CPU generator); the same
                seed gives the same samples.
        """
        steps = self.config.sampling_steps if steps is None else steps
        temperature = self.config.sampling_temperature if temperature is None else temperature
        for name, value in (("num_samples", num_samples), ("steps", steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 100:
            raise ValueError(f"`temperature` must be a number in [0, 100], got {temperature!r}")
        patch_size = self.config.patch_size
        grid = (pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size)
        if tuple(bool_masked_pos.shape) != (len(pixel_values), grid[0] * grid[1]):
            raise ValueError(
                f"`bool_masked_pos` must have shape {(len(pixel_values), grid[0] * grid[1])} (batch, patches), got "
                f"{tuple(bool_masked_pos.shape)}"
            )
        pixel_values = pixel_values.to(self.device, self.dtype).repeat_interleave(num_samples, 0)
        unknown = bool_masked_pos.to(self.device).bool().repeat_interleave(num_samples, 0)
        patches = patchify(pixel_values, patch_size)
        total = unknown.sum(1)
        for step in range(steps):
            if not unknown.any():
                break
            logits, _ = self.code_logits(unpatchify(patches, patch_size, grid), unknown)
            log_probs = logits.float().log_softmax(-1)
            if temperature == 0:
                codes = log_probs.argmax(-1)
            else:  # the Gumbel-max trick: a draw from softmax(logits / temperature)
                codes = (log_probs / temperature + gumbel_noise(log_probs.shape, generator, self.device)).argmax(-1)
            confidence = log_probs.gather(-1, codes[..., None])[..., 0].sum(-1)
            if temperature > 0:  # MaskGIT's randomness in the order, fading to none at the last round
                confidence = confidence + temperature * (1 - (step + 1) / steps) * gumbel_noise(
                    confidence.shape, generator, self.device
                )
            # every image keeps its schedule's share masked (at least one patch fewer each round, none at the end)
            left = unknown.sum(1)
            keep_masked = (total * masking_ratio((step + 1) / steps).to(self.device)).floor().long()
            keep_masked = torch.minimum(keep_masked, (left - 1).clamp(min=0))
            order = confidence.masked_fill(~unknown, -math.inf).argsort(dim=1, descending=True).argsort(dim=1)
            fixed = unknown & (order < (left - keep_masked)[:, None])
            patches = torch.where(fixed[..., None], self.code_pixels(codes).to(patches.dtype), patches)
            unknown = unknown & ~fixed
        return patches

    def inpaint(
        self,
        image,
        mask,
        image_processor,
        num_samples: int = 1,
        seed: int = 0,
        steps: int | None = None,
        temperature: float | None = None,
        blend: bool = True,
    ) -> list:
        """`num_samples` completions of `image` where `mask` is set, as RGB PIL images of the image's size whose
        unmasked pixels are the image's, bit for bit (see `VitlmImageProcessor.prepare_inpainting` for the images
        and masks accepted, and how other sizes are handled). Deterministic for a `seed`; other seeds give other
        completions where the hidden content is uncertain. `steps` and `temperature`: see `sample_patches`. The mask
        must be binary, neither empty nor full (`VitlmImageProcessor.check_generative_mask`).

        `blend` Poisson-blends each sample into the image (`post_process_inpainting`): a sample's patches are drawn
        from a codebook, so their colour level is off by the codeword's error where they meet the visible pixels;
        blending keeps the sample's detail and moves its level to meet them (on the inpainting benchmark's masks,
        +3.9 dB inside the mask). `blend=False` pastes the codewords' pixels as sampled."""
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"`seed` must be an integer from 0 to 2**63 - 1 (torch's generator seeds), got {seed!r}")
        image_processor.check_generative_mask(mask)
        image = as_rgb(as_pil_image(image))  # decoded once (a path, an array), not again for every sample
        inputs = image_processor.prepare_inpainting(image, mask, self.config)
        generator = torch.Generator().manual_seed(seed)
        samples = self.sample_patches(
            inputs["pixel_values"], inputs["bool_masked_pos"], num_samples, steps, temperature, generator
        )
        masked = inputs["bool_masked_pos"].float()
        return [
            image_processor.post_process_inpainting(
                {"logits": sample[None].float(), "mask": masked}, inputs["pixel_values"], image, mask, blend=blend
            )
            for sample in samples
        ]


__all__ = ["VitlmViTForInpaintingSynthesis"]
