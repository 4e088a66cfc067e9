"""Caption augmentation: determinism, never empty, real changes, synonym table, back-translation hook."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tfduch.augment import text as ta
from tfduch.errors import ConfigError

CAPTION = "Many white airplanes are parked near a long terminal building at the airport ."
SMALL_TABLE = {
    "airplanes": ["planes", "aircraft", "jets"],
    "parked": ["docked", "stationed"],
    "terminal": ["concourse"],
    "building": ["structure", "edifice"],
    "airport": ["airfield"],
}


def _all(table=SMALL_TABLE):
    return {
        "synonym": ta.SynonymReplacement(n=2, table=table),
        "delete": ta.RandomDeletion(p=0.3),
        "swap": ta.RandomSwap(n=2),
        "eda": ta.build_text_augmenter("eda", synonym_table=table),
    }


@pytest.mark.parametrize("name", ["synonym", "delete", "swap", "eda"])
def test_deterministic_given_rng(name):
    augmenter = _all()[name]
    assert isinstance(augmenter, ta.TextAugmenter)
    runs = [[augmenter(CAPTION, np.random.default_rng(seed)) for seed in range(8)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1  # and the seed matters


@pytest.mark.parametrize("name", ["synonym", "delete", "swap", "eda"])
def test_changes_something(name):
    augmenter = _all()[name]
    changed = [augmenter(CAPTION, np.random.default_rng(seed)) != CAPTION for seed in range(20)]
    assert sum(changed) >= 15


def test_swap_and_synonym_always_change_a_caption_with_distinct_words():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        assert ta.RandomSwap(n=1)(CAPTION, rng) != CAPTION
        assert ta.SynonymReplacement(n=1, table=SMALL_TABLE)(CAPTION, rng) != CAPTION


@pytest.mark.parametrize("text", ["airport", "Runway .", ".", "a b", "x"])
def test_never_empty(text):
    augmenters = [*_all().values(), ta.RandomDeletion(p=0.99)]
    for augmenter in augmenters:
        for seed in range(10):
            out = augmenter(text, np.random.default_rng(seed))
            assert out.strip(), (augmenter, text)


def test_deletion_keeps_at_least_one_word():
    for seed in range(30):
        out = ta.RandomDeletion(p=0.99)(CAPTION, np.random.default_rng(seed))
        assert any(ch.isalpha() for ch in out)


def test_empty_input_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        ta.RandomSwap()("  ", np.random.default_rng(0))


def test_synonym_replacement_keeps_case_and_protected_words():
    table = {**SMALL_TABLE, "white": ["black"], "many": ["few"]}
    for seed in range(10):
        out = ta.SynonymReplacement(n=10, table=table)("Many white Airplanes", np.random.default_rng(seed))
        words = out.split()
        assert words[:2] == ["Many", "white"]  # protected: changing them changes the image described
        assert words[2] in {"Planes", "Aircraft", "Jets"}


def test_factory_names_and_specs():
    assert isinstance(ta.build_text_augmenter("delete"), ta.RandomDeletion)
    assert ta.build_text_augmenter({"name": "delete", "p": 0.25}) == ta.RandomDeletion(p=0.25)
    assert ta.build_text_augmenter({"name": "swap", "n": 3}) == ta.RandomSwap(n=3)
    assert isinstance(ta.build_text_augmenter("synonym"), ta.SynonymReplacement)
    eda = ta.build_text_augmenter({"name": "eda", "p_delete": 0.2, "n_swaps": 2})
    assert [type(a) for a in eda.augmenters] == [ta.SynonymReplacement, ta.RandomDeletion, ta.RandomSwap]
    assert eda.augmenters[1] == ta.RandomDeletion(p=0.2)
    composed = ta.build_text_augmenter(["swap", {"name": "delete", "p": 0.5}])
    assert composed == ta.Compose([ta.RandomSwap(), ta.RandomDeletion(p=0.5)])
    assert ta.build_text_augmenter({"name": "compose", "ops": ["swap"]}) == ta.Compose([ta.RandomSwap()])
    with pytest.raises(ConfigError, match="Unknown text augmentation"):
        ta.build_text_augmenter("shuffle")
    with pytest.raises(ConfigError, match="Invalid"):
        ta.build_text_augmenter({"name": "delete", "q": 1})
    with pytest.raises(ConfigError, match="Invalid"):
        ta.build_text_augmenter({"name": "delete", "p": 1.5})


class FakeTranslator:
    """Reverses word order on the way to the pivot and back, recording each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, str]] = []

    def __call__(self, texts: list[str], src: str, tgt: str) -> list[str]:
        self.calls.append((len(texts), src, tgt))
        return [" ".join(reversed(t.split())) + (" (übersetzt)" if tgt == "de" else "") for t in texts]


