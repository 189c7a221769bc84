"""Translation scores, named for what they are:

- ``bleu_detok``: sacreBLEU on detokenised hypotheses against the raw
  references (the standard; its signature says how it was computed);
- ``bleu_tok_lc``: the reference code's BLEU, sacreBLEU with no tokenisation
  on Moses-tokenised, lowercased, accent-stripped text after undoing BPE;
- ``chrf``: sacreBLEU's chrF on detokenised text;
- ``ambiguous_word_accuracy`` (toy world) when annotations are given.
"""

import re
from typing import Dict, List, Optional, Sequence

import sacrebleu
from sacremoses import MosesDetokenizer

from .data.corpus import CorpusError, read_lines
from .data.tokenization import MosesPipeline, remove_bpe

_GENERATE_LINE = re.compile(r"^H-(\d+)\t[^\t]*\t(.*)$")


def read_hypotheses(path) -> List[str]:
    """Hypotheses in corpus order from fairseq-generate output (``H-<id>``
    lines, any order) or from a plain file (one per line)."""
    lines = read_lines(path, allow_empty=True)
    found = {}
    for line in lines:
        m = _GENERATE_LINE.match(line)
        if m:
            found[int(m.group(1))] = m.group(2)
    if not found:
        return lines
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        raise CorpusError(f"{path}: no hypothesis for sentence ids {missing[:10]}")
    return [found[i] for i in range(len(found))]


def score(
    hypotheses: Sequence[str],
    references: Sequence[str],
    lang: str,
    lowercase: Optional[bool] = None,
    annotations: Optional[Sequence[List[dict]]] = None,
) -> Dict[str, object]:
    """``hypotheses`` as the model writes them (BPE'd, tokenised);
    ``references`` raw. ``lowercase`` None: case-insensitive detok BLEU when
    the hypotheses have no capital letter (a lowercased model)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
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
    if annotations is not None:
        from .toy_world.ambiguity import ambiguous_word_accuracy

        result["ambiguous_word_accuracy"] = ambiguous_word_accuracy(tokenised, annotations)["accuracy"]
    return result
