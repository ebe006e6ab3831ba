"""Fixtures of the evaluation tests: a tiny world split, the tiny model, OCR images, a tiny CLIP."""
from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import write_ocr_fixture


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model needs no more, and one thread stays fast on a busy 2-core machine; restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chatspot_ros.world.annotations import write_split

    return write_split(tmp_path_factory.mktemp("world"), seed=901, frames=4)


@pytest.fixture(scope="session")
def chatspot(tiny_model_dir: Path):
    from chatspot_ros.pipeline import ChatSpot
    from chatspot_ros.runtime import RuntimeConfig

    cs = ChatSpot.from_config(RuntimeConfig(model_path=str(tiny_model_dir)))
    yield cs
    cs.close()


@pytest.fixture(scope="session")
def ocr_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ocr_fixture(tmp_path_factory.mktemp("ocr"))


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight CLIPModel (tiny) and a tokenizer, saved like a real CLIP folder."""
    import torch
    from tokenizers import processors
    from transformers import CLIPConfig, CLIPModel

    from chatspot_ros.testing.tiny_model import build_tokenizer

    out = tmp_path_factory.mktemp("clip")
    tokenizer = build_tokenizer(1000, seed=0)
    # Like CLIP's tokenizer, end every text with an end-of-text token the text tower pools at
    # (here "</box>": CLIP's pooling treats eos id 2 as a legacy special case).
    end_of_text = tokenizer.convert_tokens_to_ids("</box>")
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </box>", special_tokens=[("<s>", tokenizer.bos_token_id), ("</box>", end_of_text)])
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=64, eos_token_id=end_of_text,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
