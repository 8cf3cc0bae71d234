"""Self-supervised pretraining around a vitlm image tower: DINO's self-distillation (`DinoPretraining`, with its
teacher's momentum schedule `TeacherMomentum`) and BEiT's masked image modelling (`BeitPretraining`), which predicts
the visual tokens of masked patches from a k-means tokenizer fitted on the training images (`KMeansVisualTokenizer`).

The modules here train; what they leave behind is an ordinary vitlm model (DINO: the teacher's backbone, BEiT: the
backbone, with its visual tokenizer in a subfolder), which `saved_models` hands to `vitlm train` for the output
folder.
"""

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from transformers import TrainerCallback
from transformers.utils import ModelOutput


class RecipeSettings:
    """What DINO's and BEiT's settings share: built from a dict (`--recipe-settings`) whose keys must be fields and
    whose values are checked against `RULES` (field -> (valid, what it must be)) at once, before any data is drawn."""

    RULES: ClassVar[dict] = {}

    @classmethod
    def from_dict(cls, values: dict | None):
        values = dict(values or {})
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown recipe settings {unknown}; {cls.__name__} has {names}")
        defaults = cls()
        for name, value in values.items():
            if isinstance(getattr(defaults, name), tuple) and isinstance(value, list):
                values[name] = value = tuple(value)  # JSON (`--recipe-settings`) spells a pair as a list
            valid, expected = cls.RULES[name]
            if not _matches(value, getattr(defaults, name)) or not valid(value):
                raise ValueError(f"recipe setting {name} must be {expected}, got {value!r}")
        return cls(**values)


def _matches(value, default) -> bool:
    """`value` has `default`'s type (an int passes for a float; a bool never for a number; pairs item by item)."""
    if isinstance(default, tuple):
        return isinstance(value, tuple) and len(value) == len(default) and all(map(_matches, value, default))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if isinstance(default, int) else math.isfinite(value)


def _positive(value) -> bool:
    return value > 0


def _fraction(value) -> bool:
    return 0 <= value < 1


def _scale(pair) -> bool:
    return 0 < pair[0] <= pair[1] <= 1


@dataclass
class DinoSettings(RecipeSettings):
    """DINO's recipe at the scale of a small tower: the head's widths, the temperatures, the center's and the
    teacher's momentum (the latter rising to 1 on a cosine over the run), the local crops per image, the crops' scales
    (shares of the image's area) and their colour augmentation (hue jitter, probability of turning grey)."""

    out_dim: int = 1024
    hidden_dim: int = 512
    bottleneck_dim: int = 128
    student_temperature: float = 0.1
    teacher_temperature: float = 0.04
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996
    num_local_crops: int = 4
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    hue_jitter: float = 0.1
    grayscale_probability: float = 0.2

    RULES = {
        "out_dim": (_positive, "an integer > 0"),
        "hidden_dim": (_positive, "an integer > 0"),
        "bottleneck_dim": (_positive, "an integer > 0"),
        "student_temperature": (_positive, "a number > 0"),
        "teacher_temperature": (_positive, "a number > 0"),
        "center_momentum": (_fraction, "a number in [0, 1)"),
        "teacher_momentum": (lambda value: 0 <= value <= 1, "a number in [0, 1]"),
        "num_local_crops": (lambda value: value >= 0, "an integer >= 0"),
        "global_crop_scale": (_scale, "a pair 0 < low <= high <= 1"),
        "local_crop_scale": (_scale, "a pair 0 < low <= high <= 1"),
        "hue_jitter": (lambda value: 0 <= value <= 0.5, "a number in [0, 0.5]"),
        "grayscale_probability": (lambda value: 0 <= value <= 1, "a number in [0, 1]"),
    }


