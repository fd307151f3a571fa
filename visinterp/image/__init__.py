"""The image job (`visinterp run`): SAEs on an image autoencoder's activations. `config` is its
TOML config, `run` the job, `report` its report.html, `view` its notebook view; `factors` scores
features against the scenes' truth and `steering` puts SAE outputs back into the autoencoder."""
