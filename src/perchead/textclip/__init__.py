"""A small CLIP trained in the project on the synthetic heads and their own captions.

It stands in for CLIP only where no CLIP weights exist (the bundled editing demo): a ``transformers.CLIPModel``
with a caption-vocabulary ``CLIPTokenizer``, trained with CLIP's contrastive loss on synthetic head renders
whose captions come from the generator's parameters (captions.py). It knows only the captions' words
(vocabulary.py refuses others). docs/editing.md, "The caption-trained CLIP stand-in".
"""

from .captions import HeadAttributes, attributes_from_appearance, caption_fits, caption_vocabulary, sample_caption
from .model import TextClipConfig, build_text_clip, build_tokenizer, save_text_clip
from .vocabulary import UnknownWordsError, check_prompts, closed_vocabulary, prompt_words

__all__ = ["HeadAttributes", "TextClipConfig", "UnknownWordsError", "attributes_from_appearance", "build_text_clip",
           "build_tokenizer", "caption_fits", "caption_vocabulary", "check_prompts", "closed_vocabulary",
           "prompt_words", "sample_caption", "save_text_clip"]
