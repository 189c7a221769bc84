"""The fairseq-hydra-train configs of examples/multi30k/config are the shell
recipes: each composes to the settings its recipe gives fairseq-train (dry,
all six), and a VTLM pre-training and an MMT fine-tuning run under hydra are
the recipe's runs update for update (tiny model, toy world). Validation BLEU
(--eval-bleu) works for MMT and NMT and chooses checkpoint_best.pt."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, fairseq_command, run_fairseq

CONFIG_DIR = REPO / "examples" / "multi30k" / "config"
USER_DIR = str(REPO / "vtlm_fairseq")
# config -> (shell recipe, its leading arguments); DATA, SAVE, PRE, FEATS are
# the data-dependent settings, given to hydra as overrides
RECIPES = {
    "pretrain_tlm": ("pretrain.sh", ["tlm", "DATA", "SAVE"]),
    "pretrain_vtlm": ("pretrain.sh", ["vtlm", "DATA", "SAVE", "--region-features", "FEATS"]),
    "finetune_nmt": ("finetune.sh", ["nmt", "DATA", "PRE", "SAVE"]),
    "finetune_mmt": ("finetune.sh", ["mmt", "DATA", "PRE", "SAVE", "--region-features", "FEATS"]),
    "from_scratch_nmt": ("from_scratch.sh", ["DATA", "SAVE"]),
    "from_scratch_mmt": ("from_scratch.sh", ["DATA", "SAVE", "--region-features", "FEATS"]),
}
HYDRA_KEYS = {"DATA": "task.data", "SAVE": "checkpoint.save_dir", "PRE": "model.pretrained_checkpoint",
              "FEATS": "task.region_features"}  # fmt: skip
GROUPS = ("common", "task", "model", "criterion", "optimizer", "lr_scheduler", "optimization", "dataset",
          "checkpoint", "distributed_training")  # fmt: skip


def test_every_config_has_its_recipe():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted(RECIPES)


def as_flag(key, value):
    """fairseq-train's form of a hydra setting."""
    name = "--arch" if key == "model._name" else "--" + key.rsplit(".", 1)[1].replace("_", "-")
    if value is True:
        return [name]
    return [name, ",".join(map(str, value)) if isinstance(value, list) else str(value)]


def as_override(key, value):
    """The hydra override of a setting, whether the config lists the key or not."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, list):
        text = "[" + ",".join(map(str, value)) + "]"
    elif isinstance(value, str):
        text = "'" + value + "'"
    else:
        text = str(value)
    return f"++{key}={text}"


def recipe_argv(config, tmp_path, values):
    """The fairseq-train arguments of the shell recipe, captured by a stand-in
    fairseq-train on PATH."""
    script, args = RECIPES[config]
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "fairseq-train"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$ARGV_OUT"\n')
    fake.chmod(0o755)
    out = tmp_path / f"{config}.argv"
    env = {k: v for k, v in os.environ.items() if k != "AVERAGE"}
    env.update(PATH=f"{bindir}:{env['PATH']}", ARGV_OUT=str(out))
    subprocess.run(["bash", str(REPO / "examples" / "multi30k" / script)] + [values.get(a, a) for a in args],
                   check=True, env=env)  # fmt: skip
    return out.read_text().split("\0")[:-1]


def argparse_cfg(argv):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    return convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))


def hydra_cfg(config, overrides):
    """The config fairseq-hydra-train composes and fairseq_cli.train completes
    (add_defaults once the plugin is imported)."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    import vtlm_fairseq  # noqa: F401  (what common.user_dir imports)

    GlobalHydra.instance().clear()
    hydra_init(config)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.1"):
        cfg = compose(config_name=config, overrides=overrides, return_hydra_config=True)
    run_dir = cfg.hydra.run.dir
    with open_dict(cfg):
        del cfg["hydra"]
    add_defaults(cfg)
    return cfg, run_dir


@pytest.mark.parametrize("config", sorted(RECIPES))
def test_config_composes_to_the_shell_recipe_settings(config, tmp_path):
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.models import ARCH_MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY
    from omegaconf import OmegaConf

    values = {k: str(tmp_path / k.lower()) for k in HYDRA_KEYS}
    argv = recipe_argv(config, tmp_path, values)
    _, args = RECIPES[config]
    overrides = [f"{HYDRA_KEYS[a]}={values[a]}" for a in args if a in HYDRA_KEYS]
    cfg, run_dir = hydra_cfg(config, overrides + [f"common.user_dir={USER_DIR}"])
    assert cfg.task._name in TASK_REGISTRY and cfg.model._name in ARCH_MODEL_REGISTRY
    assert cfg.criterion._name in CRITERION_REGISTRY
    assert run_dir == values["SAVE"]  # hydra's .hydra/ and log beside the checkpoints
    expected = argparse_cfg(argv)
    for group in GROUPS:
        ours = OmegaConf.to_container(cfg[group], resolve=True)
        theirs = OmegaConf.to_container(expected[group], resolve=True)
        differ = {k: (v, theirs.get(k, "<absent>")) for k, v in ours.items() if v != theirs.get(k, "<absent>")}
        assert not differ, f"{config}.yaml {group} (hydra, shell recipe): {differ}"


