"""The LLaVA-family token strings and image statistics shared by every part (one place).

The runtime finds the image token in a checkpoint's tokenizer by this string, the conversation
templates place it, the training code expands it to the image's token count, and the model
factory (:mod:`chatspot_ros.modelling`) builds tokenizers with these special tokens.
"""
from __future__ import annotations

IMAGE_TOKEN = "<image>"
BOX_START = "<box>"
BOX_END = "</box>"
BOX_TOKENS: tuple[str, str] = (BOX_START, BOX_END)
UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<unk>", "<s>", "</s>", "<pad>"
# In this order they take the first ids of every tokenizer the project trains.
SPECIAL_TOKENS: tuple[str, ...] = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN, BOX_START, BOX_END)

# CLIP's pixel normalization (OpenAI CLIP, LLaVA-1.5 and ChatSpot use it).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
