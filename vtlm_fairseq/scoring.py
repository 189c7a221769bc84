"""Translation scores, named for what they are:

- ``bleu_detok``: sacreBLEU on detokenised hypotheses against the raw
  references (the standard; its signature says how it was computed);
- ``bleu_tok_lc``: the reference code's BLEU, sacreBLEU with no tokenisation
  on Moses-tokenised, lowercased, accent-stripped text after undoing BPE;
- ``chrf``: sacreBLEU's chrF on detokenised text;
- ``meteor`` (given a ``Meteor``): METEOR 1.5, the jar, on detokenised,
  lowercased text, x100 like the others (its signature names the modules);
- ``ambiguous_word_accuracy`` (toy world) when annotations are given.
"""

import re
from typing import Dict, List, Optional, Sequence

import sacrebleu
from sacremoses import MosesDetokenizer

from .text.corpus import CorpusError, read_lines
from .text.tokenization import MosesPipeline, remove_bpe
from .errors import InputError
from .meteor import Meteor

_GENERATE_LINE = re.compile(r"^H-(\d+)\t[^\t]*\t(.*)$")
# any line fairseq-generate writes per sentence (source, target, hypothesis,
# detokenised, positional scores, alignment)
_GENERATE_ANY = re.compile(r"^[STHDPA]-\d+(\t|$)")


def read_hypotheses(path) -> List[str]:
    """Hypotheses in corpus order from fairseq-generate output (``H-<id>``
    lines, any order) or from a plain file (one per line). An id given twice
    (two outputs in one file), a missing id and a malformed ``H-`` line are
    errors naming the file and lines."""
    lines = read_lines(path, allow_empty=True)
    if not lines:
        raise CorpusError(f"{path}: empty file (no hypotheses)")
    found, line_of = {}, {}
    first_generate = malformed = None  # line numbers
    for lineno, line in enumerate(lines, start=1):
        is_generate = _GENERATE_ANY.match(line) is not None
        first_generate = first_generate or (lineno if is_generate else None)
        m = _GENERATE_LINE.match(line)
        if m:
            i = int(m.group(1))
            if i in found:
                raise CorpusError(
                    f"{path}:{lineno}: a second hypothesis for sentence {i} (the first is on line {line_of[i]}): "
                    "two fairseq-generate outputs in one file?"
                )
            found[i], line_of[i] = m.group(2), lineno
        elif is_generate and line.startswith("H-"):
            malformed = malformed or lineno
    if not found:
        if first_generate:
            raise CorpusError(f"{path}:{first_generate}: fairseq-generate output without any H- (hypothesis) line")
        return lines
    if malformed:
        raise CorpusError(f"{path}:{malformed}: not a fairseq-generate hypothesis line ('H-ID<TAB>SCORE<TAB>TEXT')")
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        raise CorpusError(
            f"{path}: no hypothesis for sentence ids {missing[:10]}{' ...' if len(missing) > 10 else ''} "
            f"({len(missing)} of 0..{max(found)} missing)"
        )
    return [found[i] for i in range(len(found))]


def check_counts(hyp_path, hypotheses: Sequence, other_path, others: Sequence, what: str) -> None:
    """One hypothesis per line of the other file (references, annotations)."""
    if len(hypotheses) != len(others):
        raise CorpusError(f"{hyp_path}: {len(hypotheses)} hypotheses for {len(others)} {what} in {other_path}")


def score(
    hypotheses: Sequence[str],
    references: Sequence[str],
    lang: str,
    lowercase: Optional[bool] = None,
    annotations: Optional[Sequence[List[dict]]] = None,
    meteor: Optional[Meteor] = None,
) -> Dict[str, object]:
    """``hypotheses`` as the model writes them (BPE'd, tokenised);
    ``references`` raw. ``lowercase`` None: case-insensitive detok BLEU when
    the hypotheses have no capital letter (a lowercased model). ``meteor``:
    adds METEOR (one JVM for the corpus); None skips it."""
    if len(hypotheses) != len(references):
        raise InputError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    tokenised = [remove_bpe(h) for h in hypotheses]
    detok = MosesDetokenizer(lang=lang)
    detokenised = [detok.detokenize(h.split()) for h in tokenised]
    if lowercase is None:
        lowercase = not any(c.isupper() for h in tokenised for c in h)
    bleu = sacrebleu.metrics.BLEU(lowercase=lowercase)
    detok_bleu = bleu.corpus_score(detokenised, [list(references)])
    paper = MosesPipeline(lang, lowercase=True, strip_accents=True)
    # tokenised on purpose: force=True keeps sacreBLEU from warning about it
    tok_bleu = sacrebleu.metrics.BLEU(tokenize="none", force=True).corpus_score(
        [paper(h) if h.strip() else "" for h in tokenised], [[paper(r) for r in references]]
    )
    chrf = sacrebleu.metrics.CHRF(lowercase=lowercase)
    chrf_score = chrf.corpus_score(detokenised, [list(references)])
    result = {
        "sentences": len(hypotheses),
        "bleu_detok": round(detok_bleu.score, 2),
        "bleu_detok_signature": str(bleu.get_signature()),
        "bleu_tok_lc": round(tok_bleu.score, 2),
        "chrf": round(chrf_score.score, 2),
        "chrf_signature": str(chrf.get_signature()),
    }
    if meteor is not None:
        meteor_score = meteor.corpus_score(detokenised, references)
        result["meteor"] = round(100 * meteor_score.score, 2)
        result["meteor_signature"] = meteor_score.signature
    if annotations is not None:
        from .toy_world.ambiguity import ambiguous_word_accuracy

        result["ambiguous_word_accuracy"] = ambiguous_word_accuracy(tokenised, annotations)["accuracy"]
    return result
