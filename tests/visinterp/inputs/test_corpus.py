import json

import pytest
import torch

from ctxsae_common.errors import InputError
from visinterp.inputs.corpus import REGIONS, Span, clean, default_corpus, dedupe, hf_corpus, local_corpus, token_windows
from visinterp.llm.run import CorpusConfig, corpus_spans


@pytest.fixture(scope="module")
def corpus():
    return default_corpus()


def test_default_corpus_has_every_region_clean_and_once(corpus):
    by_region = {r: [s for s in corpus if s.region == r] for r in REGIONS}
    assert all(len(v) >= 50 for v in by_region.values())
    keys = [" ".join(s.text.lower().split()) for s in corpus]
    assert len(set(keys)) == len(keys)
    assert all(200 <= len(s.text) and "\n\n\n" not in s.text and "\t" not in s.text for s in corpus)
    # the labels mean what they say: licences talk of licences, code defines things, prose is English
    licence_words = sum(any(w in s.text.lower() for w in ("licen", "copyright", "warrant", "permission"))
                        for s in by_region["licence"])
    assert licence_words >= 0.9 * len(by_region["licence"])
    assert sum(("def " in s.text or "class " in s.text or "import " in s.text) for s in by_region["code"]) >= 0.9 * len(by_region["code"])
    assert sum(" the " in s.text for s in by_region["prose"]) >= 0.9 * len(by_region["prose"])


def test_clean_and_dedupe():
    assert clean("a\r\nb  \n\n\n\n\tc") == "a\nb\n\n    c"
    spans = [Span("Hello  World", "prose", "a"), Span("hello world", "prose", "b"), Span("x", "code", "c")]
    assert [s.source for s in dedupe(spans, min_chars=2)] == ["a"]


def test_token_windows_label_every_token_and_mark_boundaries():
    spans = [Span("a a a", "prose", "1"), Span("b b", "code", "2"), Span("c c c c", "licence", "3")]
    words = {"a": 1, "b": 2, "c": 3}
    w = token_windows(spans, lambda t: [words[x] for x in t.split()], T=3, n_windows=3, seed=0)
    assert w.regions == REGIONS and w.ids.shape == (3, 3)
    flat_ids, flat_region = w.ids.reshape(-1), w.region.reshape(-1)
    assert torch.equal(flat_region, flat_ids - 1)  # each token carries its span's region
    starts = w.span_start.reshape(-1).nonzero()[:, 0].tolist()
    assert starts[0] == 0 and all(flat_ids[i] != flat_ids[i - 1] for i in starts[1:])
    assert (w.boundaries() <= w.span_start).all()  # a region change always opens a span


def test_local_files_and_their_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("first paragraph\n\nsecond paragraph")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "x = 1", "region": "code"}) + "\n" + json.dumps({"text": "hi"}) + "\n")
    spans = local_corpus([tmp_path / "notes.txt", tmp_path / "rows.jsonl"])
    assert [(s.region, s.text) for s in spans] == [("notes", "first paragraph\n\nsecond paragraph"), ("code", "x = 1"), ("text", "hi")]
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(InputError, match="bad.jsonl:1: each line must be a JSON object"):
        local_corpus([tmp_path / "bad.jsonl"])
    with pytest.raises(InputError, match="unsupported corpus file '.csv'"):
        (tmp_path / "a.csv").write_text("x")
        local_corpus([tmp_path / "a.csv"])


def test_a_hugging_face_dataset_folder_becomes_labelled_spans(tmp_path):
    folder = tmp_path / "my_ds"
    folder.mkdir()
    rows = [{"text": "First paragraph.\n\n\n\nSecond one.", "kind": "prose"}, {"text": "def f():\n\treturn 1", "kind": "code"},
            {"text": "First paragraph. Second one.", "kind": "prose"}]
    (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spans = hf_corpus(str(folder), region_field="kind")
    assert [(s.text, s.region) for s in spans] == [("First paragraph.\n\nSecond one.", "prose"),
                                                    ("def f():\n    return 1", "code")]  # cleaned; the third is a duplicate
    assert {s.region for s in hf_corpus(str(folder), rows=1)} == {"my_ds"}  # no region field: the dataset's name
    with pytest.raises(InputError, match="rows have no 'body' field"):
        hf_corpus(str(folder), text_field="body")
    local = tmp_path / "notes.txt"
    local.write_text("A note of mine.")
    both = corpus_spans(CorpusConfig(files=(str(local),), hf_dataset=str(folder), hf_region_field="kind"))
    assert [s.region for s in both] == ["notes", "prose", "code"]


def test_an_unreachable_hub_dataset_is_a_one_line_error(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as on a machine without internet, minus retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match="cannot read Hugging Face dataset 'nobody/no-such-dataset' split 'train'") as e:
        hf_corpus("nobody/no-such-dataset")
    assert "\n" not in str(e.value)
