"""The shipped configs carry the published hyper-parameters (probe 5): every value below was read a second time,
independently of scripts/make_configs.py, from the sources' files:

- S4: state-spaces/s4@e757cef ``configs/experiment/lra/s4-{listops,imdb,aan,cifar,pathfinder,pathx}.yaml`` (the
  decoder ``mode: pool`` of each, or the cifar pipeline's pool);
- Liquid-S4: raminmh/liquid-s4@06031dc ``configs/experiment/lra/s4-lra-*.yaml`` (warm-up 1,000 = the
  cosine_warmup default where the experiment sets none);
- DSS: ag1988/dss@777084e ``configs/experiment/s4-lra-*.yaml`` + the README's command lines (the imdb pipeline's
  decoder is ``mode: last`` and the DSS experiment does not override it);
- S5: lindermanlab/S5@3c18fdb ``bin/run_experiments/run_lra_*.sh`` with ``run_train.py``'s defaults (prenorm,
  batch norm, pool, dt_max 0.1, dt_min 0.001 unless given, warmup_end 1 unless given); lr = ssm_lr_base × lr_factor.
"""

import pytest
import yaml

from ssmkit.train.commands import resolve_config

# cell: (d_model, n_layers, prenorm, dropout, d_state, dt_min, n_ssm, batch, lr, wd, steps, warm-up, seed)
S4 = {
    "listops": (256, 6, False, 0.0, 4, 0.001, 1, 32, 0.01, 0.05, 120_000, 12_000, 3333),
    "text": (256, 6, True, 0.0, 4, 0.001, 1, 16, 0.01, 0.05, 50_000, 5_000, 3333),
    "retrieval": (256, 6, True, 0.0, 4, 0.001, 1, 64, 0.01, 0.05, 50_000, 5_000, 3333),
    "image": (512, 6, False, 0.1, 64, 0.001, 1, 50, 0.01, 0.05, 180_000, 18_000, 2222),
    "pathfinder": (256, 6, True, 0.0, 64, 0.001, None, 64, 0.004, 0.05, 500_000, 50_000, 3333),
    "pathx": (256, 6, True, 0.0, 64, 0.0001, None, 16, 0.001, 0.05, 500_000, 50_000, 3333),
}

# cell: (d_model, n_layers, prenorm, norm, dropout, pool, layer lr, dt_min, dt_max, batch, lr, wd, steps, warm-up,
#        seed); the official d_state 7 keeps 3 conjugate pairs (real-equivalent 6), checked apart
LIQUID = {
    "listops": (128, 9, True, "batch", 0.01, "mean", 0.0009, 0.002, 0.2, 12, 0.002, 0.03, 80_000, 1_000, 2222),
    "text": (128, 4, True, "batch", 0.1, "mean", 0.0009, 0.002, 0.2, 8, 0.003, 0.01, 50_000, 1_000, 2222),
    "retrieval": (256, 6, True, "batch", 0.2, "mean", 0.001, 0.001, 0.1, 16, 0.005, 0.05, 50_000, 2_500, 2222),
    "image": (512, 6, False, "layer", 0.1, "mean", 0.001, 0.002, 0.2, 50, 0.01, 0.03, 200_000, 1_000, 2222),
    "pathfinder": (256, 6, True, "batch", 0.0, "last", 0.001, 0.001, 0.1, 4, 0.004, 0.03, 500_000, 2_500, 2222),
    "pathx": (320, 6, True, "batch", 0.0, "mean", 0.0005, 0.0001, 0.1, 8, 0.001, 0.05, 500_000, 10_000, 1112),
}