class DinoHead(nn.Module):
    """DINO's projection head: a 3-layer MLP to a bottleneck, L2-normalized, then a linear layer of unit-norm rows
    (DINO's weight-normalized last layer with its norm fixed at 1) to `out_dim` prototypes."""

    def __init__(self, in_dim: int, settings: DinoSettings):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, settings.hidden_dim),
            nn.GELU(),
            nn.Linear(settings.hidden_dim, settings.hidden_dim),
            nn.GELU(),
            nn.Linear(settings.hidden_dim, settings.bottleneck_dim),
        )
        self.prototypes = nn.Parameter(torch.empty(settings.out_dim, settings.bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def forward(self, features):
        bottleneck = nn.functional.normalize(self.mlp(features), dim=-1)
        return nn.functional.linear(bottleneck, nn.functional.normalize(self.prototypes, dim=-1))


@dataclass
class DinoOutput(ModelOutput):
    loss: torch.Tensor | None = None
    teacher_entropy: torch.Tensor | None = None


class DinoPretraining(nn.Module):
    """Student and teacher copies of an image tower, each with a `DinoHead`. The student sees every crop, the teacher
    the global ones; the loss is the cross-entropy between the teacher's centered, sharpened distribution of one
    global crop and the student's of every other crop. The teacher is not trained by gradients: `update_teacher`
    moves it towards the student (an exponential moving average), and the center follows the teacher's outputs
    (averaged over every process of a distributed run, so that it is the same in each)."""

    def __init__(self, backbone, settings: DinoSettings | None = None):
        super().__init__()
        self.settings = settings or DinoSettings()
        # what Trainer, the task table and the model card read of the model: the tower's
        self.config, self.pipeline_tag = backbone.config, backbone.pipeline_tag
        self.student = backbone
        self.student_head = DinoHead(backbone.pooled_size, self.settings)
        self.teacher = copy.deepcopy(backbone)
        self.teacher_head = copy.deepcopy(self.student_head)
        for parameter in [*self.teacher.parameters(), *self.teacher_head.parameters()]:
            parameter.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, self.settings.out_dim))

    def forward(self, global_crops: torch.Tensor, local_crops: torch.Tensor | None = None) -> DinoOutput:
        batch_size = global_crops.shape[0]
        views = global_crops.flatten(0, 1)
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher(views).pooler_output)
        student = [self.student_head(self.student(views).pooler_output).unflatten(0, (batch_size, -1))]
        if local_crops is not None:
            local = self.student(local_crops.flatten(0, 1), interpolate_pos_encoding=True).pooler_output
            student.append(self.student_head(local).unflatten(0, (batch_size, -1)))
        student = torch.cat(student, dim=1) / self.settings.student_temperature
        targets = nn.functional.softmax((teacher - self.center) / self.settings.teacher_temperature, dim=-1)
        targets = targets.unflatten(0, (batch_size, -1))
        log_probs = nn.functional.log_softmax(student, dim=-1)
        # every (teacher global crop, student crop) pair but a crop with itself
        cross = -torch.einsum("btk,bsk->bts", targets, log_probs)
        pairs = ~torch.eye(targets.shape[1], student.shape[1], dtype=torch.bool, device=cross.device)
        loss = cross[:, pairs].mean()
        if self.training:
            self.update_center(teacher)
        entropy = -(targets * targets.clamp_min(1e-12).log()).sum(-1).mean()
        return DinoOutput(loss=loss, teacher_entropy=entropy.detach())

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor):
        total = torch.cat([teacher.sum(0), teacher.new_tensor([teacher.shape[0]])])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        batch_center = (total[:-1] / total[-1])[None]
        momentum = self.settings.center_momentum
        self.center.mul_(momentum).add_(batch_center, alpha=1 - momentum)

    @torch.no_grad()
    def update_teacher(self, momentum: float):
        for student, teacher in (
            (self.student.parameters(), self.teacher.parameters()),
            (self.student_head.parameters(), self.teacher_head.parameters()),
        ):
            for source, target in zip(student, teacher, strict=True):
                target.mul_(momentum).add_(source.detach(), alpha=1 - momentum)


class TeacherMomentum(TrainerCallback):
    """After every optimizer step, the teacher follows the student with DINO's momentum, which rises from
    `settings.teacher_momentum` to 1 on a cosine over the run's steps."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        start = model.settings.teacher_momentum
        progress = state.global_step / max(state.max_steps, 1)
        model.update_teacher(1 - (1 - start) * (math.cos(math.pi * progress) + 1) / 2)


def dino_model(backbone, train_set=None, image_processor=None, settings: DinoSettings | None = None):
    return DinoPretraining(backbone, settings)


def dino_saved_models(model: DinoPretraining) -> dict:
    """What DINO leaves behind: the teacher's backbone, an ordinary vitlm model, in the output folder itself."""
    return {"": model.teacher}