def test_a_setting_left_unset_stops_the_run_naming_it(toy_data, tmp_path):
    """A ??? would not: fairseq fills the task config with its defaults
    (region_features None: NMT) before the task reads it."""
    from fairseq import tasks

    from vtlm_fairseq.errors import InputError

    data, _, _ = toy_data
    cfg, _ = hydra_cfg("finetune_mmt", [f"task.data={data}", f"checkpoint.save_dir={tmp_path}",
                                        f"model.pretrained_checkpoint={tmp_path}/p.pt"])  # fmt: skip
    with pytest.raises(InputError, match="task.region_features="):
        tasks.setup_task(cfg.task)


# -- the runs: shell recipe and hydra config with the same settings --

TINY = {
    "model.encoder_layers": 2, "model.encoder_embed_dim": 32, "model.encoder_ffn_embed_dim": 64,
    "model.encoder_attention_heads": 2, "dataset.batch_size": 16, "dataset.num_workers": 0,
    "common.cpu": True, "common.log_format": "json", "common.log_interval": 1,
}  # fmt: skip
# (hydra's model._name=vtlm_tiny alone keeps vtlm_base's sizes: fairseq fills
# a hydra model config with the dataclass defaults before the architecture
# function runs, so the sizes are given)
PRETRAIN = {**TINY, "model._name": "vtlm_tiny", "optimization.max_update": 4, "common.seed": 7,
            "dataset.validate_interval_updates": 2, "checkpoint.save_interval_updates": 2}  # fmt: skip
FINETUNE = {
    **TINY, "model._name": "vtlm_translation_tiny", "model.decoder_layers": 2, "optimization.max_update": 9,
    "optimization.lr": [1e-3], "common.seed": 3, "dataset.validate_interval_updates": 3,
    "checkpoint.save_interval_updates": 3, "task.eval_bleu_detok": "moses",
    "task.eval_bleu_args": '{"beam": 1, "max_len_a": 1.2, "max_len_b": 10}',
}  # fmt: skip
VARYING = re.compile(r"wps|ups|wall|gb_free")  # timings


def records(log):
    """(tag, stats) of the json progress lines (the configs log as fairseq-train)."""
    out = []
    for tag, text in re.findall(r"\| (train_inner|train|valid) \| (\{.*\})$", log, re.M):
        stats = json.loads(text)
        out.append((tag, {k: v for k, v in stats.items() if not VARYING.search(k)}))
    return out


def run_both(config, tmp_path, data_values, settings):
    """Logs and save dirs of the shell recipe and of fairseq-hydra-train."""
    script, args = RECIPES[config]
    shell_save, hydra_save = tmp_path / "shell", tmp_path / "hydra"
    values = {**data_values, "SAVE": str(shell_save)}
    flags = [f for k, v in settings.items() for f in as_flag(k, v)]
    shell = subprocess.run(["bash", str(REPO / "examples" / "multi30k" / script)]
                           + [values.get(a, a) for a in args] + flags,
                           capture_output=True, text=True)  # fmt: skip
    assert shell.returncode == 0, shell.stderr[-3000:]
    values["SAVE"] = str(hydra_save)
    overrides = [f"{HYDRA_KEYS[a]}={values[a]}" for a in args if a in HYDRA_KEYS]
    overrides += [f"common.user_dir={USER_DIR}"] + [as_override(k, v) for k, v in settings.items()]
    # from another folder: the config's paths are given, hydra writes into the save dir
    command = [fairseq_command("fairseq-hydra-train"), "--config-dir", str(CONFIG_DIR), "--config-name", config]
    hydra = subprocess.run(command + overrides, capture_output=True, text=True, cwd=tmp_path)
    assert hydra.returncode == 0, hydra.stderr[-3000:]
    assert hydra.stdout == ""  # logs on stderr
    assert (hydra_save / ".hydra" / "config.yaml").is_file() and (hydra_save / "hydra_train.log").is_file()
    return shell.stdout + shell.stderr, hydra.stderr, shell_save, hydra_save


def same_weights(a, b):
    ma = torch.load(a, map_location="cpu", weights_only=False)["model"]
    mb = torch.load(b, map_location="cpu", weights_only=False)["model"]
    return ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.fixture(scope="module")
def vtlm_runs(toy_data, tmp_path_factory):
    data, store, _ = toy_data
    return run_both("pretrain_vtlm", tmp_path_factory.mktemp("vtlm"), {"DATA": str(data), "FEATS": str(store)},
                    PRETRAIN)  # fmt: skip


