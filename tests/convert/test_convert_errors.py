"""vtlm-convert-checkpoint on what is not a reference checkpoint, or with
options that do not fit it: one line naming the file, exit status 2, and
nothing written."""

import logging
import re

import pytest
import torch

from tests.conftest import shared_path
from vtlm_fairseq.cli import convert_checkpoint


def reference(name):
    return shared_path("fixtures", "reference_vtlm", "checkpoints", f"{name}.pth")


def run_cli(argv, caplog):
    """(exit status, the error lines logged)."""
    caplog.set_level(logging.INFO)
    with pytest.raises(SystemExit) as e:
        convert_checkpoint.cli_main([str(a) for a in argv])
    return e.value.code, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_fairseq_checkpoint_of_this_plugin_is_named_as_such(vtlm_checkpoint, tmp_path, caplog):
    """It died with KeyError 'dico_id2word'."""
    status, errors = run_cli([vtlm_checkpoint, tmp_path / "out"], caplog)
    assert status == 2 and len(errors) == 1
    assert f"{vtlm_checkpoint}: a fairseq checkpoint of this plugin" in errors[0]
    assert "not a reference (XLM) one" in errors[0]
    assert not (tmp_path / "out").exists()


def truncated(tmp_path):
    data = reference("vtlm_pretrained").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    return path


def saved(tmp_path, obj):
    path = tmp_path / "other.pth"
    torch.save(obj, path)
    return path


def with_repeated_word(tmp_path):
    """The reference vocabulary with one word under two ids."""
    from vtlm_fairseq.convert.safe_load import load_reference_checkpoint

    ckpt = load_reference_checkpoint(reference("vtlm_pretrained"))
    id2word = ckpt["dico_id2word"]
    first, second = sorted(id2word)[-2:]
    id2word[second] = id2word[first]
    return saved(tmp_path, ckpt)


def text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    return path


@pytest.mark.parametrize(
    "make, options, message",
    [
        (lambda t: t / "nothing.pth", [], r"nothing\.pth: no such reference checkpoint"),
        (text_file, [], r"notes\.txt: not a reference"),
        (truncated, [], r"truncated\.pth: not a (readable |complete )?reference checkpoint"),
        (lambda t: saved(t, [torch.zeros(2)]), [], r"other\.pth: not a reference \(XLM\) checkpoint: it holds a list"),
        (lambda t: saved(t, {"model": {}}), [], r"other\.pth: not a reference \(XLM\) checkpoint: no dico_id2word"),
        (with_repeated_word, [], r"other\.pth: dico_id2word has '.+' under two ids"),
        (lambda t: reference("vtlm_pretrained"), ["--kind", "mmt"], r"--kind mmt, but the file holds an encoder"),
        (lambda t: reference("mmt_finetuned_from_vtlm"), ["--kind", "tlm"],
         r"--kind tlm, but the file holds an encoder-decoder"),
        (lambda t: reference("vtlm_pretrained"), ["--source-lang", "fr"], r"vtlm_pretrained\.pth: no language fr"),
        (lambda t: reference("vtlm_pretrained"), ["--source-lang", "de"], r"source and target language are both"),
    ],
)  # fmt: skip
def test_bad_inputs_are_one_line(tmp_path, caplog, make, options, message):
    status, errors = run_cli([make(tmp_path), tmp_path / "out", *options], caplog)
    assert status == 2 and len(errors) == 1
    assert re.search(message, errors[0]), errors[0]
    assert not (tmp_path / "out").exists()


def test_output_folder_that_is_a_file_or_holds_a_checkpoint(tmp_path, caplog):
    (tmp_path / "file").write_text("x")
    status, errors = run_cli([reference("tlm_pretrained"), tmp_path / "file"], caplog)
    assert status == 2 and errors[-1].endswith("file: not a folder (the output folder)")
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"mine")
    status, errors = run_cli([reference("tlm_pretrained"), out], caplog)
    assert status == 2 and "checkpoint.pt: exists already; use --force" in errors[-1]
    assert (out / "checkpoint.pt").read_bytes() == b"mine"
    status, _ = run_cli([reference("tlm_pretrained"), out, "--force"], caplog)
    assert status == 0 and (out / "checkpoint.pt").read_bytes() != b"mine"

