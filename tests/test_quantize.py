"""`tandem models quantize`: mlx-lm's converter, then a perplexity check that warns or refuses."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from local.quantize import QuantizeError, quantize
from scripts.testmodels import ModelSet
from tui.commands.models import main

pytestmark = pytest.mark.mlx

NUMBER = r"([0-9.]+)"


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_models: ModelSet) -> Path:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / "data" / "models"
    shutil.copytree(test_models.target, folder / "target")
    return folder


def _perplexities(out: str) -> tuple[float, float, float]:
    before = float(re.search(rf"perplexity before: {NUMBER}", out).group(1))  # type: ignore[union-attr]
    found = re.search(rf"perplexity after: +{NUMBER} \(([+-][0-9.]+)%\)", out)
    assert found is not None, out
    return before, float(found.group(1)), float(found.group(2)) / 100


def test_quantize_prints_the_perplexity_change_and_refuses_past_the_limit(
    models_dir: Path, test_models: ModelSet, capsys: pytest.CaptureFixture[str]
) -> None:
    heldout = str(test_models.heldout)
    assert main(["quantize", "target", "--bits", "4", "--group-size", "64",
                 "--heldout", heldout]) == 0
    out = capsys.readouterr().out
    before, after, change = _perplexities(out)
    assert before > 1 and after > 1
    assert change == pytest.approx(after / before - 1, abs=0.001)
    saved = models_dir / "target-4bit"
    assert f"saved to {saved}" in out
    assert '"bits": 4' in (saved / "config.json").read_text()

    # A limit just under the change this machine measured (which may even be a gain: rounding
    # can lower a tiny model's perplexity): refused, nothing kept.
    limit = f"{change - 0.01:.4f}"
    code = main(["quantize", "target", "--bits", "4", "--heldout", heldout,
                 "--out", str(models_dir / "strict"), "--max-loss", limit])
    captured = capsys.readouterr()
    assert code == 1
    assert "was not kept" in captured.err and "Traceback" not in captured.err
    assert _perplexities(captured.out)[2] == pytest.approx(change, abs=0.001)
    assert not (models_dir / "strict").exists()
    assert not any(p.name.endswith(".partial") for p in models_dir.iterdir())


def test_a_mixed_recipe_quantizes_sensitive_layers_with_more_bits(
    models_dir: Path, test_models: ModelSet
) -> None:
    result = quantize(models_dir / "target", models_dir / "mixed", bits=3, recipe="mixed_3_6",
                      heldout=test_models.heldout.read_text(), force=True)
    assert result.output.is_dir() and result.recipe == "mixed_3_6"
    assert result.size_after < result.size_before


def test_a_group_size_that_does_not_divide_the_width_is_refused_before_converting(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 96, "intermediate_size": 256}')
    with pytest.raises(QuantizeError, match="does not divide the model's hidden_size"):
        quantize(tmp_path, tmp_path / "out", bits=4, group_size=64)
