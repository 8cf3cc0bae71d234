"""The dual encoder's processor: the image processor and CLIP's BPE tokenizer behind one call."""

from transformers.processing_utils import ProcessorMixin


class VitlmDualEncoderProcessor(ProcessorMixin):
    """`processor(images=..., text=...)` returns `pixel_values` from the image processor and `input_ids` /
    `attention_mask` from the tokenizer; both round-trip through `save_pretrained`. transformers finds the two from
    `__init__`'s argument names, through the Auto classes (as for its own CLIPProcessor)."""

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)

    def post_process_object_detection(self, outputs, threshold=0.1, target_sizes=None, nms_threshold=None):
        """See `VitlmImageProcessor.post_process_object_detection`."""
        return self.image_processor.post_process_object_detection(outputs, threshold, target_sizes, nms_threshold)


__all__ = ["VitlmDualEncoderProcessor"]
