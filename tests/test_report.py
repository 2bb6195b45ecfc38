"""`python -m ackit report`: the toy's rows reproduce torchtitan's figures; table, JSON and plot."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from ackit import models, report, sweep, timing
from ackit.__main__ import main
from ackit.models.toy import FLOP_UNIT, REFERENCE
from ackit.presets import PRESETS
from ackit.units import MIB
from tests.documented import quoted_help, unwrapped

pytestmark = pytest.mark.tiers("cpu")


def _row(mode: str, recompute: float, act: int, step_ms: float = 1.0, compiled: bool = False) -> sweep.Row:
    flops = None if compiled else 1
    return sweep.Row(
        "m", mode, flops, flops, None if compiled else recompute, act, act, True, step_ms, compiled
    )


def test_pareto_keeps_only_undominated_modes():
    rows = [_row("none", 0.0, 100), _row("full", 30.0, 10), _row("worse", 30.0, 50), _row("mid", 10.0, 40)]
    rows.append(_row("tie", 10.0, 40))
    assert report.pareto(rows) == ["none", "full", "mid", "tie"]


def test_time_front_marks_modes_a_faster_one_dominates_at_no_more_memory():
    rows = [
        _row("none", 0.0, 100, step_ms=10.0),
        _row("full", 30.0, 10, step_ms=14.0),
        _row("op", 10.0, 40, step_ms=25.0),  # fewer flops than full, slower than it at more memory
        _row("layer-2", 15.0, 40, step_ms=12.0),
        _row("op compiled", 0.0, 5, step_ms=11.0, compiled=True),  # CPU: saved bytes, not comparable
    ]
    assert report.time_pareto(rows) == ["none", "full", "layer-2"]
    assert report.pareto(rows) == ["none", "full", "op"]
    text = report.table("m", rows)
    assert "| op *† |" in text and "| layer-2 |" in text and "| full * |" in text
    assert "| op compiled | n/a | n/a | n/a |" in text  # not compared in time on CPU: no mark


def test_a_faster_row_within_the_spread_dominates_nothing():
    """Noise on a busy machine: none's steps spread over 80-110 ms, a row of the same memory
    over 78-90 ms. Not dominated: the difference is within the spread."""
    none = dataclasses.replace(_row("none", 0.0, 100, step_ms=100.0), step_q1_ms=80.0, step_q3_ms=110.0)
    same = dataclasses.replace(_row("layer-2", 0.0, 100, step_ms=85.0), step_q1_ms=78.0, step_q3_ms=90.0)
    assert report.time_pareto([none, same]) == ["none", "layer-2"]
    clear = dataclasses.replace(same, step_q3_ms=79.0)
    assert report.time_pareto([none, clear]) == ["layer-2"]
    assert "100.00 [80.00-110.00]" in report.table("m", [none, same])


def test_matched_budget_is_the_share_of_no_ac_memory():
    figures = {"none": 110, "full": 10, "op": 60, "big": 200}
    figures = {mode: {"activation_bytes": act} for mode, act in figures.items()}
    assert sweep.matched_budget(figures, "op") == 0.5
    assert sweep.matched_budget(figures, "big") == 1.0


def test_toy_report_reproduces_reference_and_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "WARMUP_STEPS", 0)  # one timed step per mode keeps the test quick
    monkeypatch.setattr(sweep, "TIMED_STEPS", 1)
    assert main(["report", "--models", "toy", "--device", "cpu", "--no-traced", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ac-report.json").read_text())
    assert (tmp_path / "ac-report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["mode"]: r for r in data["models"]["toy"]["rows"]}
    assert list(rows) == [*PRESETS, "budget@op", "budget@layer-2"]
    for mode, want in REFERENCE.items():
        got = (rows[mode]["backward_flops"] / FLOP_UNIT, rows[mode]["activation_bytes"] / MIB)
        assert (got[0], round(got[1], 3)) == want, mode
    assert all(r["grads_equal"] for r in rows.values())
    assert all(r["step_ms"] > 0 and r["step_q1_ms"] <= r["step_ms"] <= r["step_q3_ms"] for r in rows.values())
    # The toy has one block: layer SAC every 2nd block and budgets of 1.0 leave it as no AC.
    assert rows["layer-2"]["same_plan_as"] == rows["budget@op"]["same_plan_as"] == "none"
    assert rows["layer-2"]["step_ms"] == rows["none"]["step_ms"]
    assert rows["full"]["same_plan_as"] is None and rows["layer-1"]["same_plan_as"] == "full"
    assert data["models"]["toy"]["time_pareto"]
    # A matched budget holds no more than its mode. Its recompute is no more either here only
    # because on the toy both modes hold what no AC holds, so both budgets are 1.0 (no AC); in
    # general an eager budget is priced in time and may recompute more flops for less time.
    for matched in sweep.MATCHED:
        budget = rows[f"budget@{matched}"]
        assert budget["activation_bytes"] <= rows[matched]["activation_bytes"], matched
        assert budget["recompute_pct"] <= rows[matched]["recompute_pct"], matched
    out, err = capsys.readouterr()
    assert "### toy" in out and "| budget-0.5 *" in out
    assert err.count("\n") == len(rows) + 1 and "toy        step times" in err
    assert data["grads_compared"].startswith("every eager mode's against no AC's, bitwise;")
    assert "Gradients: every eager" in out


@pytest.mark.compiled
def test_compiled_rows_compare_with_compiled_no_ac(fresh_dynamo):
    device, backend = torch.device("cpu"), "aot_eager_decomp_partition"
    figures, reference = {}, None
    for mode in ("none", "full"):
        config = dataclasses.replace(PRESETS[mode], compile=True, compile_backend=backend)
        figures[mode], grads = sweep.measure_compiled(models.build("toy", device), config, reference)
        reference = reference or grads
    assert all(f["compiled"] and f["grads_equal"] and f["backward_flops"] is None for f in figures.values())
    assert figures["full"]["activation_bytes"] < figures["none"]["activation_bytes"]
    broken = {name: g + 1 for name, g in reference.items()}
    figures, _ = sweep.measure_compiled(models.build("toy", device), config, broken)
    assert not figures["grads_equal"]


@pytest.mark.compiled
def test_traced_rows_compare_bitwise_with_a_plain_eager_step(fresh_dynamo):
    plain = models.build("toy")
    plain.step().backward()
    figures = sweep.measure_traced(models.build("toy"), PRESETS["op"], plain.model)
    assert figures["traced"] and figures["grads_equal"]
    plain.model.layers["0"].output.weight.grad += 1
    assert not sweep.measure_traced(models.build("toy"), PRESETS["op"], plain.model)["grads_equal"]


def test_plot_draws_a_png(tmp_path):
    from ackit.plot import plot  # needs matplotlib, which `make setup` installs

    rows = [
        _row("none", 0.0, 100 * MIB),
        _row("full", 30.0, 0, step_ms=2.0),
        _row("budget-0.5", 10.0, 40 * MIB),
        _row("none compiled", 0.0, 90 * MIB, compiled=True),
    ]
    data = {
        "rows": [vars(r) for r in rows],
        "pareto": report.pareto(rows),
        "time_pareto": report.time_pareto(rows),
    }
    plot(
        {"device": "cpu", "torch": torch.__version__, "models": {"m": data, "n": data}},
        tmp_path / "p.png",
    )
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "toy,gpt"], r"--models 'toy,gpt': unknown \['gpt'\]; allowed are \['toy'"),
        (["--models", ","], r"--models ',': unknown \[\]"),
        (["--device", "tpu"], r"--device 'tpu' is not one of \['auto', 'cpu', 'cuda'\]"),
        (["--device", "cpu", "--compile-backend", "inductr"], r"--compile-backend 'inductr' is not one of"),
    ],
)
def test_bad_arguments_fail_before_any_measurement(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        main(["report", "--out", str(tmp_path), *argv])
    assert not any(tmp_path.iterdir())


def test_gpu_sized_model_is_in_the_cuda_report_only():
    assert "moe-gpu" in models.report_defaults("cuda") and "moe-gpu" not in models.report_defaults("cpu")
    assert models.report_defaults("cpu") == ["toy", "moe-tiny", "moe-small"]


def test_missing_matplotlib_is_named_before_measuring(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when absent
    monkeypatch.setattr(sweep, "run", lambda *a: pytest.fail("measured before checking matplotlib"))
    with pytest.raises(ValueError, match=r"pip install 'ac-harness\[report\]', or pass --no-plot"):
        main(["report", "--models", "toy", "--device", "cpu", "--out", str(tmp_path)])


@pytest.mark.tiers("gpu")
def test_cuda_report_compares_gradients_under_deterministic_algorithms(tier, tmp_path):
    """Without deterministic algorithms two no-AC runs on CUDA differ (index_add, embedding backward)."""
    tier.require_cuda("the CUDA report")
    assert main(["report", "--models", "toy", "--device", "cuda", "--no-plot", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ac-report.json").read_text())
    assert "use_deterministic_algorithms(True)" in data["grads_compared"]
    assert all(r["grads_equal"] for r in data["models"]["toy"]["rows"])


def test_recompute_percentage_is_extra_backward_flops_over_no_ac_step_flops():
    """Full AC recomputes the forward: 100 extra of 100 + 200 flops is 33.33 %, rounded to 2 places."""
    held = {"peak_bytes": 9, "grads_equal": True}
    none = {"forward_flops": 100, "backward_flops": 200, "activation_bytes": 8, **held}
    full = {"forward_flops": 100, "backward_flops": 300, "activation_bytes": 2, **held}
    compiled = {
        "forward_flops": None,
        "backward_flops": None,
        "recompute_pct": None,
        "activation_bytes": 1,
        **held,
    }
    figures = {"none": none, "full": full, "op compiled": compiled}
    step = timing.StepTime(1.23456, 1.0, 1.5)
    rows = [sweep.make_row("m", mode, f, none, step) for mode, f in figures.items()]
    assert [(r.mode, r.recompute_pct, r.step_ms) for r in rows] == [
        ("none", 0.0, 1.235),
        ("full", 33.33, 1.235),
        ("op compiled", None, 1.235),
    ]


def _rows(cuda: bool) -> list[sweep.Row]:
    extra = {"cuda_activation_bytes": 3 * MIB, "cuda_peak_bytes": 5 * MIB} if cuda else {}
    none_extra = {"cuda_activation_bytes": 4 * MIB, "cuda_peak_bytes": 6 * MIB} if cuda else {}
    return [
        sweep.Row("m", "none", 1_050_000, 1_050_000, 0.0, 4 * MIB, 6 * MIB, True, 10.0, **none_extra),
        sweep.Row("m", "full", 1_050_000, 9_050_000, 33.333, MIB, 3 * MIB, True, 12.5, **extra),
        sweep.Row("m", "op compiled", None, None, None, 2 * MIB, None, False, 8.0, True, **extra),
    ]


def test_table_renders_every_figure_of_a_cpu_run():
    assert report.table("m", _rows(cuda=False)) == (
        "### m\n"
        "\n"
        "| mode | fwd MFLOP | bwd MFLOP | recompute % | act MiB | act % of none | peak MiB | grads equal |"
        " step ms | step % of none |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        "| none * | 1.1 | 1.1 | 0.0 | 4.000 | 100 | 6.000 | yes | 10.00 | 100 |\n"
        "| full * | 1.1 | 9.1 | 33.3 | 1.000 | 25 | 3.000 | yes | 12.50 | 125 |\n"
        "| op compiled | n/a | n/a | n/a | 2.000 | 50 | n/a | no | 8.00 | 80 |\n"
        "\n"
        "`*`: on the Pareto front of activation memory vs recompute flops; `†`: dominated in time "
        "(another mode holds no more memory and steps faster beyond the spread: its upper quartile "
        "below this one's lower). Step ms: median [lower-upper quartile] of interleaved steps; a row "
        "running the plan of an earlier one is timed once, with it. Compiled rows: act MiB is what autograd "
        "saves; no flop counts (compiled graphs refuse a FlopCounterMode).\n"
    )


def test_table_adds_the_allocators_figures_on_cuda():
    """On CUDA the allocator's bytes decide the fronts, and compiled rows compete in time."""
    lines = report.table("m", _rows(cuda=True)).splitlines()
    assert lines[2].endswith(" step ms | step % of none | CUDA act MiB | CUDA peak MiB |")
    assert lines[3] == "|" + "---|" * 12
    assert lines[4:7] == [
        "| none *† | 1.1 | 1.1 | 0.0 | 4.000 | 100 | 6.000 | yes | 10.00 | 100 | 4.000 | 6.000 |",
        "| full *† | 1.1 | 9.1 | 33.3 | 1.000 | 25 | 3.000 | yes | 12.50 | 125 | 3.000 | 5.000 |",
        "| op compiled | n/a | n/a | n/a | 2.000 | 50 | n/a | no | 8.00 | 80 | 3.000 | 5.000 |",
    ]


