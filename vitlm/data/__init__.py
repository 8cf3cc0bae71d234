"""Data sets for training and testing vitlm models: the synthetic shapes world (`vitlm.data.shapes`)."""

from .shapes import CATEGORIES, COLOURS, HELD_OUT, SHAPES, SPLITS, caption_variants, generate, to_imagefolder

__all__ = ["CATEGORIES", "COLOURS", "HELD_OUT", "SHAPES", "SPLITS", "caption_variants", "generate", "to_imagefolder"]