# ---- BEiT: masked image modelling of discrete visual tokens


@dataclass
class BeitSettings(RecipeSettings):
    """The visual tokenizer's codebook size and k-means fit (iterations, patches sampled from the training images),
    and the fraction of patches masked in blocks."""

    codebook_size: int = 64
    kmeans_iterations: int = 20
    max_patches: int = 20_000
    mask_ratio: float = 0.4

    RULES = {
        "codebook_size": (lambda value: value >= 2, "an integer >= 2"),
        "kmeans_iterations": (lambda value: value >= 0, "an integer >= 0"),
        "max_patches": (_positive, "an integer > 0"),
        "mask_ratio": (lambda value: 0 < value < 1, "a number in (0, 1)"),
    }


def normalized_patches(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(batch, patches, patch_size^2 * channels) patches, row-major, each standardized to zero mean and unit variance:
    the tokens then encode a patch's structure (edges, corners) rather than its colour."""
    patches = pixel_values.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)
    patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
    return (patches - patches.mean(-1, keepdim=True)) / (patches.std(-1, keepdim=True) + 1e-6)


class KMeansVisualTokenizer(nn.Module, PyTorchModelHubMixin):
    """BEiT's visual tokenizer, vitlm's way: each patch (standardized, see `normalized_patches`) becomes the index of
    its nearest codeword. The codebook is fitted by k-means on the training images (`fit`); the tokenizer saves and
    loads as a model of its own (`save_pretrained` / `from_pretrained`: config.json + model.safetensors)."""

    def __init__(self, patch_size: int = 16, num_channels: int = 3, codebook_size: int = 64):
        super().__init__()
        self.patch_size = patch_size
        self.register_buffer("codebook", torch.zeros(codebook_size, patch_size * patch_size * num_channels))

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(batch, patches) token ids."""
        patches = normalized_patches(pixel_values.float(), self.patch_size)
        return torch.cdist(patches, self.codebook[None].expand(patches.shape[0], -1, -1)).argmin(-1)

    @torch.no_grad()
    def fit(self, pixel_values: torch.Tensor, iterations: int = 20, max_patches: int = 20_000, seed: int = 0):
        """k-means++ seeding, then Lloyd's iterations, on up to `max_patches` patches of `pixel_values`; the draws come
        from a generator of their own, so the codebook is a function of the images and `seed`."""
        generator = torch.Generator().manual_seed(seed)
        patches = normalized_patches(pixel_values.float(), self.patch_size).flatten(0, 1)
        self.codebook.copy_(kmeans(patches, self.codebook.shape[0], iterations, max_patches, generator))
        return self


@torch.no_grad()
def kmeans(points: torch.Tensor, size: int, iterations: int, max_points: int, generator: torch.Generator):
    """`size` centers of up to `max_points` of the (count, dim) `points` drawn at random: k-means++ seeding, then
    Lloyd's iterations, every draw from `generator`."""
    points = points[torch.randperm(len(points), generator=generator)[:max_points]]
    centers = [points[torch.randint(len(points), (), generator=generator)]]
    distances = (points - centers[0]).square().sum(-1)
    for _ in range(1, size):
        centers.append(points[torch.multinomial(distances + 1e-12, 1, generator=generator)[0]])
        distances = torch.minimum(distances, (points - centers[-1]).square().sum(-1))
    centers = torch.stack(centers)
    for _ in range(iterations):
        assignment = torch.cdist(points, centers).argmin(-1)
        sums = torch.zeros_like(centers).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=size)[:, None]
        centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers)  # an empty cluster keeps its center
    return centers


@dataclass
class BeitOutput(ModelOutput):
    loss: torch.Tensor | None = None
    accuracy: torch.Tensor | None = None


