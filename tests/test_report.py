"""`python -m harness report`: the toy's rows reproduce torchtitan's figures; table, JSON and plot."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from harness import report, sweep
from harness.__main__ import main
from harness.models.toy import FLOP_UNIT, REFERENCE
from harness.modes import MODES
from harness.units import MIB

pytestmark = pytest.mark.tiers("cpu")


def _row(mode: str, recompute: float, act: int) -> sweep.Row:
    return sweep.Row("m", mode, 1, 1, recompute, act, act, True)


def test_pareto_keeps_only_undominated_modes():
    rows = [_row("none", 0.0, 100), _row("full", 30.0, 10), _row("worse", 30.0, 50), _row("mid", 10.0, 40)]
    rows.append(_row("tie", 10.0, 40))
    assert report.pareto(rows) == ["none", "full", "mid", "tie"]


def test_matched_budget_is_the_share_of_no_ac_memory():
    rows = [_row("none", 0.0, 110), _row("full", 30.0, 10), _row("op", 5.0, 60), _row("big", 0.0, 200)]
    assert sweep.matched_budget(rows, "op") == 0.5
    assert sweep.matched_budget(rows, "big") == 1.0


def test_toy_report_reproduces_reference_and_writes_json(tmp_path, capsys):
    assert main(["report", "--models", "toy", "--device", "cpu", "--no-plot", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ac-report.json").read_text())
    rows = {r["mode"]: r for r in data["models"]["toy"]["rows"]}
    assert list(rows) == [*MODES, "budget@op", "budget@layer-2"]
    for mode, want in REFERENCE.items():
        got = (rows[mode]["backward_flops"] / FLOP_UNIT, rows[mode]["activation_bytes"] / MIB)
        assert (got[0], round(got[1], 3)) == want, mode
    assert all(r["grads_bitwise_equal"] for r in rows.values())
    assert rows["budget@op"]["recompute_pct"] <= rows["op"]["recompute_pct"]
    out, err = capsys.readouterr()
    assert "### toy" in out and "| budget-0.5 * |" in out
    assert err.count("\n") == len(rows) and f"[1/{len(rows)}] toy" in err
    assert data["grads_compared"] == "every mode's against no AC's, bitwise" and "Gradients: every" in out


def test_plot_draws_a_png(tmp_path):
    from harness.plot import plot  # needs matplotlib, which `make setup` installs

    rows = [_row("none", 0.0, 100 * MIB), _row("full", 30.0, 0), _row("budget-0.5", 10.0, 40 * MIB)]
    data = {"rows": [vars(r) for r in rows], "pareto": report.pareto(rows)}
    plot(
        {"device": "cpu", "torch": torch.__version__, "models": {"m": data, "n": data, "o": data}},
        tmp_path / "p.png",
    )
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "toy,gpt"], r"--models 'toy,gpt': unknown \['gpt'\]; allowed are \['toy'"),
        (["--models", ","], r"--models ',': unknown \[\]"),
        (["--device", "tpu"], r"--device 'tpu' is not one of \['auto', 'cpu', 'cuda'\]"),
    ],
)
def test_bad_arguments_fail_before_any_measurement(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        main(["report", "--out", str(tmp_path), *argv])
    assert not any(tmp_path.iterdir())


def test_missing_matplotlib_is_named_before_measuring(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when absent
    monkeypatch.setattr(sweep, "run", lambda *a: pytest.fail("measured before checking matplotlib"))
    with pytest.raises(ValueError, match=r"pip install 'ac-harness\[report\]', or pass --no-plot"):
        main(["report", "--models", "toy", "--device", "cpu", "--out", str(tmp_path)])


@pytest.mark.tiers("gpu")
def test_cuda_report_compares_gradients_under_deterministic_algorithms(tier, tmp_path):
    """Without deterministic algorithms two no-AC runs on CUDA differ (index_add, embedding backward)."""
    assert main(["report", "--models", "toy", "--device", "cuda", "--no-plot", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ac-report.json").read_text())
    assert "use_deterministic_algorithms(True)" in data["grads_compared"]
    assert all(r["grads_bitwise_equal"] for r in data["models"]["toy"]["rows"])
