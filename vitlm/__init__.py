"""vitlm: Vision Transformers, hybrid CNN+ViT models and CLIP-style dual encoders for the Hugging Face stack.

`import vitlm` registers every model family with transformers' Auto classes, and marks each class for remote code
so that `save_pretrained` writes `auto_map` and the modeling files: saved repos then load with
`trust_remote_code=True` where vitlm is not installed.
"""

import inspect

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
    AutoModelForSemanticSegmentation,
    AutoModelForZeroShotImageClassification,
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
    AutoTokenizer,
    AutoVideoProcessor,
)
from transformers.utils import is_torchvision_available

from . import models
from .convert import load
from .deploy import quantize
from .models import (
    VitlmCLIPTokenizer,
    VitlmDualEncoderConfig,
    VitlmDualEncoderForImageClassification,
    VitlmDualEncoderForObjectDetection,
    VitlmDualEncoderForSemanticSegmentation,
    VitlmDualEncoderModel,
    VitlmDualEncoderProcessor,
    VitlmHybridConfig,
    VitlmHybridForImageClassification,
    VitlmHybridModel,
    VitlmImageProcessor,
    VitlmPiTConfig,
    VitlmPiTForImageClassification,
    VitlmPiTModel,
    VitlmSegmenterConfig,
    VitlmSwinConfig,
    VitlmSwinForImageClassification,
    VitlmSwinModel,
    VitlmTextConfig,
    VitlmTextModel,
    VitlmViTConfig,
    VitlmViTForImageClassification,
    VitlmViTForInpaintingSynthesis,
    VitlmViTForMaskedImageModeling,
    VitlmViTForSemanticSegmentation,
    VitlmViTMAEConfig,
    VitlmViTMAEModel,
    VitlmViTModel,
    VitlmViTSynthesisConfig,
)

__version__ = "0.1.0"

_AUTO_MODELS = [
    (AutoModel, VitlmViTConfig, VitlmViTModel),
    (AutoModelForImageClassification, VitlmViTConfig, VitlmViTForImageClassification),
    (AutoModel, VitlmViTMAEConfig, VitlmViTMAEModel),
    (AutoModelForMaskedImageModeling, VitlmViTMAEConfig, VitlmViTForMaskedImageModeling),
    (AutoModel, VitlmHybridConfig, VitlmHybridModel),
    (AutoModelForImageClassification, VitlmHybridConfig, VitlmHybridForImageClassification),
    (AutoModel, VitlmSwinConfig, VitlmSwinModel),
    (AutoModelForImageClassification, VitlmSwinConfig, VitlmSwinForImageClassification),
    (AutoModel, VitlmTextConfig, VitlmTextModel),
    (AutoModel, VitlmDualEncoderConfig, VitlmDualEncoderModel),
    (AutoModelForZeroShotImageClassification, VitlmDualEncoderConfig, VitlmDualEncoderModel),
    (AutoModelForImageClassification, VitlmDualEncoderConfig, VitlmDualEncoderForImageClassification),
    (AutoModelForZeroShotObjectDetection, VitlmDualEncoderConfig, VitlmDualEncoderForObjectDetection),
    (AutoModel, VitlmPiTConfig, VitlmPiTModel),
    (AutoModelForImageClassification, VitlmPiTConfig, VitlmPiTForImageClassification),
    (AutoModelForMaskedImageModeling, VitlmViTSynthesisConfig, VitlmViTForInpaintingSynthesis),
    (AutoModelForSemanticSegmentation, VitlmSegmenterConfig, VitlmViTForSemanticSegmentation),
    (AutoModelForSemanticSegmentation, VitlmDualEncoderConfig, VitlmDualEncoderForSemanticSegmentation),
]


def _register():
    # every family is an `_AUTO_MODELS` entry: its config is registered from there
    config_classes = list(dict.fromkeys(config_class for _, config_class, _ in _AUTO_MODELS))
    for config_class in config_classes:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        config_class.register_for_auto_class()
    for auto_class, config_class, model_class in _AUTO_MODELS:
        auto_class.register(config_class, model_class, exist_ok=True)
        # A class answers to several Auto classes; `_remote_auto_map` lists them all when saving.
        if model_class._auto_class is None:
            model_class.register_for_auto_class(auto_class.__name__)
    if "image_processor_classes" in inspect.signature(AutoImageProcessor.register).parameters:
        # newer transformers pick a backend per call (torchvision first); one PIL-based class serves both
        backends = {"pil": VitlmImageProcessor, "torchvision": VitlmImageProcessor}
        image_processors = {"image_processor_classes": backends}
    else:
        image_processors = {"slow_image_processor_class": VitlmImageProcessor}
    for config_class in (config for config in config_classes if config is not VitlmTextConfig):  # all take images
        AutoImageProcessor.register(config_class, **image_processors, exist_ok=True)
        # without torchvision (not a dependency) transformers has no video processors: AutoVideoProcessor is then a
        # placeholder that raises on any use, and nothing probes it
        if (
            is_torchvision_available()
            and "video_processor_classes" in inspect.signature(AutoVideoProcessor.register).parameters
        ):
            # Known to have no video processor (no backend). Newer pipelines probe `AutoVideoProcessor` for every
            # image model, and it guesses a remote `VitlmVideoProcessor` from the image processor's `auto_map`: unless
            # the model type is registered there, that guess asks on the terminal whether to run custom code.
            AutoVideoProcessor.register(config_class, video_processor_classes={}, exist_ok=True)
    VitlmImageProcessor.register_for_auto_class("AutoImageProcessor")
    AutoTokenizer.register(VitlmDualEncoderConfig, tokenizer_class=VitlmCLIPTokenizer, exist_ok=True)
    VitlmCLIPTokenizer.register_for_auto_class("AutoTokenizer")
    AutoProcessor.register(VitlmDualEncoderConfig, VitlmDualEncoderProcessor, exist_ok=True)
    VitlmDualEncoderProcessor.register_for_auto_class("AutoProcessor")


_register()

__all__ = ["load", "quantize", *models.__all__]
