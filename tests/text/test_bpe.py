"""BPE with the reference's fastBPE codes (../shared/data/reference_vtlm):
segmentations checked by hand against the merge table (see each case)."""

import pytest

from tests.conftest import shared_path
from vtlm_fairseq.text.bpe import BPEApplier, read_codes


@pytest.fixture(scope="module")
def reference_bpe():
    return BPEApplier(shared_path("data", "reference_vtlm", "bpe50k.codes"))


# Traced by hand with `grep -n "^left right " bpe50k.codes` (rank = line):
# kevlar: k e v l a r</w>; (l,a)=41 < (k,e)=428 < (la,r</w>)=1097; (e,v)=542
#   is blocked once k+e merged; no (ke,v), (v,la), (v,lar</w>) -> ke v lar
# quakt: (q,u)=278, then (k,t</w>)=529, then (qu,a)=10302; (a,kt</w>)=21186
#   is blocked once qu+a merged; no (qua,kt</w>) -> qua kt
CASES = [
    ("a motorcyclist wearing a kevlar suit .", "a motorcyclist wearing a ke@@ v@@ lar suit ."),
    ("sie quakt", "sie qua@@ kt"),
    # frequent words stay whole
    ("a man in an orange hat starring at something .", "a man in an orange hat starring at something ."),
]


@pytest.mark.parametrize("line,expected", CASES)
def test_reference_codes_segment_as_fastbpe(reference_bpe, line, expected):
    assert reference_bpe([line]) == [expected]


def test_full_reference_pipeline_strips_accents_before_bpe(reference_bpe):
    """The released models saw lowercased, accent-stripped Moses tokens."""
    from vtlm_fairseq.text.tokenization import MosesPipeline

    tokens = MosesPipeline("de", lowercase=True, strip_accents=True)("Zwei Männer quakt.")
    assert tokens == "zwei manner quakt ."
    assert reference_bpe([tokens]) == ["zwei manner qua@@ kt ."]


def test_fastbpe_codes_become_subword_nmt_v02(tmp_path):
    codes = tmp_path / "codes"
    codes.write_text("i n 100\ne n</w> 90\n")
    assert read_codes(codes).read() == "#version: 0.2\ni n\ne n</w>\n"
    bpe = BPEApplier(codes)
    # "i n" merges only inside a word ("n" is not "n</w>"); "e n</w>" only at its end
    assert bpe(["in ten inn"]) == ["i@@ n t@@ en in@@ n"]


def test_malformed_fastbpe_line_named(tmp_path):
    codes = tmp_path / "codes"
    codes.write_text("i n 100\ne n</w> lots\n")
    with pytest.raises(ValueError, match=r"codes:2: not a fastBPE merge"):
        read_codes(codes)


@pytest.mark.parametrize("text", ["#version: 0.2\na b\nc\n", "#version: 0.2\n"], ids=["bad line", "no merges"])
def test_codes_subword_nmt_would_exit_on_are_errors(tmp_path, text):
    """subword-nmt calls sys.exit on them, which hangs a worker pool."""
    from vtlm_fairseq.text.corpus import CorpusError

    codes = tmp_path / "codes"
    codes.write_text(text)
    with pytest.raises(CorpusError, match=r"codes(:3: not a subword-nmt merge|: no BPE merges)"):
        BPEApplier(codes)
