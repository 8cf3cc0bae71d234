"""Self-supervised pretraining around a vitlm image tower: DINO's self-distillation (`DinoPretraining`, with its
teacher's momentum schedule `TeacherMomentum`).

The modules here train; what they leave behind is an ordinary vitlm model (DINO: the teacher's backbone), which
`saved_model` hands to `vitlm train` for the output folder.
"""

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.utils import ModelOutput


@dataclass
class DinoSettings:
    """DINO's recipe at the scale of a small tower: the head's widths, the temperatures, the center's and the
    teacher's momentum (the latter rising to 1 on a cosine over the run), and the local crops per image."""

    out_dim: int = 1024
    hidden_dim: int = 512
    bottleneck_dim: int = 128
    student_temperature: float = 0.1
    teacher_temperature: float = 0.04
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996
    num_local_crops: int = 4


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


def dino_model(backbone) -> DinoPretraining:
    return DinoPretraining(backbone)


def teacher_backbone(model: DinoPretraining):
    """The tower DINO leaves behind: the teacher's backbone, an ordinary vitlm model."""
    return model.teacher


__all__ = ["DinoHead", "DinoOutput", "DinoPretraining", "DinoSettings", "TeacherMomentum", "dino_model"]