class BeitPretraining(nn.Module):
    """An image tower with a mask token (`use_mask_token`) and a linear head over its final tokens predicting, at every
    masked patch, the visual token the frozen tokenizer gives the unmasked image (cross-entropy over the codebook,
    averaged per image, then over the images)."""

    def __init__(self, backbone, tokenizer: KMeansVisualTokenizer, settings: BeitSettings | None = None):
        super().__init__()
        self.settings = settings or BeitSettings()  # the masking collator reads the mask ratio here
        self.config, self.pipeline_tag = backbone.config, backbone.pipeline_tag
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.head = nn.Linear(backbone.config.hidden_size, tokenizer.codebook.shape[0])
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor) -> BeitOutput:
        targets = self.tokenizer(pixel_values)[bool_masked_pos]
        hidden = self.backbone(pixel_values, bool_masked_pos=bool_masked_pos).last_hidden_state
        logits = self.head(hidden[:, self.config.num_prefix_tokens :][bool_masked_pos])
        # each image's mean over its masked patches, then the images' mean: block masks cover a varying number of
        # patches, and a mean per image keeps the loss of a batch split over processes the whole batch's
        per_patch = nn.functional.cross_entropy(logits, targets, reduction="none")
        image = bool_masked_pos.nonzero()[:, 0]
        counts = bool_masked_pos.sum(1).clamp_min(1)
        loss = (per_patch.new_zeros(len(counts)).index_add(0, image, per_patch) / counts).mean()
        return BeitOutput(loss=loss, accuracy=(logits.argmax(-1) == targets).float().mean().detach())


def beit_model(backbone, train_set, image_processor, settings: BeitSettings | None = None) -> BeitPretraining:
    """The BEiT module around `backbone`, its tokenizer fitted on `train_set`'s images (the processor's evaluation
    view) with a seed of its own, so that a resumed run fits the same one before loading its checkpoint."""
    from .tasks import image_column
    from .transforms import pixel_values

    settings = settings or BeitSettings()
    config = backbone.config
    images = torch.stack(pixel_values(train_set[image_column(train_set)], image_processor))
    # one token per patch of the tower's grid: pixels per patch side is the stem's stride (a hybrid's CNN included)
    tokenizer = KMeansVisualTokenizer(config.stem_stride, config.num_channels, settings.codebook_size)
    tokenizer.fit(images, settings.kmeans_iterations, settings.max_patches)
    return BeitPretraining(backbone, tokenizer, settings)


# ---- synthesis inpainting: the model's codebook of pixel squares


@dataclass
class SynthesisSettings(RecipeSettings):
    """The k-means fit of a synthesis inpainting model's codebook: iterations, and pixel squares sampled from the
    training images."""

    kmeans_iterations: int = 20
    max_squares: int = 50_000

    RULES = {
        "kmeans_iterations": (lambda value: value >= 0, "an integer >= 0"),
        "max_squares": (_positive, "an integer > 0"),
    }


def synthesis_model(model, train_set, image_processor, settings: SynthesisSettings | None = None):
    """`model` (a `VitlmViTForInpaintingSynthesis`) with its codebook fitted by k-means on the pixel squares of
    `train_set`'s images (the processor's evaluation view), in its normalized pixel space, unless it already holds one
    (a trained checkpoint, which fine-tuning keeps). The fit has a seed of its own, so that a resumed run fits the
    same codebook before loading its checkpoint."""
    from .tasks import image_column
    from .transforms import pixel_values

    settings = settings or SynthesisSettings()
    if model.codebook.any():
        return model
    images = torch.stack(pixel_values(train_set[image_column(train_set)], image_processor))
    squares = model.pixel_squares(images).flatten(0, 2)
    generator = torch.Generator().manual_seed(0)
    centers = kmeans(squares, model.config.codebook_size, settings.kmeans_iterations, settings.max_squares, generator)
    model.codebook.copy_(centers)
    return model


def beit_saved_models(model: BeitPretraining) -> dict:
    """What BEiT leaves behind: the backbone in the output folder, its visual tokenizer in `visual_tokenizer/`."""
    return {"": model.backbone, "visual_tokenizer": model.tokenizer}


__all__ = [
    "BeitPretraining",
    "BeitSettings",
    "DinoHead",
    "DinoOutput",
    "DinoPretraining",
    "DinoSettings",
    "KMeansVisualTokenizer",
    "SynthesisSettings",
    "RecipeSettings",
    "TeacherMomentum",
    "beit_model",
    "kmeans",
    "synthesis_model",
    "dino_model",
]
