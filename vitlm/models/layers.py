"""Building blocks shared by every vitlm model: the patch stem, position encodings and the pre-LN encoder.

Vision towers, the text tower and the task heads' decoders are all made of these modules, written once.
"""

from typing import Unpack

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import TransformersKwargs, logging

from .configuration_vitlm import to_pair

logger = logging.get_logger(__name__)

# Attention implementations that honour `is_causal` without a mask tensor.
_NATIVE_CAUSAL_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "flash_attention_3")


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive (1, 1, length, length) mask hiding future positions."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None]


class VitlmAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, dispatched through transformers' attention interface.

    Its shape is the config's `hidden_size` and `num_attention_heads` (a hierarchical tower passes each stage's
    [`VitlmStageConfig`]). An additive `attention_mask` (a relative position bias, a shifted-window mask)
    reaches every back-end the same way."""

    def __init__(self, config, is_causal: bool = False):
        super().__init__()
        width = config.hidden_size
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = width // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = is_causal
        # BEiT's attention biases queries and values only (`key_bias=False`): the key's third stays zero
        split_bias = config.qkv_bias and not getattr(config, "key_bias", True)
        self.qkv = nn.Linear(width, 3 * width, bias=config.qkv_bias and not split_bias)
        self.q_bias = nn.Parameter(torch.zeros(width)) if split_bias else None
        self.v_bias = nn.Parameter(torch.zeros(width)) if split_bias else None
        self.proj = nn.Linear(width, width)

    def forward(
        self, hidden_states, attention_mask=None, rotary_embeddings=None, **kwargs: Unpack[TransformersKwargs]
    ):
        batch_size, length, _ = hidden_states.shape
        if self.q_bias is None:
            qkv = self.qkv(hidden_states)
        else:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
            qkv = nn.functional.linear(hidden_states, self.qkv.weight, bias)
        qkv = qkv.view(batch_size, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if rotary_embeddings is not None:
            cos, sin = rotary_embeddings
            query = query * cos + rotate_half(query) * sin
            key = key * cos + rotate_half(key) * sin

        implementation = self.config._attn_implementation or "eager"
        if kwargs.get("output_attentions") and implementation != "eager":
            # Only the eager path materialises the attention weights, which the model's output capturing records.
            logger.warning_once(f"`output_attentions=True` runs eager attention instead of {implementation!r}.")
            implementation = "eager"
        if self.is_causal and attention_mask is None and implementation not in _NATIVE_CAUSAL_IMPLEMENTATIONS:
            # one (broadcast) mask per sample: flex attention indexes the mask by batch
            attention_mask = causal_mask(length, query.dtype, query.device).expand(batch_size, 1, -1, -1)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=self.is_causal,
            **kwargs,
        )
        attn_output = self.proj(attn_output.reshape(batch_size, length, -1))
        return attn_output, attn_weights


class VitlmMLP(nn.Module):
    """fc2(act(fc1(x))), or with `config.mlp_type == "swiglu"` the gated unit of DINOv2-giant: fc1 makes a gate and a
    value of `intermediate_size` each, fc2(act(gate) * value). Towers without the field (text, PiT, Swin) are plain."""

    def __init__(self, config):
        super().__init__()
        width, intermediate_size = config.hidden_size, config.intermediate_size
        self.gated = getattr(config, "mlp_type", "mlp") == "swiglu"
        self.fc1 = nn.Linear(width, intermediate_size * (2 if self.gated else 1))
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, width)

    def forward(self, hidden_states):
        hidden_states = self.fc1(hidden_states)
        if self.gated:
            gate, hidden_states = hidden_states.chunk(2, dim=-1)
            return self.fc2(self.act(gate) * hidden_states)
        return self.fc2(self.act(hidden_states))


class VitlmLayerScale(nn.Module):
    """A learned per-channel scale of a residual branch (CaiT, DINOv2's layer scale), starting at `value`."""

    def __init__(self, width: int, value: float):
        super().__init__()
        self.value = value
        self.scale = nn.Parameter(torch.full((width,), value))

    def forward(self, hidden_states):
        return hidden_states * self.scale


class VitlmDropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample while training."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states):
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * keep / keep_prob

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


class VitlmBlock(GradientCheckpointingLayer):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x)); with `config.layerscale_value` each branch is
    scaled per channel first. A stage of a hierarchical tower passes its [`VitlmStageConfig`]."""

    def __init__(self, config, drop_path_rate: float = 0.0, is_causal: bool = False):
        super().__init__()
        width = config.hidden_size
        self.layer_norm1 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.attention = VitlmAttention(config, is_causal)
        self.layer_norm2 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.mlp = VitlmMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = VitlmDropPath(drop_path_rate)
        layerscale_value = getattr(config, "layerscale_value", None)  # a ViT option; other towers have none
        self.layer_scale1 = VitlmLayerScale(width, layerscale_value) if layerscale_value else nn.Identity()
        self.layer_scale2 = VitlmLayerScale(width, layerscale_value) if layerscale_value else nn.Identity()
        self.relative_position_bias = (
            VitlmRelativePositionBias(config.grid_size, config.num_attention_heads, config.num_prefix_tokens)
            if getattr(config, "relative_position_bias", "none") == "per_layer"  # a ViT option (BEiT)
            else None
        )

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        rotary_embeddings=None,
        grid_size=None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        """`grid_size`: the input's patch grid, which a block's relative position bias spans (resized to it)."""
        if self.relative_position_bias is not None:
            attention_mask = add_bias(
                attention_mask, self.relative_position_bias(grid_size, resize=True), hidden_states
            )
        attn_output, _ = self.attention(self.layer_norm1(hidden_states), attention_mask, rotary_embeddings, **kwargs)
        hidden_states = hidden_states + self.drop_path(self.dropout(self.layer_scale1(attn_output)))
        del attn_output  # not alive through the MLP, where memory peaks
        mlp_output = self.mlp(self.layer_norm2(hidden_states))
        return hidden_states + self.drop_path(self.dropout(self.layer_scale2(mlp_output)))


class VitlmEncoder(nn.Module):
    """A stack of [`VitlmBlock`]s, with stochastic depth growing linearly over the depth."""

    def __init__(self, config, is_causal: bool = False):
        super().__init__()
        drop_path_rate = getattr(config, "drop_path_rate", 0.0)  # the text tower's config has none
        depth = config.num_hidden_layers
        # plain Python: models may be built under a meta-device context, where tensors hold no values
        rates = [drop_path_rate * index / max(depth - 1, 1) for index in range(depth)]
        self.layers = nn.ModuleList(VitlmBlock(config, rate, is_causal) for rate in rates)
        self.relative_position_bias = (
            VitlmRelativePositionBias(config.grid_size, config.num_attention_heads, config.num_prefix_tokens)
            if getattr(config, "relative_position_bias", "none") == "shared"  # a ViT option (BEiT's shared table)
            else None
        )

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        rotary_embeddings=None,
        grid_size=None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        """Returns only the last hidden state: the models' output capturing records the first block's input and every
        block's output (`hidden_states`) and every attention's weights (`attentions`). The blocks take
        `hidden_states` positionally, where the capturing hook reads the first block's input."""
        if self.relative_position_bias is not None:
            attention_mask = add_bias(
                attention_mask, self.relative_position_bias(grid_size, resize=True), hidden_states
            )
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, rotary_embeddings, grid_size, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


