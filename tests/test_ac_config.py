"""ACConfig and apply_ac input checking: every bad input fails before any work."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy
import pytest
import tomllib
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

import ac
from ac import ACConfig, apply_ac, config, modes
from ackit.models.moe import MoEArgs, build
from ackit.models.toy import ToyModel

AC_DIR = Path(ac.__file__).resolve().parent

pytestmark = pytest.mark.tiers("cpu")


def test_from_dict_reads_a_torchtitan_toml_table():
    table = tomllib.loads(
        """
        [activation_checkpoint]
        mode = "selective"
        selective_ac_option = "op"
        per_op_sac_force_recompute_mm_shapes_by_fqns = ["moe.router.gate", "output"]
        early_stop = true
        """
    )["activation_checkpoint"]
    config = ACConfig.from_dict(table)
    assert config.selective_ac_option == "op"
    assert config.per_op_sac_force_recompute_mm_shapes_by_fqns == ["moe.router.gate", "output"]
    assert config.early_stop is True
    assert config.layer_interval is None


def test_integer_layer_option_from_toml_is_accepted():
    assert ACConfig.from_dict({"selective_ac_option": 3}).layer_interval == 3


def test_from_dict_rejects_unknown_keys_naming_them():
    with pytest.raises(ValueError, match=r"\['selctive_ac_option'\].*allowed keys.*selective_ac_option"):
        ACConfig.from_dict({"selctive_ac_option": "op"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"mode": "partial"},
            r"mode='partial' is not one of \['none', 'full', 'memory_budget', 'selective'\]",
        ),
        ({"selective_ac_option": "0"}, r"selective_ac_option='0' is not allowed.*\"op\".*positive integer"),
        ({"selective_ac_option": "-2"}, r"selective_ac_option='-2'"),
        ({"selective_ac_option": "ops"}, r"selective_ac_option='ops'"),
        ({"selective_ac_option": True}, r"selective_ac_option=True"),
        ({"memory_budget": 1.5}, r"memory_budget=1.5 is outside the allowed range \[0.0, 1.0\]"),
        ({"memory_budget": -0.1}, r"memory_budget=-0.1"),
        ({"memory_budget": "half"}, r"memory_budget='half'"),
        ({"per_op_sac_force_recompute_mm_shapes_by_fqns": "moe.router.gate"}, r"must be a list"),
        ({"determinism_check": "strict"}, r"determinism_check='strict'"),
        ({"preserve_rng_state": "yes"}, r"preserve_rng_state='yes' must be a bool"),
        ({"preserve_rng_state": 1}, r"preserve_rng_state=1 must be a bool"),
        ({"early_stop": None}, r"early_stop=None must be a bool"),
        ({"debug": "false"}, r"debug='false' must be a bool"),
        ({"selective_ac_option": "²"}, r"selective_ac_option='²' is not allowed"),
        ({"per_op_sac_force_recompute_mm_shapes_by_fqns": None}, r"fqns=None must be a list"),
        ({"per_op_sac_force_recompute_mm_shapes_by_fqns": ["a", ""]}, r"\[''\] are not"),
        (
            {"per_op_sac_save_names": "attention.mm_0"},
            r"per_op_sac_save_names='attention.mm_0' must be a list",
        ),
        ({"per_op_sac_recompute_names": [3]}, r"per_op_sac_recompute_names=\[3\].*\[3\] are not"),
        (
            {
                "selective_ac_option": "op",
                "per_op_sac_save_names": ["a.mm_0"],
                "per_op_sac_recompute_names": ["a.mm_0"],
            },
            r"\['a.mm_0'\] are in both",
        ),
        ({"memory_budget": float("nan")}, r"memory_budget=nan is outside"),
        ({"memory_budget": numpy.float32(1.5)}, r"memory_budget=.*1.5.* is outside the allowed range"),
        ({"memory_budget": True}, r"memory_budget=True is a bool, not a number"),
        ({"preserve_rng_state": numpy.bool_(True)}, r"must be a bool \(true or false\), not a numpy.bool"),
        ({"mode": ["full"]}, r"mode=\['full'\] is not one of"),
        ({"determinism_check": None}, r"determinism_check=None is not one of"),
        ({"compile_backend": 3}, r"compile_backend=3 must be a backend name"),
    ],
)
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ACConfig(**kwargs)


def test_iterables_are_read_once_before_they_are_checked():
    config = ACConfig(
        per_op_sac_force_recompute_mm_shapes_by_fqns=(p for p in ["x", "y"]),
        per_op_sac_save_names=iter(["attention.mm_0"]),
        selective_ac_option="op",
    )
    assert config.per_op_sac_force_recompute_mm_shapes_by_fqns == ["x", "y"]
    assert config.per_op_sac_save_names == ["attention.mm_0"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "full"},
        {"mode": "memory_budget"},
        {"selective_ac_option": "2"},
        {"selective_ac_option": "op", "compile": True, "compile_backend": "aot_eager"},
    ],
)
def test_names_are_refused_where_nothing_reads_them(kwargs):
    with pytest.raises(
        ValueError, match=r"per_op_sac_save_names is set, but names are read only by eager per-op SAC"
    ):
        ACConfig(per_op_sac_save_names=["attention.*"], **kwargs)


def test_numpy_numbers_are_numbers():
    config = ACConfig(
        mode="memory_budget", memory_budget=numpy.float32(0.5), selective_ac_option=numpy.int64(3)
    )
    assert (config.memory_budget, type(config.memory_budget)) == (0.5, float)
    assert config.layer_interval == 3


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"selective_ac_option": "op"}, "mode 'op'"),
        ({"mode": "memory_budget"}, "mode 'memory_budget'"),
        ({"mode": "full", "compile": True, "compile_backend": "aot_eager"}, "compile=True"),
    ],
)
def test_debug_is_refused_where_torch_would_refuse_it_at_the_first_forward(kwargs, named):
    with pytest.raises(ValueError, match=rf"debug=True is not allowed with {named}"):
        ACConfig(debug=True, **kwargs)


def test_debug_runs_with_plain_checkpointing():
    model = ToyModel(n_blocks=2)
    apply_ac(model, ACConfig(mode="full", debug=True))
    model(torch.randn(4, 512, requires_grad=True)).backward()


@pytest.mark.parametrize("backend", ["traced_eager", "aot_eager"])
def test_compile_is_read_from_toml_and_compiles_each_wrapped_block(backend, fresh_dynamo):
    config = ACConfig.from_dict({"mode": "full", "compile": True, "compile_backend": backend})
    model = apply_ac(ToyModel(n_blocks=2), config)
    assert all(block._compiled_call_impl is not None for block in model.layers.values())
    assert ACConfig().compile is False


def test_the_configs_kinds_are_the_registered_modes():
    assert list(modes.REGISTRY) == config.KINDS


def test_a_new_mode_is_one_class_one_registry_line_and_its_kind(monkeypatch):
    class EveryOther(modes.ACMode):
        def wrap(self, block, name, position):
            return self.checkpointed(block, name) if position % 2 else block

    monkeypatch.setitem(modes.REGISTRY, "every_other", EveryOther)
    monkeypatch.setattr(config, "KINDS", [*config.KINDS, "every_other"])
    model = apply_ac(ToyModel(n_blocks=3), ACConfig(mode="every_other"))
    assert [isinstance(b, ActivationWrapper) for b in model.layers.values()] == [True, False, True]


def test_rng_state_is_preserved_by_default():
    """torchtitan's default since 2026 and torch's own: dropout gradients are exact."""
    assert ACConfig().preserve_rng_state is True
    assert ACConfig.from_dict({"mode": "full"}).preserve_rng_state is True


def test_budget_edges_are_allowed():
    assert ACConfig(memory_budget=0).memory_budget == 0
    assert ACConfig(memory_budget=1.0).memory_budget == 1.0


def test_missing_block_container_is_named():
    named = (
        r"^model ToyModel has no block container 'blocks'; pass blocks=<attribute path> naming its "
        r"ModuleList, ModuleDict or Sequential of blocks$"
    )
    with pytest.raises(ValueError, match=named):
        apply_ac(ToyModel(), ACConfig(mode="full"), blocks="blocks")


def test_block_container_of_wrong_type_is_named():
    model = ToyModel()
    model.trunk = nn.Linear(2, 2)
    with pytest.raises(
        ValueError, match=r"model.trunk is a Linear; expected one of ModuleList, ModuleDict, Sequential"
    ):
        apply_ac(model, ACConfig(mode="full"), blocks="trunk")


def test_pattern_matching_a_non_linear_is_rejected_and_model_untouched():
    model = build(MoEArgs())
    config = ACConfig(selective_ac_option="op", per_op_sac_force_recompute_mm_shapes_by_fqns=["moe.router"])
    with pytest.raises(
        ValueError, match=r"'moe.router' matches 'layers.0.moe.router', a Router; only nn.Linear"
    ):
        apply_ac(model, config)
    assert not any("_checkpoint_wrapped_module" in name for name, _ in model.named_modules())


def test_user_pattern_matching_nothing_warns_with_its_name_at_the_callers_line():
    config = ACConfig(selective_ac_option="op", per_op_sac_force_recompute_mm_shapes_by_fqns=["moe.gate"])
    with pytest.warns(UserWarning, match=r"\['moe.gate'\] match no nn.Linear") as record:
        apply_ac(build(MoEArgs()), config)
    # The user's line (here; under mutmut, its wrapper's frame that calls apply_ac), never
    # ac's own code nor the test runner's.
    where = Path(record[0].filename).resolve()
    assert not where.is_relative_to(AC_DIR) and not {"_pytest", "pluggy"} & set(where.parts), where


def test_patterns_matching_only_some_linears_warn_naming_the_unmatched_ones():
    """Matched patterns still force their Linears' matmuls; each unmatched one is named, in the given order."""
    patterns = ["no.such", "router.gate", "moe.gate", "attention.wq"]
    config = ACConfig(selective_ac_option="op", per_op_sac_force_recompute_mm_shapes_by_fqns=patterns)
    mode = modes.OpSAC(config)
    with pytest.warns(UserWarning) as record:
        mode.prepare(build(MoEArgs()).layers, "layers")
    assert [str(w.message) for w in record] == [
        "per_op_sac_force_recompute_mm_shapes_by_fqns patterns ['no.such', 'moe.gate'] match no "
        "nn.Linear in model.layers; they have no effect"
    ]
    args = MoEArgs()
    assert mode.forced_shapes == {(args.dim, args.n_experts), (args.dim, args.dim)}


def test_default_pattern_is_silent_on_dense_models():
    dense = nn.Module()
    dense.layers = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_ac(dense, ACConfig(selective_ac_option="op"))


def test_applying_twice_is_rejected():
    model = apply_ac(ToyModel(), ACConfig(mode="full"))
    with pytest.raises(ValueError, match=r"already checkpointed"):
        apply_ac(model, ACConfig(mode="full"))


@pytest.mark.parametrize("mode", ["op", "memory_budget"])
def test_early_stop_runs_with_sac(mode):
    """torch accepts early_stop with a SAC context (checked with compile=True by hand too):
    the config does not refuse it, and the gradients are no AC's."""
    reference, model = ToyModel(n_blocks=2), ToyModel(n_blocks=2)
    model.load_state_dict(reference.state_dict())
    kind = {"selective_ac_option": "op"} if mode == "op" else {"mode": mode}
    apply_ac(model, ACConfig(early_stop=True, **kind))
    x = torch.randn(4, 512)
    reference(x).backward()
    model(x).backward()
    for (name, want), got in zip(reference.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(got.grad, want.grad), name
