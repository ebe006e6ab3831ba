"""Helpers of the runtime tests: prompts, frames, and the baseline the runtime must match
(LlavaProcessor + plain per-prompt HF generate())."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

VICUNA = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions. USER: <image>\n{question} ASSISTANT:"
)
QUESTIONS = (
    "What is in the region <box>[0.12, 0.34, 0.56, 0.78]</box>?",
    "Describe the image.",
    "What color is the car at <box>[0.5, 0.5, 0.9, 0.9]</box>? Tell me in detail please.",
    "hi",
    "What can you see in this region? <box>[0.01, 0.2, 0.3, 0.4]</box>",
    "What text can you see in this region? <box>[0.333, 0.1, 0.9, 0.75]</box>",
)


def prompt(question: str) -> str:
    return VICUNA.format(question=question)


def make_frame(seed: int, height: int = 90, width: int = 160) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def processor_for(model_dir: Path):
    from chatspot_ros.runtime.compat import load_processor

    return load_processor(Path(model_dir))


@torch.inference_mode()
def hf_generate(runtime, processor, frame: np.ndarray, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy tokens of HF generate() for one prompt (eos excluded), inputs made by the processor."""
    image = runtime.preprocess.expand_to_square(frame) if runtime.preprocess.pad_to_square else frame
    inputs = processor(images=[image], text=[prompt], return_tensors="pt", input_data_format="channels_last")
    out = runtime.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    eos = runtime.model.generation_config.eos_token_id
    if new and new[-1] == eos:
        new = new[:-1]
    return new
