"""Text with region labels for LLM comparisons: an embedded default corpus built from text
every Python install already has, local .txt / .jsonl files, or a Hugging Face dataset; and
token windows cut from spans laid end to end, so windows contain region boundaries at known
positions.

Default regions: `prose` (the stdlib's pydoc help topics, split into paragraphs' worth of
text), `code` (stdlib source files, split at top-level definitions), `licence` (the licence
texts of the installed distributions and of Python itself)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor

from ctxsae_common.errors import InputError

REGIONS = ("prose", "code", "licence")
_LICENCE_NAMES = ("LICENSE", "LICENCE", "COPYING", "NOTICE")
_CODE_MODULES = ("json", "textwrap", "argparse", "dataclasses", "pathlib", "csv", "heapq", "bisect", "shlex",
                 "string", "fractions", "difflib", "calendar", "configparser", "enum", "functools", "statistics")


@dataclass(frozen=True)
class Span:
    """A piece of text with its region label and where it came from."""

    text: str
    region: str
    source: str


def clean(text: str) -> str:
    """Unix newlines, no trailing spaces, tabs as 4 spaces, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _chunks(text: str, max_chars: int, separator: str) -> Iterable[str]:
    """Pieces of at most ~max_chars, cut only where `separator` (a regex) matches."""
    pieces, current = re.split(separator, text), ""
    for piece in pieces:
        if current and len(current) + len(piece) > max_chars:
            yield current
            current = ""
        current = f"{current}\n\n{piece}" if current else piece
    if current:
        yield current


def _prose(max_chars: int) -> Iterable[Span]:
    from pydoc_data.topics import topics

    for name, text in sorted(topics.items()):
        for piece in _chunks(clean(text), max_chars, r"\n\n"):
            yield Span(piece, "prose", f"pydoc_data.topics:{name}")


def _code(max_chars: int) -> Iterable[Span]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for module in _CODE_MODULES:
        path = stdlib / f"{module}.py"
        if not path.is_file():
            path = stdlib / module / "__init__.py"
        if path.is_file():
            for piece in _chunks(clean(path.read_text(errors="replace")), max_chars, r"\n\n(?=(?:def|class|@) )"):
                yield Span(piece, "code", str(path.relative_to(stdlib.parent)))


def _licences(max_chars: int) -> Iterable[Span]:
    files = [Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"]
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        files += [Path(dist.locate_file(f)) for f in (dist.files or []) if f.name.upper().startswith(_LICENCE_NAMES)]
    for path in files:
        if path.is_file() and path.stat().st_size < 200_000:
            for piece in _chunks(clean(path.read_text(errors="replace")), max_chars, r"\n\n"):
                yield Span(piece, "licence", path.name if "site-packages" not in str(path) else
                           f"{path.parent.name}/{path.name}")


def dedupe(spans: Iterable[Span], min_chars: int) -> list[Span]:
    """Spans of at least min_chars, each text once (compared with whitespace collapsed, lowercased)."""
    seen, out = set(), []
    for s in spans:
        key = hashlib.sha1(" ".join(s.text.lower().split()).encode()).hexdigest()
        if len(s.text) >= min_chars and key not in seen:
            seen.add(key)
            out.append(s)
    return out


def default_corpus(min_chars: int = 200, max_chars: int = 2000) -> list[Span]:
    """The embedded corpus: prose, code and licence spans, cleaned and deduplicated."""
    return dedupe([*_prose(max_chars), *_code(max_chars), *_licences(max_chars)], min_chars)


def local_corpus(paths: list[str | Path], min_chars: int = 1, max_chars: int = 2000) -> list[Span]:
    """.txt files (one region, named after the file's stem, split at blank lines) and .jsonl
    files (one object per line with "text" and optionally "region", default "text")."""
    spans = []
    for path in map(Path, paths):
        if not path.is_file():
            raise InputError(f"{path}: no such text file: pass .txt or .jsonl files")
        if path.suffix == ".txt":
            spans += [Span(p, path.stem, str(path)) for p in _chunks(clean(path.read_text(errors="replace")), max_chars, r"\n\n")]
        elif path.suffix == ".jsonl":
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    spans.append(Span(clean(row["text"]), str(row.get("region", "text")), f"{path}:{i}"))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise InputError(f"{path}:{i}: each line must be a JSON object with a \"text\" field") from None
        else:
            raise InputError(f"{path}: unsupported corpus file {path.suffix!r}: use .txt or .jsonl")
    return dedupe(spans, min_chars)


def hf_corpus(dataset: str, split: str = "train", text_field: str = "text", region_field: str = "",
              rows: int = 5000, max_chars: int = 2000) -> list[Span]:
    """The first `rows` rows of a Hugging Face dataset (a hub id, which needs internet, or a
    local folder of data files), streamed rather than downloaded whole. Each row's text is cut
    at blank lines into spans of ~max_chars; its region is the row's `region_field` when given,
    else the dataset's name."""
    try:
        import datasets
    except ImportError:
        raise InputError("a Hugging Face dataset corpus needs the datasets library: pip install datasets") from None
    try:
        stream = datasets.load_dataset(dataset, split=split, streaming=True)
        first = list(itertools.islice(stream, rows))
    except Exception as e:  # datasets raises many kinds here: not found, offline, bad split, bad files
        raise InputError(f"cannot read Hugging Face dataset {dataset!r} split {split!r} "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}): check the id, the "
                         "split and your connection, or pass local .txt / .jsonl files") from None
    name = Path(dataset).name or dataset
    spans = []
    for i, row in enumerate(first):
        for field_name in filter(None, (text_field, region_field)):
            if field_name not in row:
                raise InputError(f"{dataset}: rows have no {field_name!r} field (they have {sorted(row)}): set "
                                 "corpus.hf_text_field / corpus.hf_region_field")
        region = str(row[region_field]) if region_field else name
        spans += [Span(p, region, f"{dataset}:{split}:{i}") for p in _chunks(clean(str(row[text_field])), max_chars, r"\n\n")]
    return dedupe(spans, 1)


