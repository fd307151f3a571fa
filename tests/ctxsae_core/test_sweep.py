"""A sweep's fields reach the SAEs it builds: the contextual SAEs' signed codes and carry loss, and every SAE's
budget anneal, with bad values named before any training."""

import pytest

from ctxsae_common.errors import InputError
from ctxsae_core.config import ContextualConfig
from ctxsae_core.sweep import SweepConfig, sweep_specs, train_config


def test_signed_and_the_anneal_reach_the_contextual_saes_and_their_training():
    sweep = SweepConfig(k=(2,), k_contextual=(4,), signed=True, k_anneal_fraction=0.0, carry_coeff=1.0)
    specs = {s.name: s for s in sweep_specs(sweep, d=8)}
    assert set(specs) == {"topk_k2", "contextual_gated_k4", "contextual_gated_k4_control"}
    assert specs["contextual_gated_k4"].config.signed and specs["contextual_gated_k4_control"].config.signed
    assert specs["contextual_gated_k4"].config.carry_coeff == 1.0
    assert train_config(sweep, specs["contextual_gated_k4"]).schedule_for(True) == (0.25, 0.0)
    plain = SweepConfig(k=(2,), k_contextual=(4,))
    spec = next(s for s in sweep_specs(plain, d=8) if isinstance(s.config, ContextualConfig))
    assert not spec.config.signed and spec.config.carry_coeff == 0.0 and train_config(plain, spec).schedule_for(True) == (0.25, 0.5)


def test_bad_sweep_fields_are_named():
    with pytest.raises(InputError, match=r"sweep.k_anneal_fraction=1.5 must lie in \[0, 1\]"):
        SweepConfig(k_anneal_fraction=1.5)
    with pytest.raises(InputError, match="sweep.carry_coeff=-1.0 must be >= 0"):
        SweepConfig(carry_coeff=-1.0)
    with pytest.raises(InputError, match="sweep.signed needs the gated carry only"):
        SweepConfig(carries=("gated", "attention"), signed=True)