# cell: (d_model, n_layers, prenorm, dropout, pool, batch, lr, wd, epochs, seed)
DSS = {
    "listops": (128, 6, False, 0.0, "mean", 50, 0.01, 0.01, 50, 1112),
    "text": (128, 4, True, 0.0, "last", 50, 0.01, 0.0, 40, 1112),
    "retrieval": (256, 6, True, 0.0, "mean", 64, 0.002, 0.0, 25, 1112),
    "image": (512, 6, False, 0.2, "mean", 50, 0.004, 0.01, 200, 0),
    "pathfinder": (256, 6, True, 0.1, "last", 100, 0.004, 0.0, 200, 1112),
    "pathx": (256, 6, True, 0.0, "mean", 16, 0.0005, 0.0, 35, 1112),
}
TRAIN_SIZES = {"listops": 96_000, "text": 25_000, "retrieval": 147_086, "image": 45_000, "pathfinder": 160_000,
               "pathx": 160_000}


def shipped(name: str) -> dict:
    return yaml.safe_load(open(resolve_config(name)))


@pytest.mark.parametrize("cell", list(S4))
@pytest.mark.parametrize("model", ["s4", "s4d"])
def test_s4_lra_configs(cell, model):
    d_model, n_layers, prenorm, dropout, d_state, dt_min, n_ssm, batch, lr, wd, steps, warm, seed = S4[cell]
    c = shipped(f"lra/{cell}-{model}")
    t, lay = c["train"], c["layer_options"]
    assert (c["d_model"], c["n_layers"], c["prenorm"], c["norm"], c["dropout"], c["pool"]) == (
        d_model, n_layers, prenorm, "batch", dropout, "mean")
    assert (lay["d_state"], lay["dt_min"], lay["dt_max"], lay["init"], lay["bidirectional"], lay["lr"]) == (
        d_state, dt_min, 0.1, "legs", True, 0.001)
    if model == "s4":
        assert lay["n_ssm"] == n_ssm
    assert (t["batch_size"], t["lr"], t["weight_decay"], t["max_steps"], t["warmup_steps"], t["seed"]) == (
        batch, lr, wd, steps, warm, seed)


@pytest.mark.parametrize("cell", list(LIQUID))
def test_liquid_s4_lra_configs(cell):
    d_model, n_layers, prenorm, norm, dropout, pool, layer_lr, dt_min, dt_max, batch, lr, wd, steps, warm, seed = (
        LIQUID[cell])
    c = shipped(f"lra/{cell}-liquid_s4")
    t, lay = c["train"], c["layer_options"]
    assert (c["d_model"], c["n_layers"], c["prenorm"], c["norm"], c["dropout"], c["pool"]) == (
        d_model, n_layers, prenorm, norm, dropout, pool)
    assert (lay["lr"], lay["dt_min"], lay["dt_max"], lay["n_ssm"]) == (layer_lr, dt_min, dt_max, None)
    assert lay["d_state"] == (6 if cell in ("listops", "text") else {"image": 512}.get(cell, 64))
    assert (t["batch_size"], t["lr"], t["weight_decay"], t["max_steps"], t["warmup_steps"], t["seed"]) == (
        batch, lr, wd, steps, warm, seed)