@dataclass(frozen=True)
class TokenWindows:
    """Token windows cut from spans laid end to end, with each token's region and the spans' starts."""

    ids: Tensor  # (N, T) token ids
    region: Tensor  # (N, T) index into `regions` of the span each token comes from
    span_start: Tensor  # (N, T) bool: the token opens a span (a region boundary or a new span)
    regions: tuple[str, ...]

    def boundaries(self) -> Tensor:
        """(N, T) bool: the region changes at this token (not just a new span of the same region)."""
        change = torch.zeros_like(self.span_start)
        change[:, 1:] = self.region[:, 1:] != self.region[:, :-1]
        return change


def token_windows(spans: list[Span], tokenize: Callable[[str], list[int]], T: int, n_windows: int,
                  seed: int = 0, regions: tuple[str, ...] | None = None,
                  span_tokens: tuple[int, int] | None = None) -> TokenWindows:
    """Lay the spans end to end in a seeded random order and cut the stream into n_windows
    consecutive windows of T tokens; spans are reused if the corpus runs out. With
    `span_tokens` = (lo, hi), each span contributes only its first lo..hi tokens (a seeded
    length), so windows hold region boundaries even when spans are longer than T."""
    if not spans:
        raise InputError("the corpus holds no spans: pass text files or use the default corpus")
    if regions is None:  # the default regions in their usual order, then any others by name
        present = {s.region for s in spans}
        regions = tuple([r for r in REGIONS if r in present] + sorted(present - set(REGIONS)))
    rng = random.Random(seed)
    order = list(range(len(spans)))
    ids, region, start = [], [], []
    need = T * n_windows
    while len(ids) < need:
        rng.shuffle(order)
        for i in order:
            tokens = tokenize(spans[i].text)
            if span_tokens is not None:
                tokens = tokens[: rng.randint(*span_tokens)]
            if not tokens:
                continue
            ids += tokens
            region += [regions.index(spans[i].region)] * len(tokens)
            start += [True] + [False] * (len(tokens) - 1)
            if len(ids) >= need:
                break
    shape = (n_windows, T)
    return TokenWindows(torch.tensor(ids[:need]).reshape(shape), torch.tensor(region[:need]).reshape(shape),
                        torch.tensor(start[:need]).reshape(shape), regions)
