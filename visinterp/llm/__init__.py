"""The LLM job (`visinterp llm-compare`): per-position vs contextual SAEs on a causal LM's token
windows. `config` is its TOML config, `run` the job, `report` its report.html, `view` its notebook
view."""
