"""Language ids of the embeddings: the pair's languages in sorted order, then
the image pseudo-language (de=0, en=1, img=2 for en-de, as the reference)."""

from typing import Dict

IMG_LANG = "img"


def language_ids(source_lang: str, target_lang: str) -> Dict[str, int]:
    langs = sorted({source_lang, target_lang})
    ids = {lang: i for i, lang in enumerate(langs)}
    ids[IMG_LANG] = len(langs)
    return ids
