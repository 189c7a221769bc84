"""The paper's text pipeline: Moses normalisation and tokenisation
(sacremoses), then optional lowercasing and accent stripping (XLM's
``lowercase_and_remove_accent``), and BPE pieces joined with ``@@ ``."""

import re
import unicodedata
from functools import lru_cache
from typing import List

from sacremoses import MosesPunctNormalizer, MosesTokenizer

# Characters that Python's text mode or str.splitlines() treat as line
# breaks; one inside a sentence would shift every later line of the corpus.
# Tabs too: Moses removes them as control characters, joining two words.
_LINE_BREAKS = re.compile("[\t\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_SPACES = re.compile(r"\s+")


def strip_accents(text: str) -> str:
    text = unicodedata.normalize("NFD", text)
    return "".join(c for c in text if unicodedata.category(c) != "Mn")


class MosesPipeline:
    """Normalise punctuation, remove non-printing characters, tokenise
    (no escaping, as XLM's tokenize.sh), then optionally lowercase and strip
    accents."""

    def __init__(self, lang: str, lowercase: bool = True, strip_accents: bool = True):
        self.lang = lang
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self._normalizer = MosesPunctNormalizer(
            lang=lang, pre_replace_unicode_punct=True, post_remove_control_chars=True
        )
        self._tokenizer = MosesTokenizer(lang=lang)

    def __call__(self, line: str) -> str:
        line = _LINE_BREAKS.sub(" ", line)
        line = self._normalizer.normalize(line)
        line = self._tokenizer.tokenize(line, escape=False, return_str=True)
        if self.lowercase:
            line = line.lower()
        if self.strip_accents:
            line = strip_accents(line)
        return _SPACES.sub(" ", line).strip()


@lru_cache(maxsize=None)
def moses_languages() -> List[str]:
    """The languages with Moses rules (non-breaking prefixes) in sacremoses;
    any other code is tokenised by the generic rules, without a word."""
    from sacremoses.corpus import NonbreakingPrefixes

    return sorted(set(NonbreakingPrefixes().available_langs.values()))


@lru_cache(maxsize=None)
def moses_pipeline(lang: str, lowercase: bool, strip_accents: bool) -> MosesPipeline:
    return MosesPipeline(lang, lowercase, strip_accents)


def tokenize_lines(args):
    """Pool-friendly: (lang, lowercase, strip_accents, lines) -> tokenised lines."""
    lang, lowercase, strip_accents, lines = args
    pipeline = moses_pipeline(lang, lowercase, strip_accents)
    return [pipeline(line) for line in lines]


def remove_bpe(line: str, separator: str = "@@") -> str:
    return (line + " ").replace(separator + " ", "").rstrip()


def normalize_pretokenized_lines(args):
    """Pool-friendly, as tokenize_lines, for text that is tokenised already:
    only what the reference does to such text (unicode punctuation replaced,
    control characters removed, then lowercasing and accent stripping); Moses
    normalisation would move its punctuation and tokenisation split it again."""
    lang, lowercase, accents, lines = args
    normalizer = MosesPunctNormalizer(lang=lang)
    out = []
    for line in lines:
        # whitespace first: line breaks inside a line would shift the corpus,
        # and a tab removed as a control character would join two tokens
        line = normalizer.remove_control_chars(normalizer.replace_unicode_punct(" ".join(line.split())))
        if lowercase:
            line = line.lower()
        if accents:
            line = strip_accents(line)
        out.append(" ".join(line.split()))
    return out