@pytest.mark.parametrize("cell", list(DSS))
def test_dss_lra_configs(cell):
    d_model, n_layers, prenorm, dropout, pool, batch, lr, wd, epochs, seed = DSS[cell]
    c = shipped(f"lra/{cell}-dss")
    t = c["train"]
    assert (c["d_model"], c["n_layers"], c["prenorm"], c["dropout"], c["pool"]) == (
        d_model, n_layers, prenorm, dropout, pool)
    assert (t["batch_size"], t["lr"], t["weight_decay"], t["seed"]) == (batch, lr, wd, seed)
    assert t["max_steps"] == epochs * -(-TRAIN_SIZES[cell] // batch)


# cell: (d_model, n_layers, dropout, P, blocks, C_init, bsz, ssm_lr, lr_factor, wd, epochs, warmup_end, seed, dt_min,
#        clip_eigs)
S5 = {
    "listops": (128, 8, 0.0, 16, 8, "lecun_normal", 50, 0.001, 3, 0.04, 40, 1, 6554595, 0.001, False),
    "text": (256, 6, 0.1, 192, 12, "lecun_normal", 50, 0.001, 4, 0.07, 35, 0, 8825365, 0.001, False),
    "retrieval": (128, 6, 0.0, 256, 16, "trunc_standard_normal", 32, 0.001, 2, 0.05, 20, 1, 5464368, 0.001, False),
    "image": (512, 6, 0.1, 384, 3, "lecun_normal", 50, 0.001, 4.5, 0.07, 250, 1, 16416, 0.001, True),
    "pathfinder": (192, 6, 0.05, 256, 8, "trunc_standard_normal", 64, 0.0009, 5, 0.03, 200, 1, 8180844, 0.001,
                   False),
    "pathx": (128, 6, 0.0, 256, 16, "complex_normal", 32, 0.0006, 3, 0.06, 75, 1, 6429262, 0.0001, False),
}


@pytest.mark.parametrize("cell", list(S5))
def test_s5_lra_configs(cell):
    (d_model, n_layers, dropout, P, blocks, C_init, bsz, ssm_lr, factor, wd, epochs, warmup, seed, dt_min,
     clip) = S5[cell]
    c = shipped(f"lra/{cell}-s5")
    t, lay = c["train"], c["layer_options"]
    assert (c["d_model"], c["n_layers"], c["prenorm"], c["norm"], c["dropout"], c["pool"]) == (
        d_model, n_layers, True, "batch", dropout, "mean")
    assert (lay["d_state"], lay["blocks"], lay["C_init"], lay["lr"], lay["dt_min"], lay["dt_max"], lay["clip_eigs"],
            lay["bidirectional"]) == (P, blocks, C_init, ssm_lr, dt_min, 0.1, clip, True)
    per_epoch = -(-TRAIN_SIZES[cell] // bsz)
    assert (t["batch_size"], t["weight_decay"], t["seed"], t["max_steps"], t["warmup_steps"]) == (
        bsz, wd, seed, epochs * per_epoch, warmup * per_epoch)
    assert t["lr"] == pytest.approx(ssm_lr * factor, rel=1e-12)


def test_mega_text_keeps_lras_4000_bytes():
    """facebookresearch/mega@aeaa4b4 ``fairseq/models/lra/model.py``: ``mega_lra_imdb`` sets max_positions 4,002
    (ListOps 2,002): its IMDB is LRA's 4,000-byte text, not S4's 4,096."""
    c = shipped("lra/text-mega")
    assert c["task_options"] == {"l_max": 4000} and c["layer_options"]["max_positions"] == 4000


@pytest.mark.parametrize("cell, epochs", [("listops", 40), ("text", 35), ("image", 180), ("retrieval", 100),
                                          ("pathfinder", 100), ("pathx", 100)])
def test_lru_configs_are_minimal_lrus_defaults(cell, epochs):
    """NicolasZucchet/minimal-LRU@bbd71b1 ``run_train.py`` defaults (4 layers, d_model 256, d_hidden 128 complex,
    batch norm, pre-norm, dropout 0.1, batch 64, lr 1e-3, SSM lr 0.5 × 1e-3, weight decay 0.05, cosine to 1e-7,
    seed 1919, 100 epochs) and its README's epochs (listops 40, imdb 35, colour cifar 180)."""
    c = shipped(f"lra/{cell}-lru")
    t, lay = c["train"], c["layer_options"]
    assert c["task"] == ("scifar" if cell == "image" else f"lra_{cell}")
    assert (c["d_model"], c["n_layers"], c["norm"], c["prenorm"], c["dropout"], c["pool"]) == (
        256, 4, "batch", True, 0.1, "mean")
    assert (lay["d_state"], lay["lr"]) == (256, 0.0005)
    size = 45_000 if cell == "image" else TRAIN_SIZES[cell]
    assert (t["batch_size"], t["lr"], t["weight_decay"], t["seed"], t["warmup_steps"]) == (64, 0.001, 0.05, 1919, 0)
    assert t["max_steps"] == epochs * -(-size // 64) and t["lr"] * t["lr_floor"] == pytest.approx(1e-7)
