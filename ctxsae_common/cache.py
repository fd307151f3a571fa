"""Where the workbench caches what it builds once and reuses: the offline default autoencoder
(trained on rendered scenes) and causal LMs converted from GGUF files. `$CTXSAE_CACHE`, else
`~/.cache/ctxsae`; deleting it only costs the time to build its entries again."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CTXSAE_CACHE"


def cache_root() -> Path:
    """The cache folder: $CTXSAE_CACHE, else ~/.cache/ctxsae."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ctxsae")
