"""The dual encoder's processor: the image processor and CLIP's BPE tokenizer behind one call."""

from transformers.processing_utils import ProcessorMixin

from .image_processing_vitlm import drop_auto_map


class VitlmDualEncoderProcessor(ProcessorMixin):
    """`processor(images=..., text=...)` returns `pixel_values` from the image processor and `input_ids` /
    `attention_mask` from the tokenizer; both round-trip through `save_pretrained` (`to_dict()` of the reloaded
    processor equals the saved one's). transformers finds the two from `__init__`'s argument names, through the Auto
    classes (as for its own CLIPProcessor)."""

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            drop_auto_map(self, self.image_processor)

    def post_process_object_detection(self, outputs, threshold=0.1, target_sizes=None, nms_threshold=None):
        """See `VitlmImageProcessor.post_process_object_detection`."""
        return self.image_processor.post_process_object_detection(outputs, threshold, target_sizes, nms_threshold)


__all__ = ["VitlmDualEncoderProcessor"]