def add_bias(attention_mask, bias: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
    """An additive (heads, tokens, tokens) bias joined to an attention mask, one (broadcast) copy per sample: flex
    attention indexes the mask by batch."""
    bias = bias.to(hidden_states.dtype)[None].expand(hidden_states.shape[0], -1, -1, -1)
    return bias if attention_mask is None else attention_mask + bias


class VitlmRelativePositionBias(nn.Module):
    """A learned relative position bias (Swin, BEiT): one value per head for every (dy, dx) offset between two tokens
    of a `window_size` window, returned as the (heads, tokens, tokens) additive attention mask it contributes.

    With `num_prefix_tokens` (BEiT's [CLS]), three more entries hold the bias from a prefix token to the patches,
    from the patches to a prefix token, and between prefix tokens; the prefix tokens come first in the sequence. A
    window smaller than the table's (Swin's window clamped to a small feature map) reads the offsets it spans."""

    def __init__(self, window_size, num_heads: int, num_prefix_tokens: int = 0):
        super().__init__()
        self.window_size = to_pair(window_size)
        self.num_prefix_tokens = num_prefix_tokens
        height, width = self.window_size
        num_offsets = (2 * height - 1) * (2 * width - 1)
        extra = 3 if num_prefix_tokens else 0
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_offsets + extra, num_heads))

    def index(self, window_size, device, table_window=None) -> torch.Tensor:
        """(tokens, tokens) rows of the table: Swin's and BEiT's `relative_position_index` for `window_size`, into a
        table of `table_window`'s offsets (the module's own by default; a resized one's)."""
        height, width = window_size
        table_height, table_width = table_window or self.window_size
        ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
        coords = torch.stack([ys.flatten(), xs.flatten()])
        offsets = coords[:, :, None] - coords[:, None, :]
        index = (offsets[0] + table_height - 1) * (2 * table_width - 1) + offsets[1]
        index = index + table_width - 1
        if not self.num_prefix_tokens:
            return index
        num_offsets, prefix = (2 * table_height - 1) * (2 * table_width - 1), self.num_prefix_tokens
        index = nn.functional.pad(index, (prefix, 0, prefix, 0), value=num_offsets)  # prefix -> patches
        index[prefix:, :prefix] = num_offsets + 1  # patches -> prefix
        index[:prefix, :prefix] = num_offsets + 2  # prefix -> prefix
        return index
        num_offsets, prefix = self.relative_position_bias_table.shape[0] - 3, self.num_prefix_tokens
        index = nn.functional.pad(index, (prefix, 0, prefix, 0), value=num_offsets)  # prefix -> patches
        index[prefix:, :prefix] = num_offsets + 1  # patches -> prefix
        index[:prefix, :prefix] = num_offsets + 2  # prefix -> prefix
        return index

    def forward(self, window_size=None, resize: bool = False) -> torch.Tensor:
        """With `resize` (BEiT at another resolution), a window other than the table's gets the table bilinearly
        resized to its offsets, as transformers' BEiT does; without, a smaller window reads the offsets it spans."""
        window_size = tuple(window_size or self.window_size)
        table = self.relative_position_bias_table
        if resize and window_size != self.window_size:
            return self.resized(window_size)
        if window_size[0] > self.window_size[0] or window_size[1] > self.window_size[1]:
            raise ValueError(f"a {window_size} window is larger than the bias table's {self.window_size}")
        index = self.index(window_size, table.device)
        return table[index].permute(2, 0, 1)

    def resized(self, window_size) -> torch.Tensor:
        table = self.relative_position_bias_table
        extra = 3 if self.num_prefix_tokens else 0
        offsets, prefix_entries = table[: table.shape[0] - extra], table[table.shape[0] - extra :]
        old = (2 * self.window_size[0] - 1, 2 * self.window_size[1] - 1)
        new = (2 * window_size[0] - 1, 2 * window_size[1] - 1)
        grid = offsets.reshape(1, *old, -1).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid.float(), size=new, mode="bilinear", align_corners=False).to(table.dtype)
        resized = torch.cat([grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1), prefix_entries])
        return resized[self.index(window_size, table.device, table_window=window_size)].permute(2, 0, 1)


