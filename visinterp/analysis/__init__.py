"""Analyses every job shares: an SAE's codes on held-out windows (`codes`), factor alignment
(`alignment`), comparison at matched sparsity (`matched_l0`), localization against region labels
(`localization`) and co-activation groups (`coactivation`)."""
