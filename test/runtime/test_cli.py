"""chatspot-ask, chatspot-bench and chatspot-build-engine, run in-process through their main()."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from chatspot_ros.cli import ask, bench, build_engine


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "frame.png"
    rgb = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_ask_json_one_line_per_region(tiny_model_dir, image_path, capsys) -> None:
    code = ask.main(["--model", str(tiny_model_dir), "--image", str(image_path), "--box", "10,20,100,110",
                     "--point", "50,60", "--box", "0,0,199,119", "--question", "What is this?", "--json",
                     "--max-new-tokens", "6"])
    assert code == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["region"]["kind"] for x in lines] == ["box", "point", "box"]
    for line in lines:
        assert set(line) == {"region", "instruction", "prompt", "answer", "vision_ms", "prefill_ms",
                             "decode_ms", "tokens"}
        assert line["prompt"].count("<image>") == 1 and line["instruction"] in line["prompt"]
        assert 0 < line["tokens"] <= 6


def test_ask_whole_image_and_dialect(chatspot_model_dir, image_path, capsys) -> None:
    assert ask.main(["--model", str(chatspot_model_dir), "--image", str(image_path), "--question", "Describe it.",
                     "--max-new-tokens", "4"]) == 0
    assert "[image]" in capsys.readouterr().out
    assert ask.main(["--model", str(chatspot_model_dir), "--image", str(image_path), "--box", "1,2,30,40",
                     "--question", "What?", "--format", "chatspot", "--json", "--max-new-tokens", "2"]) == 0
    assert "<box>" in json.loads(capsys.readouterr().out)["instruction"]


def test_ask_reads_the_templates_file(tiny_model_dir, image_path, tmp_path, capsys) -> None:
    templates = tmp_path / "instructions.yaml"
    templates.write_text('region_question: "Q: {question} R: {region}"\n')
    assert ask.main(["--model", str(tiny_model_dir), "--image", str(image_path), "--box", "1,2,30,40",
                     "--question", "What?", "--templates", str(templates), "--json", "--max-new-tokens", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["instruction"].startswith("Q: What? R: ")
    templates.write_text('region_question: "no placeholders"\n')
    assert ask.main(["--model", str(tiny_model_dir), "--image", str(image_path), "--question", "x",
                     "--templates", str(templates)]) == 2
    assert "region_question" in capsys.readouterr().err


def test_the_default_templates_are_the_installed_file(monkeypatch) -> None:
    """config/instructions.yaml is live: editing it changes the instructions (no code change)."""
    import yaml

    from chatspot_ros import pipeline

    file = pipeline.default_templates_file()
    assert file is not None and file.read_text() == (pipeline.SOURCE_TEMPLATES_FILE).read_text()
    data = yaml.safe_load(file.read_text())
    assert pipeline.load_templates("").region_question == data["region_question"]


def test_ask_errors(tiny_model_dir, image_path, tmp_path, capsys) -> None:
    assert ask.main(["--model", str(tmp_path / "none"), "--image", str(image_path), "--question", "x"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert ask.main(["--model", str(tiny_model_dir), "--image", str(tmp_path / "no.png"), "--question", "x"]) == 2
    with pytest.raises(SystemExit):
        ask.main(["--model", str(tiny_model_dir), "--image", str(image_path), "--question", "x", "--box", "1,2,3"])


def test_bench_reports_identical_outputs(tiny_model_dir, capsys) -> None:
    code = bench.main(["--model", str(tiny_model_dir), "--k", "1", "3", "--repeats", "1", "--max-new-tokens", "4",
                       "--json", "--frame-size", "160x120"])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [r["k"] for r in rows] == [1, 3]
    for row in rows:
        assert row["identical"] is True
        assert {"model", "k", "naive_ms", "runtime_ms", "speedup", "ceiling", "identical"} <= set(row)
        assert (row["rows_identical"], row["rows_near_tie"], row["rows_diverged"]) == (row["k"], 0, 0)
        assert row["ceiling"] >= 1.0 and row["prefix_tokens"] > 64


@pytest.mark.parametrize("dtype", ["bfloat16"])  # the runtime refuses float16 on the CPU
def test_bench_judges_half_precision_with_the_fidelity_rule(tiny_model_dir, capsys, dtype) -> None:
    """In half precision the exit status follows the rule: every region classified, none really diverged."""
    code = bench.main(["--model", str(tiny_model_dir), "--k", "4", "--repeats", "1", "--max-new-tokens", "6",
                       "--json", "--frame-size", "160x120", "--dtype", dtype, "--decoder", "static"])
    (row,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert row["rows_identical"] + row["rows_near_tie"] + row["rows_diverged"] == 4
    assert row["rows_diverged"] == 0 and code == 0
    assert 0 <= row["max_logit_diff_eps"] <= 16.0 and row["dtype"] == dtype


def test_bench_runs_the_runtime_column_on_the_chosen_decoder(tiny_model_dir, capsys) -> None:
    code = bench.main(["--model", str(tiny_model_dir), "--k", "3", "--repeats", "1", "--max-new-tokens", "4",
                       "--frame-size", "160x120", "--decoder", "static"])
    out = capsys.readouterr().out
    assert code == 0
    assert "runtime decoder static (--decoder static)" in out
    (row,) = [line.split() for line in out.splitlines() if line.split()[1:2] == ["3"]]
    assert row[6] == "3/0/0"  # identical / near-tie / diverged regions against naive generate()


def test_bench_compares_the_decode_loops(tiny_model_dir, capsys) -> None:
    code = bench.main(["--model", str(tiny_model_dir), "--k", "1", "3", "--repeats", "1", "--max-new-tokens", "4",
                       "--frame-size", "160x120", "--decoders", "dynamic", "static"])
    out = capsys.readouterr().out
    assert code == 0
    table = [line.split() for line in out.splitlines() if line.startswith(("dynamic ", "static "))]
    assert [(row[0], row[1], row[6]) for row in table] == [
        ("dynamic", "1", "1/0/0"), ("static", "1", "1/0/0"), ("dynamic", "3", "3/0/0"), ("static", "3", "3/0/0")]
    (kv_line,) = [line for line in out.splitlines() if line.startswith("# static, K=3: KV")]
    assert "the dynamic loop holds" in kv_line


def test_build_engine_onnx_only(tiny_model_dir, engine_dir, capsys) -> None:
    assert build_engine.main(["--model", str(tiny_model_dir), "--engine-dir", str(engine_dir), "--onnx-only",
                              "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["onnx"].endswith(".onnx") and len(out["onnx_hash"]) == 64


def test_build_engine_without_tensorrt_fails_clearly(tiny_model_dir, engine_dir, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert build_engine.main(["--model", str(tiny_model_dir), "--engine-dir", str(engine_dir), "--device", "cpu"]) == 2
    # cli/errors.py (#25) refuses the CPU before TensorRT is imported
    assert "a TensorRT engine is built for a CUDA GPU" in capsys.readouterr().err


def _python_m(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


def test_ask_runs_with_python_m(tiny_model_dir, image_path) -> None:
    """The module's ``__main__`` path, in its own process: exit code and output of a real answer."""
    done = _python_m("chatspot_ros.cli.ask", "--model", str(tiny_model_dir), "--image", str(image_path),
                     "--point", "20,30", "--question", "What is this?", "--json", "--max-new-tokens", "3")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert json.loads(line)["region"] == {"kind": "point", "points": [[20.0, 30.0]]}
    refused = _python_m("chatspot_ros.cli.ask", "--model", str(image_path.parent / "none"),
                        "--image", str(image_path), "--question", "x")
    assert refused.returncode == 2 and "no such folder" in refused.stderr


@pytest.mark.parametrize("module, prog", [("chatspot_ros.cli.bench", "chatspot-bench"),
                                          ("chatspot_ros.cli.build_engine", "chatspot-build-engine")])
def test_bench_and_build_engine_run_with_python_m(module, prog) -> None:
    done = _python_m(module, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {prog}")
    wrong = _python_m(module, "--model", "m", "--no-such-option")
    assert wrong.returncode == 2 and "unrecognized arguments: --no-such-option" in wrong.stderr
