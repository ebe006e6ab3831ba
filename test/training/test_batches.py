"""The trainer's data path: worker processes hand over exactly the batches the inline loop makes."""
from __future__ import annotations

import pytest
import torch

from chatspot_ros.training.dataset import ConversationEncoder, EncodeStats, PixelCache
from chatspot_ros.training.recipe import TrainConfig
from chatspot_ros.training.sources import SampleMix
from chatspot_ros.training.trainer import BatchStream, batch_rng, make_adamw, make_batch
from chatspot_ros.training.world_source import WorldSource


@pytest.fixture(scope="module")
def pieces():
    """Encoder and preprocessing of the smoke preset (no model: the data path needs none)."""
    from chatspot_ros.referring import ImageGeometry, InstructionBuilder, get_dialect
    from chatspot_ros.referring.conversation import get_conversation
    from chatspot_ros.runtime.vision import ImagePreprocessor
    from chatspot_ros.training import tabletop_model as tm

    shapes = tm.PRESETS["smoke"]
    tokenizer = tm.build_tokenizer(shapes.vocab_size)
    processor = tm.image_processor(shapes)
    config = tm.llava_config(shapes, tokenizer)
    geometry = ImageGeometry.from_checkpoint_configs(processor.to_dict(), config.to_dict())
    builder = InstructionBuilder(get_dialect("chatspot"), geometry)
    encoder = ConversationEncoder(tokenizer, builder, get_conversation("vicuna_v1"), shapes.num_image_tokens, 256)
    return encoder, ImagePreprocessor(processor, False), tokenizer.pad_token_id


def test_worker_processes_make_the_inline_loops_batches(pieces) -> None:
    encoder, preprocess, pad = pieces
    source = WorldSource(seed=1, frames=30, mix=SampleMix(max_turns=2))
    config = TrainConfig(batch_size=4, grad_accum=2, seed=7, workers=2)
    start = 3  # as after a resume at step 3
    inline, inline_stats = [], EncodeStats()
    pixels = PixelCache(preprocess, source.load_image)
    for number in range(start * 2, start * 2 + 6):
        step, micro = divmod(number, 2)
        inline.append(make_batch(source, encoder, pixels, 4, batch_rng(7, step, micro), pad, inline_stats))
    loader = torch.utils.data.DataLoader(BatchStream(source, encoder, preprocess, config, pad, start),
                                         batch_size=None, num_workers=2)
    worker_stats = EncodeStats()
    for (want, want_rej), (got, got_rej, stats) in zip(inline, loader):
        assert set(got) == set(want) and int(got_rej) == want_rej
        for key in want:
            assert torch.equal(want[key], got[key]), key
        worker_stats.kept += stats.kept
        worker_stats.supervised_tokens += stats.supervised_tokens
    assert (worker_stats.kept, worker_stats.supervised_tokens) == (inline_stats.kept, inline_stats.supervised_tokens)
    # a micro-batch is a function of (seed, step, micro) alone
    again, _ = make_batch(source, encoder, pixels, 4, batch_rng(7, 3, 1), pad, EncodeStats())
    assert torch.equal(again["input_ids"], inline[1][0]["input_ids"])
    other, _ = make_batch(source, encoder, pixels, 4, batch_rng(7, 4, 1), pad, EncodeStats())
    assert not torch.equal(other["pixel_values"], inline[1][0]["pixel_values"])


def test_fused_adamw_where_supported_and_a_plain_one_on_request() -> None:
    p = torch.nn.Parameter(torch.ones(3, 3))
    fused_opt, fused = make_adamw([{"params": [p]}], TrainConfig(), torch.device("cpu"))
    assert fused_opt.defaults.get("fused") is fused
    plain, used = make_adamw([{"params": [p]}], TrainConfig(fused=False), torch.device("cpu"))
    assert used is False and not plain.defaults.get("fused")
    with pytest.raises(ValueError, match="workers"):
        TrainConfig(workers=-1)


def test_plain_preset_trains_with_workers_until_its_time_limit_and_refuses_freeze_path(tmp_path, capsys) -> None:
    """The plain recipe's path of scripts/gpu_plain_recipe.sh, on the CPU: no wiring, worker
    processes, --max-minutes stopping before --steps, the checkpoint saved for --resume."""
    from chatspot_ros.cli.train import main

    common = ["run", "--preset", "smoke", "--plain", "--world-seed", "1", "--world-frames", "20", "--batch-size", "2",
              "--max-turns", "1", "--warmup-steps", "1", "--threads", "1"]
    assert main([*common, "--freeze-path", "--out", str(tmp_path / "frozen")]) == 2
    assert "does not carry the wired referring path" in capsys.readouterr().err
    out = tmp_path / "plain"
    assert main([*common, "--steps", "100000", "--max-minutes", "0.02", "--workers", "1", "--log-every", "1",
                 "--out", str(out)]) == 0
    state = torch.load(out / "state" / "state.pt", map_location="cpu", weights_only=False)
    assert 1 <= state["step"] < 100000 and state["config"]["workers"] == 1
    assert (out / "model" / "config.json").exists()
