"""Report text cleaning for CLIP: pure functions, each step switched by the ``text`` params section.

Steps, in this order (:func:`clean_text`): :func:`drop_redactions` (``text.drop_redactions``),
:func:`normalize_whitespace` (``text.normalize_whitespace``), lower-casing (``text.lowercase``).
:func:`compose_text` joins the cleaned sections in ``text.section_order``; :func:`count_tokens`
measures them with open_clip's CLIP BPE tokenizer (bundled vocabulary, offline).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from cxrclip.errors import CxrclipError

#: Report sections read from Open-i ``AbstractText@Label`` / the Kaggle CSV columns.
SECTIONS = ("comparison", "indication", "findings", "impression")

#: The de-identification token of the IU X-ray collection (runs like ``XXXXXXXX`` included).
_REDACTION = re.compile(r"X{4,}")
_SPLIT_KEEP_SEPARATORS = re.compile(r"(\s+)")
_SENTENCE_PUNCT = ".,;:!?"
_WHITESPACE = re.compile(r"\s+")
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")  # zero-width, BOM, soft hyphen


def drop_redactions(text: str) -> str:
    """Remove every ``XXXX`` redaction token, also inside words, without leaving stray spaces.

    Works word by word (whitespace-separated pieces; the original separators are kept):

    - ``XXXX`` is deleted wherever it occurs: ``x-XXXX`` -> ``x-``, ``XXXX-year-old`` -> ``-year-old``,
      ``ComparisXXXX`` -> ``Comparis``;
    - a word that becomes empty is dropped together with the space before it;
    - a word left with punctuation only (``XXXX.``, ``XXXX,``, ``(XXXX).``, ``XXXX/XXXX.``) keeps only
      its last sentence mark (``.,;:!?``), glued to the previous word unless that word already ends
      with one, so ``Inferior XXXX XXXX XXXX.`` -> ``Inferior.`` and ``Stable. XXXX.`` -> ``Stable.``.

    The result contains no ``XXXX`` and no double space that was not in the input.
    """
    if "XXXX" not in text:
        return text
    pieces = _SPLIT_KEEP_SEPARATORS.split(text)
    leading = ""
    if pieces and pieces[0] == "":  # text starts with whitespace: keep it as is
        pieces = pieces[1:]
        leading = pieces.pop(0) if pieces else ""
    out: list[str] = []  # alternating word, separator, word, ... (starts with a word)
    pending_sep = ""
    for i, piece in enumerate(pieces):
        if i % 2 == 1:  # a separator
            pending_sep = piece
            continue
        word = _REDACTION.sub("", piece)
        if word != piece and not any(ch.isalnum() for ch in word):
            marks = [ch for ch in word if ch in _SENTENCE_PUNCT]
            if marks and out and out[-1] and out[-1][-1] not in _SENTENCE_PUNCT:
                out[-1] += marks[-1]
            continue  # dropped with its preceding separator
        if out:
            out.append(pending_sep)
        out.append(word)
    return leading + "".join(out)


def normalize_whitespace(text: str) -> str:
    """NFKC-normalise ``text``, drop zero-width characters, turn every whitespace run (tabs,
    newlines, NBSP, ...) into one space and strip both ends."""
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", text)
    return _WHITESPACE.sub(" ", text).strip()


def clean_text(text: str, text_cfg: Mapping[str, Any]) -> str:
    """Apply the enabled cleaning steps of ``text_cfg`` (the params ``text`` section) to ``text``.

    Without whitespace normalisation the result is still stripped of leading/trailing whitespace.
    """
    if text_cfg.get("drop_redactions", True):
        text = drop_redactions(text)
    if text_cfg.get("normalize_whitespace", True):
        text = normalize_whitespace(text)
    else:
        text = text.strip()
    if text_cfg.get("lowercase", False):
        text = text.lower()
    return text


def check_section_order(section_order: Sequence[str]) -> list[str]:
    """Return ``section_order`` as a list; raise :class:`CxrclipError` for an unknown section name."""
    order = list(section_order)
    unknown = [name for name in order if name not in SECTIONS]
    if unknown or not order:
        raise CxrclipError(
            f"params.yaml: text.section_order {order!r} must list sections among {list(SECTIONS)}"
        )
    return order


def compose_text(
    sections: Mapping[str, str], section_order: Sequence[str] = ("impression", "findings")
) -> str:
    """Join the non-empty ``sections`` (already cleaned) in ``section_order`` with single spaces."""
    order = check_section_order(section_order)
    parts = [(sections.get(name) or "").strip() for name in order]
    return " ".join(p for p in parts if p)


def report_text(sections: Mapping[str, str], text_cfg: Mapping[str, Any]) -> str:
    """Clean each section named in ``text_cfg['section_order']`` and compose the CLIP text."""
    order = check_section_order(text_cfg.get("section_order", ("impression", "findings")))
    cleaned = {name: clean_text(sections.get(name) or "", text_cfg) for name in order}
    return compose_text(cleaned, order)


@lru_cache(maxsize=1)
def clip_tokenizer() -> Any:
    """open_clip's ``SimpleTokenizer`` (CLIP BPE, bundled vocabulary), created once.

    When open_clip is not imported yet, its self-contained ``tokenizer.py`` is loaded on its own:
    importing the whole ``open_clip`` package (every model family) costs seconds that a
    text-only stage does not need. Same code, same vocabulary, same token ids.
    """
    if "open_clip" not in sys.modules:
        try:
            spec = importlib.util.find_spec("open_clip")
            locations = list(spec.submodule_search_locations or []) if spec else []
            path = Path(locations[0]) / "tokenizer.py" if locations else None
            if path is not None and path.is_file():
                mod_spec = importlib.util.spec_from_file_location("_cxrclip_clip_tokenizer", path)
                if mod_spec is not None and mod_spec.loader is not None:
                    module = importlib.util.module_from_spec(mod_spec)
                    mod_spec.loader.exec_module(module)
                    return module.SimpleTokenizer()
        except ImportError:  # pragma: no cover - fall back to the package import below
            pass
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def count_tokens(texts: Iterable[str], context_length: int = 77) -> tuple[np.ndarray, np.ndarray]:
    """CLIP token counts of ``texts`` with open_clip's ``SimpleTokenizer`` (the ViT-B-32 tokenizer).

    Returns ``(n_tokens, truncated)``: int64 and bool arrays of shape (n_texts,). ``n_tokens``
    includes the start and end tokens and is measured before truncation; ``truncated`` is
    ``n_tokens > context_length``. Each distinct text is encoded once (reports repeat a lot).
    """
    texts = list(texts)
    tokenizer = clip_tokenizer()
    lengths: dict[str, int] = {}
    for text in texts:
        if text not in lengths:
            lengths[text] = len(tokenizer.encode(text)) + 2  # + start-of-text, end-of-text
    n_tokens = np.fromiter((lengths[t] for t in texts), dtype=np.int64, count=len(texts))
    return n_tokens, n_tokens > int(context_length)
