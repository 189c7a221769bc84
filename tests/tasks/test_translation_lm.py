import pytest
import torch

from tests.conftest import setup_fairseq

TINY = ["--arch", "vtlm_tiny", "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
        "--encoder-attention-heads", "2", "--criterion", "vtlm_loss", "--seed", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def vtlm(toy_data):
    data, store, _ = toy_data
    cfg, task = setup_fairseq([str(data), "--task", "visual_tlm", "--region-features", str(store)] + TINY)
    for split in ("train", "valid"):
        task.load_dataset(split)
    return cfg, task


@pytest.fixture(scope="module")
def tlm(toy_data):
    data, _, _ = toy_data
    cfg, task = setup_fairseq([str(data), "--task", "tlm"] + TINY)
    task.load_dataset("train")
    return cfg, task


def test_sequence_languages_and_positions(tlm):
    _, task = tlm
    ds = task.dataset("train")
    d = task.dictionary
    item = ds[5]
    pair = int(ds.pair_indices[5])
    src, tgt = ds.src[pair], ds.tgt[pair]
    tokens = torch.where(item["target"].ne(d.pad()), item["target"], item["source"])
    expected = torch.cat([torch.tensor([d.eos()]), src, torch.tensor([d.eos()]), tgt])
    masked_input = item["source"].ne(tokens)
    assert torch.equal(tokens[~masked_input], expected[~masked_input])
    n = len(src) + 1  # [</s> en ... </s>]
    assert task.lang_ids == {"de": 0, "en": 1, "img": 2}
    assert item["langs"].tolist() == [1] * n + [0] * (len(tgt) + 1)
    assert item["positions"].tolist() == list(range(n)) + list(range(len(tgt) + 1))
    assert d[int(expected[n])] == "</s>" and int(expected[n - 1]) == d.eos()


def test_text_masking_statistics_on_the_dataset(tlm):
    _, task = tlm
    ds = task.dataset("train")
    pad, mask = task.dictionary.pad(), task.mask_idx
    selected = eligible = n_mask = n_keep = n_rand = 0
    for epoch in range(1, 6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            chosen = item["target"].ne(pad)
            assert not chosen[0]  # never the first </s>
            selected += int(chosen.sum())
            eligible += len(chosen) - 1
            src, tgt = item["source"][chosen], item["target"][chosen]
            n_mask += int((src == mask).sum())
            n_keep += int((src == tgt).sum())
            n_rand += int(((src != mask) & (src != tgt)).sum())
            assert (item["source"][~chosen] != mask).all()
            replaced = item["source"][chosen & item["source"].ne(item["target"])]
            assert (replaced >= task.dictionary.nspecial).all()  # never a special symbol
    assert abs(selected / eligible - 0.15) < 0.015
    # random replacements may hit the original token: keep >= 10%
    assert abs(n_mask / selected - 0.8) < 0.03 and abs(n_rand / selected - 0.1) < 0.03


def test_masks_change_with_epoch_but_not_in_validation(vtlm):
    _, task = vtlm
    train, valid = task.dataset("train"), task.dataset("valid")
    train.set_epoch(1)
    a = [train[i]["source"] for i in range(30)]
    train.set_epoch(1)
    assert all(torch.equal(x, train[i]["source"]) for i, x in enumerate(a))  # resumable
    train.set_epoch(2)
    assert not all(torch.equal(x, train[i]["source"]) for i, x in enumerate(a))
    valid.set_epoch(1)
    v = [valid[i] for i in range(len(valid))]
    valid.set_epoch(7)
    assert all(torch.equal(x["source"], valid[i]["source"]) for i, x in enumerate(v))
    chosen = torch.cat([x["target"].ne(task.dictionary.pad()) for x in v])
    sources = torch.cat([x["source"] for x in v])
    assert (sources[chosen] == task.mask_idx).all()  # validation: [MASK] only
    assert all((x["region_category"] == -1).all() for x in v)  # images unmasked


def test_every_pair_is_batched(vtlm):
    cfg, task = vtlm
    for split, n in (("train", 240), ("valid", 37)):
        itr = task.get_batch_iterator(
            task.dataset(split), max_sentences=16, required_batch_size_multiple=8, seed=1,
            disable_iterator_cache=True,
        ).next_epoch_itr(shuffle=False)
        ids = torch.cat([b["id"] for b in itr])
        assert sorted(ids.tolist()) == list(range(n))


def test_region_batch(vtlm):
    _, task = vtlm
    ds = task.dataset("train")
    ds.set_epoch(1)
    batch = ds.collater([ds[i] for i in range(40)])
    net = batch["net_input"]
    raw = ds.regions.collater([ds.regions[int(ds.pair_indices[i])] for i in range(40)])
    target = batch["region_target"]
    chosen = target.ge(0)
    assert chosen.any() and not chosen[~net["region_mask"]].any()
    assert torch.equal(target[chosen], raw["classes"][chosen])
    assert torch.equal(net["region_boxes"], raw["boxes"])  # boxes never masked
    masked = net["region_masked_input"]
    assert (net["region_features"][masked] == 0).all()
    untouched = ~chosen
    assert torch.equal(net["region_features"][untouched], raw["features"][untouched])
    changed = chosen & ~masked & (net["region_features"] != raw["features"]).any(-1)
    flat = raw["features"][raw["mask"]]
    for vec in net["region_features"][changed]:  # swapped: some real region of the batch
        assert (flat == vec).all(-1).any()


def test_model_forward_and_loss(vtlm):
    cfg, task = vtlm
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    ds = task.dataset("train")
    batch = ds.collater([ds[i] for i in range(16)])
    loss, sample_size, log = criterion(model, batch)
    assert torch.isfinite(loss) and sample_size == 1
    assert log["nmasked"] == int(batch["target"].ne(task.dictionary.pad()).sum())
    assert log["nregions"] == int(batch["region_target"].ge(0).sum()) > 0
    loss.backward()
    assert model.encoder.region_classifier.weight.grad.abs().sum() > 0
    # padding regions are invisible: changing them changes no text output
    model.eval()
    net = {k: v.clone() for k, v in batch["net_input"].items()}
    net["region_mask"][:, -2:] = False
    out1 = model.encoder(**net)["states"]
    net["region_features"][:, -2:] += 5.0
    out2 = model.encoder(**net)["states"]
    R = net["region_mask"].shape[1]
    torch.testing.assert_close(out1[:, R:], out2[:, R:])


def test_mrc_off_is_plain_mlm(toy_data):
    data, store, _ = toy_data
    cfg, task = setup_fairseq(
        [str(data), "--task", "visual_tlm", "--region-features", str(store), "--region-mask-prob", "0"] + TINY
    )
    task.load_dataset("train")
    model = task.build_model(cfg.model).eval()
    criterion = task.build_criterion(cfg.criterion)
    ds = task.dataset("train")
    batch = ds.collater([ds[i] for i in range(16)])
    assert not batch["region_target"].ge(0).any()
    loss, _, log = criterion(model, batch)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, log["mlm_loss"] / log["nmasked"])
    assert log["nregions"] == 0 and log["mrc_correct"] == 0


def test_zero_percent_visual_masking_keeps_inputs(toy_data):
    data, store, _ = toy_data
    _, task = setup_fairseq(
        [str(data), "--task", "visual_tlm", "--region-features", str(store), "--mrc-unmasked-inputs"] + TINY
    )
    task.load_dataset("train")
    ds = task.dataset("train")
    batch = ds.collater([ds[i] for i in range(40)])
    raw = ds.regions.collater([ds.regions[int(ds.pair_indices[i])] for i in range(40)])
    assert batch["region_target"].ge(0).any()
    assert torch.equal(batch["net_input"]["region_features"], raw["features"])
    assert not batch["net_input"]["region_masked_input"].any()


def test_shuffled_images_control(toy_data):
    data, store, _ = toy_data
    _, aligned = setup_fairseq([str(data), "--task", "visual_tlm", "--region-features", str(store)] + TINY)
    _, shuffled = setup_fairseq(
        [str(data), "--task", "visual_tlm", "--region-features", str(store), "--image-order", "shuffled"] + TINY
    )
    aligned.load_dataset("train")
    shuffled.load_dataset("train")
    a, s = aligned.dataset("train").regions.rows, shuffled.dataset("train").regions.rows
    assert sorted(a.tolist()) == sorted(s.tolist()) and (a != s).mean() > 0.5


def test_missing_images_drop_policy(toy_data, tmp_path):
    import shutil

    data, store, _ = toy_data
    local = tmp_path / "bin"
    shutil.copytree(data, local)
    order = (local / "train.order").read_text().splitlines()
    order[3] = order[100] = "not_in_store.jpg"
    (local / "train.order").write_text("\n".join(order) + "\n")
    _, task = setup_fairseq([str(local), "--task", "visual_tlm", "--region-features", str(store)] + TINY)
    with pytest.raises(Exception, match=r"train\.order:4: image 'not_in_store\.jpg'"):
        task.load_dataset("train")
    _, task = setup_fairseq(
        [str(local), "--task", "visual_tlm", "--region-features", str(store), "--missing-images", "drop"] + TINY
    )
    task.load_dataset("train")
    ds = task.dataset("train")
    assert len(ds) == 238 and 3 not in ds.pair_indices and 100 not in ds.pair_indices


def test_loader_workers_follow_the_epoch(vtlm):
    """Worker processes outlive epochs; their masks must still change."""
    _, task = vtlm
    ds = task.dataset("train")
    itr = task.get_batch_iterator(
        ds, max_sentences=32, seed=1, num_workers=2, epoch=1, disable_iterator_cache=True
    )
    seen = {}
    for epoch in (1, 2):
        batches = list(itr.next_epoch_itr(shuffle=False))
        seen[epoch] = {int(i): s for b in batches for i, s in zip(b["id"], b["net_input"]["src_tokens"])}
        ds.set_epoch(epoch)
        for i in list(seen[epoch])[:20]:
            src = ds[i]["source"]
            assert torch.equal(seen[epoch][i][: len(src)], src)
    assert itr.epoch == 2
    assert any(not torch.equal(seen[1][i], seen[2][i]) for i in seen[1])


def test_text_batch_is_fairseqs_collation(vtlm):
    """The collater pads in one op; the result is fairseq's collate_tokens."""
    from fairseq.data import data_utils

    _, task = vtlm
    ds = task.dataset("train")
    items = [ds[i] for i in range(0, 200, 7)]
    batch = ds.collater(items)
    pad = task.dictionary.pad()
    net = batch["net_input"]
    for got, key, fill in ((net["src_tokens"], "source", pad), (net["src_langs"], "langs", 0),
                           (net["src_positions"], "positions", 0), (batch["target"], "target", pad)):  # fmt: skip
        assert torch.equal(got, data_utils.collate_tokens([s[key] for s in items], fill)), key


def test_entity_masking_hides_entities_in_both_languages_and_leaves_the_other_masks(toy_data, vtlm):
    """--entity-mask-prob 1 with the toy world's lexicon: every English noun of
    it and its German noun are [MASK] and predicted; every other position is
    masked exactly as without the option; validation has no entity masks."""
    from vtlm_fairseq.data.words import EntityWords, word_spans

    data, store, world = toy_data
    cfg, task = setup_fairseq([str(data), "--task", "visual_tlm", "--region-features", str(store),
                               "--entity-mask-prob", "1.0", "--entity-words", str(world / "lexicon.json")] + TINY)  # fmt: skip
    plain = vtlm[1]
    words, d = EntityWords.load(world / "lexicon.json"), task.dictionary
    masked_entities = 0
    for split in ("train", "valid"):
        task.load_dataset(split)
        ds, base = task.dataset(split), plain.dataset(split)
        ds.set_epoch(2), base.set_epoch(2)
        for i in range(len(ds)):
            item, ref, pair = ds[i], base[i], int(ds.pair_indices[i])
            src, tgt = ds.src[pair].tolist(), ds.tgt[pair].tolist()
            entity = torch.zeros(len(item["source"]), dtype=torch.bool)
            german = set()
            for word, start, end in word_spans(d, src):
                if word in words.german:
                    entity[1 + start : 1 + end], german = True, german | words.german[word]
            for word, start, end in word_spans(d, tgt):
                if word in german:
                    entity[len(src) + 2 + start : len(src) + 2 + end] = True
            if split == "valid":
                assert torch.equal(item["source"], ref["source"]) and torch.equal(item["target"], ref["target"])
                continue
            masked_entities += int(entity.sum())
            assert (item["source"][entity] == task.mask_idx).all()
            tokens = torch.where(ref["target"].ne(d.pad()), ref["target"], ref["source"])
            assert torch.equal(item["target"][entity], tokens[entity])
            assert torch.equal(item["source"][~entity], ref["source"][~entity])
            assert torch.equal(item["target"][~entity], ref["target"][~entity])
            assert torch.equal(item["region_category"], ref["region_category"])
        base.set_epoch(1)  # the module's fixture, as the other tests find it
    assert masked_entities > len(task.dataset("train"))  # the lexicon's nouns are in most captions