def test_a_cuda_report_says_under_which_settings_gradients_were_compared(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cuda, cpu = report.grads_compared(torch.device("cuda")), report.grads_compared(torch.device("cpu"))
    settings = ", both under torch.use_deterministic_algorithms(True) with CUBLAS_WORKSPACE_CONFIG=:4096:8;"
    assert settings in cuda and cuda.replace(settings, ";") == cpu


def test_auto_compiles_with_inductor_on_cuda_only_and_none_never():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert report.compile_backend_for("auto", cuda) == "inductor"
    assert report.compile_backend_for("auto", cpu) is None
    assert report.compile_backend_for("none", cuda) is None
    assert report.compile_backend_for("aot_eager", cpu) == "aot_eager"
    assert report.compile_backend_for("traced_eager", cpu) == "traced_eager"  # ac.traced's backend


def test_report_help_is_what_the_docs_quote(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--help"])
    assert exit_.value.code == 0
    assert unwrapped(capsys.readouterr().out) == unwrapped(quoted_help("python -m ackit report --help"))


def test_auto_measures_on_cuda_where_there_is_one_and_cuda_elsewhere_is_refused():
    has_cuda = torch.cuda.is_available()
    assert sweep.device_for("cpu") == torch.device("cpu")
    assert sweep.device_for("auto") == torch.device("cuda" if has_cuda else "cpu")
    if has_cuda:
        assert sweep.device_for("cuda") == torch.device("cuda")
    else:
        refused = r"^--device cuda: this machine has no CUDA device; use --device cpu or auto$"
        with pytest.raises(ValueError, match=refused):
            sweep.device_for("cuda")
