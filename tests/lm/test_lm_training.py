"""A tiny language-model run end to end: train, export both graphs, verify, publish, generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from padded_batching_check import counted_decoder, prompts_of, step_together_and_alone

from bench.decoding import decoder_of, generate
from service.tasks.sampling import SamplingParams
from training.language_models.train_lm import TrainConfig, learning_rate, main

SMALL_TEXT = "\n\n".join(
    f"Chapter {i}. Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy "
    f"disposition, seemed to unite some of the best blessings of existence; and had lived nearly "
    f"twenty-one years in the world with very little to distress or vex her. She was the "
    f"youngest of the two daughters of a most affectionate, indulgent father."
    for i in range(40)
)


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_smoke_run_publishes_a_working_version(tmp_path: Path, family: str) -> None:
    if family == "transformer":  # one text file: the model is named after it
        text = tmp_path / "emma.txt"
        text.write_text(SMALL_TEXT)
    else:  # a folder of text files, each split into train/validation/test on its own
        text = tmp_path / "emma"
        half = SMALL_TEXT.index("Chapter 20.")
        (text / "volume-2").mkdir(parents=True)
        (text / "volume-1.txt").write_text(SMALL_TEXT[:half])
        (text / "volume-2" / "chapters.txt").write_text(SMALL_TEXT[half:])
    models = tmp_path / "models"
    size = ["--n-embd", "16", "--n-layer", "1"]
    size += ["--n-head", "2"] if family == "transformer" else ["--hidden", "24"]
    code = main(
        "train",
        family,
        [
            "--text", str(text), "--models-dir", str(models), "--checkpoint-dir", str(tmp_path),
            "--max-iters", "300", "--eval-interval", "100", "--warmup-iters", "20",
            "--learning-rate", "1e-2", "--min-lr", "1e-3", "--dropout", "0",
            "--block-size", "16", "--batch-size", "8", "--vocab-size", "200",
            "--adaptive-cutoffs", "20,60", *size,
        ],
    )  # fmt: skip
    assert code == 0
    model_dir = models / f"{family}-emma"
    config = json.loads((model_dir / "config.json").read_text())
    card = json.loads((model_dir / "1" / "card.json").read_text())
    assert {p.name for p in (model_dir / "1").iterdir()} >= {
        "model.onnx", "step.onnx", "vocab.json", "card.json", "card.md", "curves.png",
    }  # fmt: skip
    assert config["max_length"] == (16 if family == "transformer" else None)
    assert card["export"]["step_vs_full_max_abs_diff"] <= 1e-4
    # the text repeats: 300 steps are enough to learn most of it (a unigram model scores ~40)
    assert card["metrics"]["test_perplexity"] < 5
    decoder = decoder_of(model_dir)
    written = "".join(
        t.text for t in generate(decoder, "Emma Woodhouse,", 6, SamplingParams(temperature=0))
    )
    assert written.startswith(" handsome")
    if family == "transformer":  # caches of different lengths share a step call (padding mask)
        assert config["step"]["attention_mask"] == "attention_mask"
        assert card["export"]["step_padded_vs_full_max_abs_diff"] <= 1e-4
        decoder, runner = counted_decoder(model_dir)
        prompts = prompts_of(decoder, SMALL_TEXT, [2, 5, 9, 12, 14])  # some restart at 16
        worst, restarts = step_together_and_alone(decoder, runner, prompts)
        assert worst <= 1e-4 and restarts >= 1


def test_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main("train", "lstm", ["--no-such-option", "1"]) == 2
    assert "unknown option" in capsys.readouterr().err
    assert main("train", "lstm", ["--cell", "gru"]) == 2  # the family fixes the cell
    assert main("train", "lstm", ["--hidden", "many"]) == 2
    assert "expects int" in capsys.readouterr().err
    assert main("train", "gru", ["--dataset", "mnist"]) == 2  # not a corpus
    assert "--text" in capsys.readouterr().err
    assert main("train", "mamba", ["--text", "/no/such/book.txt"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main("train", "ngram", ["--vocab-size", "x"]) == 2
    assert main("train", "word2vec", []) == 2


def test_learning_rate_warms_up_then_decays_by_steps_or_time() -> None:
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110, max_minutes=1)
    assert learning_rate(0, cfg) == pytest.approx(0.1)
    assert learning_rate(10, cfg) == pytest.approx(1.0)
    assert learning_rate(60, cfg) == pytest.approx(0.55)
    assert learning_rate(110, cfg) == pytest.approx(0.1)
    assert learning_rate(11, cfg, elapsed=60.0) == pytest.approx(0.1)  # out of time: at the floor