def test_back_translation_plug_in():
    fake = FakeTranslator()
    augmenter = ta.build_text_augmenter({"name": "backtranslate", "pivot": "de"}, translate_fn=fake)
    assert isinstance(augmenter, ta.BackTranslation)
    texts = ["a b c", "planes at the airport"]
    out = ta.augment_texts(augmenter, texts, np.random.default_rng(0))
    assert fake.calls == [(2, "en", "de"), (2, "de", "en")]  # one batched call each way
    assert out == ["(übersetzt) a b c", "(übersetzt) planes at the airport"]
    assert augmenter("x y", np.random.default_rng(0)) == "(übersetzt) x y"
    # inside a Compose the whole batch still reaches the translator at once
    fake.calls.clear()
    combo = ta.Compose([augmenter, ta.RandomSwap(n=0)])
    assert ta.augment_texts(combo, texts, np.random.default_rng(0)) == out
    assert fake.calls == [(2, "en", "de"), (2, "de", "en")]


def test_back_translation_keeps_original_when_translation_is_empty_and_checks_length():
    empty = ta.BackTranslation(lambda texts, src, tgt: ["" for _ in texts])
    assert empty("airport", np.random.default_rng(0)) == "airport"
    short = ta.BackTranslation(lambda texts, src, tgt: texts[:-1])
    with pytest.raises(ValueError, match="one string per input"):
        short.batch(["a", "b"], np.random.default_rng(0))


def test_no_translator_error_explains_how_to_plug_one_in():
    with pytest.raises(ConfigError, match="translate_fn"):
        ta.BackTranslation(translate_fn=None)
    with pytest.raises(ConfigError, match="translate_fn"):
        ta.build_text_augmenter("backtranslate")


@pytest.fixture(scope="module")
def embedding_table(tmp_path_factory):
    pytest.importorskip("tensorflow")
    cache = tmp_path_factory.mktemp("tfduch_cache")
    table = ta.embedding_synonym_table(cache_dir=cache)
    return cache, table


def test_embedding_synonym_table_is_plausible(embedding_table):
    _, table = embedding_table
    from tfduch.encoders.minilm import minilm_model_dir

    vocab = set((minilm_model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines())
    for word in ("airplane", "building", "trees", "river"):
        neighbours = table[word]
        assert neighbours, word
        for other in neighbours:
            assert other != word and other in vocab
            assert other not in ta.STOPWORDS and other not in ta.PROTECTED_WORDS
            assert not other.startswith(word[:4])  # inflections ("airplanes") are filtered
    assert "white" not in table and "the" not in table


def test_embedding_synonym_table_is_cached_atomically(embedding_table):
    cache, table = embedding_table
    files = list((cache / "text_augment").glob("*.json"))
    assert len(files) == 1 and not list((cache / "text_augment").glob("*.tmp"))
    payload = json.loads(files[0].read_text(encoding="utf-8"))
    assert payload["neighbours"] == table
    ta._cached_table.cache_clear()
    assert ta.embedding_synonym_table(cache_dir=cache) == table  # read back from disk


def test_default_synonym_replacement_uses_embedding_table(embedding_table, monkeypatch):
    cache, _ = embedding_table
    monkeypatch.setenv("TFDUCH_CACHE", str(cache))
    out = ta.SynonymReplacement(n=1)("airplane", np.random.default_rng(0))
    assert out != "airplane" and out in ta.embedding_synonym_table()["airplane"]
