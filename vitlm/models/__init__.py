"""The portable model code: everything here is copied into saved repos and runs with `trust_remote_code=True`.

Modules in this folder import only torch, transformers (and its own dependencies tokenizers and safetensors), numpy,
PIL and each other (single-level relative imports).
"""

from .configuration_vitlm import (
    VitlmDualEncoderConfig,
    VitlmHybridConfig,
    VitlmPiTConfig,
    VitlmSegmenterConfig,
    VitlmSwinConfig,
    VitlmTextConfig,
    VitlmViTConfig,
    VitlmViTMAEConfig,
    VitlmViTSynthesisConfig,
)
from .image_processing_vitlm import VitlmImageProcessor
from .modeling_detection import VitlmDualEncoderForObjectDetection
from .modeling_dual_encoder import VitlmDualEncoderForImageClassification, VitlmDualEncoderModel, VitlmTextModel
from .modeling_hybrid import VitlmHybridForImageClassification, VitlmHybridModel
from .modeling_inpainting import VitlmViTForMaskedImageModeling, VitlmViTMAEModel
from .modeling_pit import VitlmPiTForImageClassification, VitlmPiTModel
from .modeling_segmentation import VitlmDualEncoderForSemanticSegmentation, VitlmViTForSemanticSegmentation
from .modeling_swin import VitlmSwinForImageClassification, VitlmSwinModel
from .modeling_synthesis import VitlmViTForInpaintingSynthesis
from .modeling_vit import VitlmViTForImageClassification, VitlmViTModel
from .processing_vitlm import VitlmDualEncoderProcessor
from .tokenization_vitlm import VitlmCLIPTokenizer

__all__ = [
    "VitlmViTConfig",
    "VitlmViTMAEConfig",
    "VitlmHybridConfig",
    "VitlmTextConfig",
    "VitlmDualEncoderConfig",
    "VitlmViTModel",
    "VitlmViTForImageClassification",
    "VitlmViTMAEModel",
    "VitlmViTForMaskedImageModeling",
    "VitlmHybridModel",
    "VitlmHybridForImageClassification",
    "VitlmSwinConfig",
    "VitlmSwinModel",
    "VitlmSwinForImageClassification",
    "VitlmTextModel",
    "VitlmDualEncoderModel",
    "VitlmDualEncoderForImageClassification",
    "VitlmDualEncoderForObjectDetection",
    "VitlmImageProcessor",
    "VitlmDualEncoderProcessor",
    "VitlmCLIPTokenizer",
    "VitlmPiTConfig",
    "VitlmPiTModel",
    "VitlmPiTForImageClassification",
    "VitlmViTSynthesisConfig",
    "VitlmViTForInpaintingSynthesis",
    "VitlmSegmenterConfig",
    "VitlmViTForSemanticSegmentation",
    "VitlmDualEncoderForSemanticSegmentation",
]
