"""ctxsae_common: the plumbing every package of the workbench shares, written once.

The one-line error type (`errors`), atomic writes and JSON/TOML/tensor reading (`files`), the
cache folder (`cache`), seeded random streams with named keys (`seeds`), typed dataclass configs
read from dicts (`typed`) and the command-line parser that prints one-line errors (`cli`). It imports none of
the workbench's other packages, so `scenes`, `ctxsae_core` and `visinterp` may all import it."""

from ctxsae_common.errors import InputError

__all__ = ["InputError"]
