from pathlib import Path

import pytest

from ctxsae_core.errors import InputError
from visinterp.run_config import RunConfig, load_run_config, run_config_from_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_default_toml_spells_out_the_built_in_defaults():
    assert load_run_config(CONFIGS / "default.toml") == RunConfig()


def test_quick_toml_overrides_field_by_field():
    quick = load_run_config(CONFIGS / "quick.toml")
    assert quick.sweep.k == (2, 4) and quick.sweep.width == 32
    assert quick.sweep.lr == RunConfig().sweep.lr  # not named in the file: the default
    assert quick.offline_ae.steps == 300 and quick.offline_ae.crop == RunConfig().offline_ae.crop


@pytest.mark.parametrize("values, message", [
    ({"sweep": {"widht": 4}}, r"\[sweep\]: unknown field\(s\) widht"),
    ({"harvest": {"axis": "tokens"}}, "harvest.axis='tokens': choose 'raster' or 'quadtree'"),
    ({"images": {"size": 60}}, "images.size=60 must be a multiple of 8"),
    ({"sweep": {"width": 4, "k": [8]}}, "sweep.width=4 must be >= every k"),
    ({"offline_ae": {"norm_groups": 5}}, "norm_groups=5 must divide"),
    ({"imagse": {}}, "unknown table or key imagse"),
])
def test_bad_values_are_named(values, message):
    with pytest.raises(InputError, match=message):
        run_config_from_dict(values, "cfg.toml")