def test_vtlm_pretraining_under_hydra_is_the_shell_recipe_run(vtlm_runs):
    shell_log, hydra_log, shell_save, hydra_save = vtlm_runs
    shell = records(shell_log)
    assert [t for t, _ in shell].count("train_inner") == PRETRAIN["optimization.max_update"]
    assert any(t == "valid" for t, _ in shell) and "mrc_loss" in shell[0][1]
    assert records(hydra_log) == shell
    assert same_weights(shell_save / "checkpoint_last.pt", hydra_save / "checkpoint_last.pt")


@pytest.fixture(scope="module")
def mmt_runs(toy_data, vtlm_runs, tmp_path_factory):
    data, store, _ = toy_data
    pretrained = str(vtlm_runs[3] / "checkpoint_last.pt")
    return run_both("finetune_mmt", tmp_path_factory.mktemp("mmt"),
                    {"DATA": str(data), "FEATS": str(store), "PRE": pretrained}, FINETUNE)  # fmt: skip


def assert_best_by_bleu(log, save):
    """Every validation logs a BLEU; checkpoint_best.pt holds the best of them
    (the last validation reaching it: fairseq keeps the later of equals)."""
    valid = [s for t, s in records(log) if t == "valid"]
    assert valid and all("valid_bleu" in s for s in valid)
    bleus = [float(s["valid_bleu"]) for s in valid]
    best = torch.load(save / "checkpoint_best.pt", map_location="cpu", weights_only=False)
    assert best["extra_state"]["best"] == max(bleus)
    last_best = max(i for i, b in enumerate(bleus) if b == max(bleus))
    assert best["optimizer_history"][-1]["num_updates"] == int(valid[last_best]["valid_num_updates"])
    return valid


def test_mmt_finetuning_under_hydra_is_the_shell_recipe_run(mmt_runs):
    shell_log, hydra_log, shell_save, hydra_save = mmt_runs
    assert "initialised from" in hydra_log
    shell = records(shell_log)
    assert records(hydra_log) == shell
    assert same_weights(shell_save / "checkpoint_last.pt", hydra_save / "checkpoint_last.pt")
    valid = assert_best_by_bleu(hydra_log, hydra_save)
    assert len(valid) == FINETUNE["optimization.max_update"] // FINETUNE["dataset.validate_interval_updates"]


def test_mmt_validation_bleu_is_sacrebleu_of_its_translations(toy_data, mmt_runs):
    """fairseq-generate with the validation's settings (images, beam 1, the
    same lengths, BPE removed, Moses-detokenised) on the valid split, scored
    as fairseq's translation task scores: the BLEU checkpoint_best.pt records."""
    import sacrebleu

    data, store, _ = toy_data
    save = mmt_runs[3]
    args = json.loads(FINETUNE["task.eval_bleu_args"])
    log = run_fairseq("fairseq-generate", [
        data, "--user-dir", USER_DIR, "--task", "multimodal_translation", "--region-features", store,
        "--path", save / "checkpoint_best.pt", "--gen-subset", "valid", "--beam", args["beam"],
        "--max-len-a", args["max_len_a"], "--max-len-b", args["max_len_b"], "--remove-bpe",
        "--tokenizer", "moses", "--source-lang", "en", "--target-lang", "de", "--batch-size", 16, "--cpu",
    ])  # fmt: skip
    lines = {}
    for kind, i, text in re.findall(r"^([DT])-(\d+)\t(?:[^\t\n]*\t)?(.*)$", log, re.M):
        lines.setdefault(kind, {})[int(i)] = text
    assert len(lines["D"]) == len(lines["T"]) > 0
    ids = sorted(lines["T"])
    # the task writes the references' <unk> as UNKNOWNTOKENINREF
    refs = [lines["T"][i].replace("<<unk>>", "UNKNOWNTOKENINREF") for i in ids]
    bleu = round(sacrebleu.corpus_bleu([lines["D"][i] for i in ids], [refs]).score, 2)
    best = torch.load(save / "checkpoint_best.pt", map_location="cpu", weights_only=False)
    assert best["extra_state"]["val_loss"] == bleu


def test_nmt_validation_bleu_chooses_the_best_checkpoint(toy_data, tmp_path):
    """from_scratch_nmt.yaml: text-only NMT, BLEU on validation."""
    data, _, _ = toy_data
    settings = {**FINETUNE, "lr_scheduler.warmup_updates": 3}
    overrides = [f"task.data={data}", f"checkpoint.save_dir={tmp_path}", f"common.user_dir={USER_DIR}"]
    log = run_fairseq("fairseq-hydra-train", ["--config-dir", CONFIG_DIR, "--config-name", "from_scratch_nmt"]
                      + overrides + [as_override(k, v) for k, v in settings.items()], cwd=tmp_path)  # fmt: skip
    assert "with images" not in log
    assert_best_by_bleu(log, Path(tmp_path))
