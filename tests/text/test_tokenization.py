from vtlm_fairseq.text.tokenization import MosesPipeline, remove_bpe, strip_accents


def test_paper_pipeline_lowercases_strips_accents_and_tokenises():
    de = MosesPipeline("de")
    assert de("Ein Mädchen hält einen grünen Schläger.") == (
        "ein madchen halt einen grunen schlager ."
    )
    # punctuation normalised, no escaping of quotes (as XLM's tokenize.sh -no-escape)
    assert MosesPipeline("en")('A "red" bat, isn\'t it?') == 'a " red " bat , isn \'t it ?'


def test_options_keep_case_and_accents():
    assert MosesPipeline("de", lowercase=False, strip_accents=False)("Grüße!") == "Grüße !"
    assert MosesPipeline("de", lowercase=True, strip_accents=False)("Grüße!") == "grüße !"
    assert MosesPipeline("de", lowercase=False, strip_accents=True)("Grüße!") == "Gruße !"


def test_line_breaks_inside_a_sentence_become_spaces():
    # any of these would split one corpus line into two in fairseq's reader
    for brk in ["\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]:
        assert MosesPipeline("en")(f"a{brk}b") == "a b"


def test_a_tab_separates_words():
    assert MosesPipeline("en")("two\twords") == "two words"


def test_strip_accents_and_remove_bpe():
    assert strip_accents("Café crème") == "Cafe creme"
    assert remove_bpe("baum@@ wo@@ lle auf") == "baumwolle auf"