def window_partition(hidden_states: torch.Tensor, window_size: tuple[int, int]) -> torch.Tensor:
    """(batch, height, width, channels) -> (batch * windows, window tokens, channels), windows row-major per image."""
    batch_size, height, width, channels = hidden_states.shape
    window_height, window_width = window_size
    windows = hidden_states.view(
        batch_size, height // window_height, window_height, width // window_width, window_width, channels
    )
    return windows.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_height * window_width, channels)


def window_merge(windows: torch.Tensor, window_size: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """The inverse of [`window_partition`]: (batch * windows, window tokens, channels) -> (batch, height, width,
    channels)."""
    window_height, window_width = window_size
    channels = windows.shape[-1]
    grid = windows.view(-1, height // window_height, width // window_width, window_height, window_width, channels)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def shifted_window_mask(height: int, width: int, window_size, shift_size, dtype, device) -> torch.Tensor:
    """(windows, window tokens, window tokens) additive mask of Swin's shifted windows on a (padded) height x width
    map: after the cyclic shift, a window may hold tokens of up to four regions that were not neighbours, which must
    not attend to each other."""
    region = torch.zeros(1, height, width, 1, device=device)
    count = 0
    for rows in (slice(0, -window_size[0]), slice(-window_size[0], -shift_size[0]), slice(-shift_size[0], None)):
        for cols in (slice(0, -window_size[1]), slice(-window_size[1], -shift_size[1]), slice(-shift_size[1], None)):
            region[:, rows, cols] = count
            count += 1
    regions = window_partition(region, window_size)[..., 0]
    different = regions[:, :, None] != regions[:, None, :]
    return torch.zeros(different.shape, dtype=dtype, device=device).masked_fill(different, torch.finfo(dtype).min)


class VitlmWindowBlock(VitlmBlock):
    """[`VitlmBlock`] attending within non-overlapping windows of a (batch, height, width, channels) feature map,
    optionally cyclically shifted (Swin's W-MSA / SW-MSA), with a [`VitlmRelativePositionBias`] per block. As in
    the original Swin, the map is padded (with zeros after the LayerNorm) to a multiple of the window before the shift,
    and the attention mask joins the relative position bias and the shifted-window mask."""

    def __init__(self, stage_config, window_size, drop_path_rate: float = 0.0):
        super().__init__(stage_config, drop_path_rate)
        self.relative_position_bias = VitlmRelativePositionBias(window_size, stage_config.num_attention_heads)

    def forward(
        self,
        hidden_states,
        window_size: tuple[int, int],
        shift_size: tuple[int, int],
        shift_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        """`window_size` and `shift_size` are the stage's for this input (a window clamped to a small map, no shift
        there); `shift_mask` comes from [`shifted_window_mask`] when shifting."""
        batch_size, height, width, channels = hidden_states.shape
        windows = self.layer_norm1(hidden_states)
        pad_height, pad_width = (-height) % window_size[0], (-width) % window_size[1]
        windows = nn.functional.pad(windows, (0, 0, 0, pad_width, 0, pad_height))
        if any(shift_size):
            windows = torch.roll(windows, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
        windows = window_partition(windows, window_size)
        attention_mask = self.relative_position_bias(window_size).to(windows.dtype)[None]
        if shift_mask is not None:
            attention_mask = (attention_mask + shift_mask[:, None]).repeat(batch_size, 1, 1, 1)
        else:  # one mask per window: flex attention indexes the mask by batch
            attention_mask = attention_mask.expand(windows.shape[0], -1, -1, -1)
        attn_output, _ = self.attention(windows, attention_mask, **kwargs)
        attn_output = window_merge(attn_output, window_size, height + pad_height, width + pad_width)
        if any(shift_size):
            attn_output = torch.roll(attn_output, shifts=shift_size, dims=(1, 2))
        hidden_states = hidden_states + self.drop_path(self.dropout(attn_output[:, :height, :width]))
        del attn_output
        return hidden_states + self.drop_path(self.dropout(self.mlp(self.layer_norm2(hidden_states))))


class VitlmPatchMerging(nn.Module):
    """Swin's token reducer: each 2x2 group of a (batch, height, width, channels) map concatenated (top-left,
    bottom-left, top-right, bottom-right), layer-normalized and projected to `out_width`; an odd side is padded with
    zeros first, as the originals do."""

    def __init__(self, config, width: int, out_width: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * width, eps=config.layer_norm_eps)
        self.reduction = nn.Linear(4 * width, out_width, bias=False)

    def forward(self, hidden_states):
        batch_size, height, width, channels = hidden_states.shape
        hidden_states = nn.functional.pad(hidden_states, (0, 0, 0, width % 2, 0, height % 2))
        height, width = hidden_states.shape[1:3]
        grouped = hidden_states.view(batch_size, height // 2, 2, width // 2, 2, channels)
        grouped = grouped.permute(0, 1, 3, 4, 2, 5).reshape(batch_size, height // 2, width // 2, 4 * channels)
        return self.reduction(self.norm(grouped))


class VitlmPatchEmbeddings(nn.Module):
    """Cuts an image into non-overlapping patches and projects each to `hidden_size` (a hierarchical tower passes its
    first stage's [`VitlmStageConfig`]) with one strided conv.

    Like every stem, returns the patch embeddings on their grid, channels first: (batch, hidden_size, grid_height,
    grid_width)."""

    def __init__(self, config):
        super().__init__()
        self.num_channels = config.num_channels
        self.patch_size = config.patch_size
        self.projection = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=getattr(config, "patch_bias", True),  # Swin's config has no such option: its stem has a bias
        )

    def forward(self, pixel_values):
        check_pixel_values(pixel_values, self.num_channels, self.patch_size)
        return self.projection(pixel_values)


def check_pixel_values(pixel_values, num_channels: int, stride: int):
    """Raise a ValueError naming the problem before a wrongly shaped batch reaches a convolution."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"`pixel_values` must be a (batch, channels, height, width) tensor, got {shape}")
    if pixel_values.shape[1] != num_channels:
        raise ValueError(f"`pixel_values` has {pixel_values.shape[1]} channels, the model expects {num_channels}")
    height, width = pixel_values.shape[2:]
    if height % stride or width % stride:
        raise ValueError(f"image size {height}x{width} is not divisible by the model's stride of {stride} pixels")


def grid_positions(length: int, reference_length: int | None, device) -> torch.Tensor:
    """Positions 0..length-1, or stretched to span `reference_length` positions when interpolating."""
    positions = torch.arange(length, device=device, dtype=torch.float32)
    return positions * (reference_length / length) if reference_length else positions


def sincos_2d_position_embeddings(dim: int, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """MAE's fixed 2D sin-cos table, row-major over the grid: the first half of `dim` encodes x, the second y."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32, device=xs.device) / quarter)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    angles_x, angles_y = x.reshape(-1, 1) * omega, y.reshape(-1, 1) * omega
    return torch.cat([angles_x.sin(), angles_x.cos(), angles_y.sin(), angles_y.cos()], dim=1)


def rope_2d_angles(head_dim: int, ys: torch.Tensor, xs: torch.Tensor, theta: float) -> torch.Tensor:
    """Axial 2D rotary angles, row-major over the grid: half the rotated pairs turn with x, half with y."""
    quarter = head_dim // 4
    freqs = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float32, device=xs.device) / quarter)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    angles = torch.cat([x.reshape(-1, 1) * freqs, y.reshape(-1, 1) * freqs], dim=1)
    return torch.cat([angles, angles], dim=1)


class VitlmPositionEncoding(nn.Module):
    """
    The one position-encoding module, its kind chosen by `config.position_embedding_type`:

    - `learned`: a learnable table over prefix tokens and the configured patch grid, bicubically resized when
      `interpolate_pos_encoding=True` (antialiased with `interpolate_antialias`); register tokens (DINOv2-reg) have
      no row and get nothing added, nor do [CLS] and the distillation token without `prefix_position_embeddings`;
    - `sincos2d`: a fixed 2D sin-cos table added to the patch tokens (prefix tokens get zeros, as in MAE);
    - `rope2d`: no additive term; returns (cos, sin) rotating queries and keys by their patch's row and column
      (prefix tokens are not rotated), so attention sees relative positions;
    - `none`: nothing (BEiT, whose relative position bias in attention places the tokens).

    The fixed kinds work at any resolution; with `interpolate_pos_encoding=True` their positions are stretched to
    span the configured grid instead of extending it.
    """

    def __init__(self, config):
        super().__init__()
        self.type = config.position_embedding_type
        self.num_prefix_tokens = config.num_prefix_tokens
        # the prefix tokens with a row in the learned table: [CLS] and the distillation token, not the registers
        self.num_positioned_prefix_tokens = config.num_prefix_tokens - getattr(config, "num_register_tokens", 0)
        if not getattr(config, "prefix_position_embeddings", True):  # ViT options; PiT has neither
            self.num_positioned_prefix_tokens = 0
        self.grid_size = config.grid_size
        self.hidden_size = config.hidden_size
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.rope_theta = config.rope_theta
        self.antialias = getattr(config, "interpolate_antialias", False)  # a ViT option; PiT has none
        if self.type == "learned":
            num_positions = self.num_positioned_prefix_tokens + self.grid_size[0] * self.grid_size[1]
            self.position_embeddings = nn.Parameter(torch.zeros(1, num_positions, config.hidden_size))

    def forward(self, embeddings, grid_size, interpolate_pos_encoding=False):
        """Returns the embeddings with any absolute encoding added, and the rotary (cos, sin) or None."""
        if self.type == "none":
            return embeddings, None
        if self.type == "learned":
            positions = self.resized_position_embeddings(grid_size, interpolate_pos_encoding)
            split, unpositioned = (
                self.num_positioned_prefix_tokens,
                self.num_prefix_tokens - self.num_positioned_prefix_tokens,
            )
            if unpositioned:  # zeros for the prefix tokens without a row, which follow those with one
                zeros = positions.new_zeros(1, unpositioned, positions.shape[-1])
                positions = torch.cat([positions[:, :split], zeros, positions[:, split:]], dim=1)
            return embeddings + positions, None
        reference = self.grid_size if interpolate_pos_encoding else (None, None)
        ys = grid_positions(grid_size[0], reference[0], embeddings.device)
        xs = grid_positions(grid_size[1], reference[1], embeddings.device)
        if self.type == "sincos2d":
            table = sincos_2d_position_embeddings(self.hidden_size, ys, xs).to(embeddings.dtype)
            return torch.cat(
                [embeddings[:, : self.num_prefix_tokens], embeddings[:, self.num_prefix_tokens :] + table], 1
            ), None
        angles = rope_2d_angles(self.head_dim, ys, xs, self.rope_theta)
        angles = torch.cat([angles.new_zeros(self.num_prefix_tokens, self.head_dim), angles])
        return embeddings, (angles.cos().to(embeddings.dtype), angles.sin().to(embeddings.dtype))

    def resized_position_embeddings(self, grid_size, interpolate_pos_encoding):
        if tuple(grid_size) == tuple(self.grid_size):
            return self.position_embeddings
        if not interpolate_pos_encoding:
            raise ValueError(
                f"the input's patch grid {grid_size[0]}x{grid_size[1]} differs from the model's "
                f"{self.grid_size[0]}x{self.grid_size[1]} (learned position embeddings); pass "
                "`interpolate_pos_encoding=True` to resize them"
            )
        prefix = self.position_embeddings[:, : self.num_positioned_prefix_tokens]
        patches = self.position_embeddings[:, self.num_positioned_prefix_tokens :]
        patches = patches.reshape(1, *self.grid_size, -1).permute(0, 3, 1, 2)
        patches = nn.functional.interpolate(
            patches.float(), size=tuple(grid_size), mode="bicubic", align_corners=False, antialias=self.antialias
        ).to(prefix.dtype)
        return torch.cat([prefix, patches.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


class VitlmVisionEmbeddings(nn.Module):
    """Stem tokens, prefixed by [CLS] (and DeiT's distillation token, and DINOv2's register tokens), with their
    position encoding."""

    def __init__(self, config, stem: nn.Module):
        super().__init__()
        self.stem = stem
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_cls_token else None
        self.distillation_token = (
            nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_distillation_token else None
        )
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, config.num_register_tokens, config.hidden_size))
            if config.num_register_tokens
            else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_mask_token else None
        self.position_encoding = VitlmPositionEncoding(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values, interpolate_pos_encoding=False, keep_indices=None, bool_masked_pos=None):
        """`keep_indices` (batch, kept) selects patch tokens after position encoding, as MAE's encoder sees only the
        visible patches; prefix tokens are always kept. `bool_masked_pos` (batch, patches) replaces the patch
        embeddings it marks by the mask token before position encoding (BEiT)."""
        patch_embeddings = self.stem(pixel_values)
        batch_size, grid_size = patch_embeddings.shape[0], tuple(patch_embeddings.shape[2:])
        patches = patch_embeddings.flatten(2).transpose(1, 2)
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("`bool_masked_pos` needs a model with a mask token (`use_mask_token=True`)")
            if tuple(bool_masked_pos.shape) != tuple(patches.shape[:2]):
                raise ValueError(
                    f"`bool_masked_pos` must have shape {tuple(patches.shape[:2])} (batch, patches), got "
                    f"{tuple(bool_masked_pos.shape)}"
                )
            patches = torch.where(bool_masked_pos[..., None], self.mask_token.to(patches.dtype), patches)
        prefix = [
            t.expand(batch_size, -1, -1)
            for t in (self.cls_token, self.distillation_token, self.register_tokens)
            if t is not None
        ]
        # a view until the concatenation: one copy of the tokens, not two
        embeddings = torch.cat([*prefix, patches], dim=1)
        embeddings, rotary_embeddings = self.position_encoding(embeddings, grid_size, interpolate_pos_encoding)
        if keep_indices is not None:
            num_prefix = embeddings.shape[1] - grid_size[0] * grid_size[1]
            token_indices = torch.cat(
                [
                    torch.arange(num_prefix, device=keep_indices.device).expand(batch_size, -1),
                    keep_indices + num_prefix,
                ],
                dim=1,
            )
            embeddings = embeddings.gather(1, token_indices[..., None].expand(-1, -1, embeddings.shape[-1]))
            if rotary_embeddings is not None:  # per-sample tables, broadcast over heads
                rotary_embeddings = tuple(table[token_indices][:, None] for table in rotary_embeddings)
        return self.dropout(embeddings), rotary_embeddings


class VitlmTokenPooling(nn.Module):
    """PiT's token reducer between stages: the patch tokens, on their grid, go through a depthwise
    (stride + 1)-square conv of that stride (each channel widened to `out_size / in_size` channels), the prefix tokens
    ([CLS], distillation) through a linear map to the new width. Returns the tokens and their new grid."""

    def __init__(self, in_size: int, out_size: int, num_prefix_tokens: int, stride: int = 2):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.conv = nn.Conv2d(
            in_size, out_size, kernel_size=stride + 1, stride=stride, padding=stride // 2, groups=in_size
        )
        self.fc = nn.Linear(in_size, out_size)

    def forward(self, hidden_states, grid_size):
        prefix, patches = hidden_states[:, : self.num_prefix_tokens], hidden_states[:, self.num_prefix_tokens :]
        patches = self.conv(patches.transpose(1, 2).unflatten(2, tuple(grid_size)))
        tokens = torch.cat([self.fc(prefix), patches.flatten(2).transpose(1, 2)], dim=1)
        return tokens, tuple(patches.shape[2:])


__all__ = [
    "VitlmAttention",
    "VitlmBlock",
    "VitlmEncoder",
    "VitlmLayerScale",
    "VitlmPatchEmbeddings",
    "VitlmPatchMerging",
    "VitlmPositionEncoding",
    "VitlmRelativePositionBias",
    "VitlmVisionEmbeddings",
    "VitlmTokenPooling",
    "VitlmWindowBlock",
    "check_pixel_values",
    "to_pair",
]
