"""Command-line options come from the dataclass configs; anything else is refused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from training.classifiers import train_classifier as classify
from training.overrides import OptionError, apply_overrides, train_each


@dataclass
class Example:
    epochs: int = 1
    lr: float = 0.1
    widths: tuple[int, ...] = (1, 2)
    data_dir: Path | None = None
    shuffle: bool = True


def test_values_are_converted_to_the_field_types() -> None:
    (config,) = apply_overrides(
        [
            "--epochs",
            "3",
            "--lr=2e-3",
            "--widths",
            "8,16,32",
            "--data-dir",
            "/x",
            "--shuffle",
            "no",
        ],
        Example(),
    )
    assert config == Example(3, 2e-3, (8, 16, 32), Path("/x"), False)
    (config,) = apply_overrides(["--data-dir", "none"], Example(data_dir=Path("/y")))
    assert config.data_dir is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epoch", "3"], "unknown option --epoch"),
        (["--epochs", "three"], "--epochs expects int"),
        (["--epochs", "1.5"], "--epochs expects int"),
        (["--lr", "fast"], "--lr expects float"),
        (["--shuffle", "maybe"], "expects true or false"),
        (["--epochs"], "needs a value"),
        (["epochs", "3"], "expected --option"),
    ],
)
def test_bad_options_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        apply_overrides(argv, Example())


def test_train_cli_rejects_unknown_options_and_wrong_types(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert classify.main("train", "cnn", ["--dataset", "digits", "--learning-rate", "1"]) == 2
    assert "unknown option --learning-rate" in capsys.readouterr().err
    assert classify.main("train", "mlp", ["--epochs", "ten"]) == 2
    assert "--epochs expects int" in capsys.readouterr().err
    assert classify.main("train", "cnn", ["--widths", "8,x"]) == 2
    # the number of classes follows from the data: not an option
    assert classify.main("train", "logreg", ["--num-classes", "3"]) == 2
    assert "unknown option --num-classes" in capsys.readouterr().err
    assert classify.main("train", "resnet", []) == 2  # no such family
    assert classify.main("evaluate", "cnn", ["--epochs", "1"]) == 2


def test_help_lists_model_and_training_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert classify.main("train", "cnn", ["--help"]) == 0
    out = capsys.readouterr().out
    assert "--widths" in out and "--batch-size" in out and "--num-classes" not in out


def test_train_each_runs_in_order_into_the_folder_and_stops_at_a_failure(tmp_path: Path) -> None:
    calls: list[tuple[str, str, list[str]]] = []

    def main(command: str, family: str, argv: list[str]) -> int:
        calls.append((command, family, argv))
        return 3 if family == "bad" else 0

    runs = [("cnn", ["--epochs", "1"]), ("bad", []), ("mlp", [])]
    assert train_each(main, runs, tmp_path) == 3
    assert calls == [
        ("train", "cnn", ["--epochs", "1", "--models-dir", str(tmp_path)]),
        ("train", "bad", ["--models-dir", str(tmp_path)]),
    ]
    assert runs[0][1] == ["--epochs", "1"]  # the shipped command lines are not changed
    calls.clear()
    assert train_each(main, runs[:1]) == 0 and calls == [("train", "cnn", ["--epochs", "1"])]
