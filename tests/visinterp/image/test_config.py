from pathlib import Path

import pytest

from ctxsae_common.errors import InputError
from visinterp.image.config import RunConfig, load_run_config, run_config_from_dict

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_default_toml_spells_out_the_built_in_defaults():
    assert load_run_config(CONFIGS / "default.toml") == RunConfig()


def test_quick_toml_overrides_field_by_field():
    quick = load_run_config(CONFIGS / "quick.toml")
    assert quick.sweep.k == (2, 4) and quick.sweep.width == 32
    assert quick.sweep.lr == RunConfig().sweep.lr  # not named in the file: the default
    assert quick.offline_ae.steps == 150 and quick.offline_ae.crop == RunConfig().offline_ae.crop


@pytest.mark.parametrize("values, message", [
    ({"sweep": {"widht": 4}}, r"\[sweep\]: unknown field\(s\) widht"),
    ({"harvest": {"axis": "tokens"}}, "harvest.axis='tokens': choose 'raster' or 'quadtree'"),
    ({"images": {"size": 60}}, "images.size=60 must be a multiple of 8"),
    ({"sweep": {"width": 4, "k": [8]}}, "sweep.width=4 must be >= every k"),
    ({"offline_ae": {"norm_groups": 5}}, "norm_groups=5 must divide"),
    ({"imagse": {}}, r"cfg.toml: unknown field\(s\) imagse; known fields are autoencoder, images"),
    # the wrong type, named by table and field instead of a Python error from deep inside
    ({"sweep": {"width": "big"}}, r"cfg.toml \[sweep\]: width = 'big' must be an integer"),
    ({"sweep": {"k": 4}}, r"cfg.toml \[sweep\]: k = 4 must be a list of integers"),
    ({"sweep": {"carries": "gated"}}, r"cfg.toml \[sweep\]: carries = 'gated' must be a list of strings"),
    ({"sweep": {"width": True}}, r"cfg.toml \[sweep\]: width = True must be an integer"),
    ({"sweep": {"lr": "fast"}}, r"cfg.toml \[sweep\]: lr = 'fast' must be a number"),
    ({"images": 3}, r"cfg.toml: images = 3 must be a table of ImagesConfig fields"),
    ({"sweep": {"subtract": "bigram"}}, r"sweep.subtract='bigram': choose from \['none', 'unigram'\]"),
    ({"sweep": {"subtract": "unigram"}}, r"sweep.subtract='unigram' needs token ids: image maps have none"),
])
def test_bad_values_are_named(values, message):
    with pytest.raises(InputError, match=message):
        run_config_from_dict(values, "cfg.toml")


@pytest.mark.parametrize("name", ["taef2_converged_256.toml", "taef2_converged_256_8m.toml"])
def test_the_converged_image_configs_name_taef2_maps_that_tile_into_64_patch_windows(name):
    """benchmarks/image_converged.py's configs: the real TAEF2 weights beside the repository, at
    256 px (32 x 32 maps at both hooks), cut into 8 x 8 tiles, and a headline k (4) in both sweeps."""
    from visinterp.models.autoencoders import load_autoencoder

    cfg = load_run_config(CONFIGS / "image" / name)
    root = CONFIGS.parent
    ae = load_autoencoder(root / cfg.autoencoder)
    assert set(cfg.harvest.hooks) == {"latent", "encoder.mid"} <= set(ae.hook_names)
    side = cfg.images.size // ae.downsample
    assert side == 32 and side % cfg.harvest.tile == 0 and cfg.harvest.tile ** 2 == 64
    assert 4 in cfg.sweep.k and 4 in cfg.sweep.k_contextual and cfg.sweep.carries == ("gated",)


def test_the_8m_image_config_differs_from_the_4m_one_in_budget_and_carry_loss_alone():
    """Its comment says "as in taef2_converged_256.toml" but for the default carry loss and twice the budget."""
    old, new = (load_run_config(CONFIGS / "image" / n).to_dict()
                for n in ("taef2_converged_256.toml", "taef2_converged_256_8m.toml"))
    changed = {f: (old["sweep"][f], new["sweep"][f]) for f in old["sweep"] if old["sweep"][f] != new["sweep"][f]}
    assert changed == {"tokens": (4_000_000, 8_000_000), "carry_coeff": (1.0, 0.0)}
    assert {**old, "sweep": None} == {**new, "sweep": None}


def test_the_offline_image_config_is_the_8m_taef2_one_on_the_offline_autoencoder():
    """Its comment says it runs the TAEF2 8M comparison's scenes, budget and sweep on the offline
    autoencoder, trained on 256 px scenes with 16 latent channels; an untrained copy offers both hooks."""
    from visinterp.models.autoencoders.offline import offline_hook_names

    taef2, offline = (load_run_config(CONFIGS / "image" / n)
                      for n in ("taef2_converged_256_8m.toml", "offline_converged_256_8m.toml"))
    assert offline.autoencoder == "offline" and {**taef2.to_dict(), "autoencoder": None, "offline_ae": None} == {
        **offline.to_dict(), "autoencoder": None, "offline_ae": None}
    ae = offline.offline_ae
    assert (ae.size, ae.crop, ae.latent_channels) == (256, 64, 16)
    assert ae.batch * ae.crop ** 2 == RunConfig().offline_ae.batch * RunConfig().offline_ae.crop ** 2
    assert {"latent", "encoder.mid"} <= set(offline_hook_names(ae))
