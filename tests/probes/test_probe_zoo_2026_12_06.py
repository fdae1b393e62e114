"""Probe of ``ssmkit zoo`` as a control engineer reads it (2026-12-06): the files of ``--out`` are replaced whole
(written beside and renamed, as every other ssmkit output), and the measured table of a saved checkpoint
(``--checkpoint``, poles.csv and zoo.md) against independent references: S4's DPLR matrix A = diag(Λ, Λ̄) - P_f P_f*
discretised by the bilinear rule with a dense numpy solve (arXiv 2111.00396 eq. 3), LRU's closed form
|λ| = exp(-max(exp ν, 1e-6)) (arXiv 2303.06349), and a DeepWiener's τ in seconds (τ = -Ts / log|z|)."""

from __future__ import annotations

import contextlib
import csv
import io
import os

import numpy as np
import pytest
import torch

from ssmkit.analysis import commands, zoo


def run_zoo(argv: list[str]) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert commands.zoo_main(argv) == 0
    return buffer.getvalue()


def test_out_files_are_replaced_whole_not_written_through(tmp_path):
    # zoo_main wrote with open(path, "w"): truncated in place (a reader or an interrupted run saw a partial table,
    # and a zoo.md hard-linked elsewhere was overwritten through the link); now written beside and renamed
    out = tmp_path / "out"
    out.mkdir()
    keep = tmp_path / "keep.md"
    keep.write_text("my notes\n", encoding="utf-8")
    os.link(keep, out / "zoo.md")
    run_zoo(["--out", str(out)])
    assert keep.read_text(encoding="utf-8") == "my notes\n"
    assert (out / "zoo.md").read_text(encoding="utf-8") == zoo.to_markdown(zoo.zoo_table())
    assert (out / "zoo.csv").read_text(encoding="utf-8") == zoo.to_csv(zoo.zoo_table())
    assert sorted(os.listdir(out)) == ["zoo.csv", "zoo.md"]  # no temporary left behind


def s4_poles_reference(layer) -> np.ndarray:
    """|z| of S4's bilinear Ā per channel, from the parameters: A_f = diag(Λ, Λ̄) - P_f P_f*, P_f = [P; P̄] (the
    conjugate half coupled through the low-rank term), Ā = (I - Δ/2 A_f)⁻¹ (I + Δ/2 A_f), dense, float64."""
    lam = (-np.exp(layer.log_A_real.detach().numpy()) + 1j * layer.A_imag.detach().numpy())  # (G, M)
    p = layer.P.detach().numpy()
    p = p[..., 0] + 1j * p[..., 1]  # (r, G, M)
    dt = np.exp(layer.log_dt.detach().numpy())  # (H,)
    radii = []
    for h in range(dt.shape[0]):
        g = h % lam.shape[0]
        pf = np.concatenate([p[:, g], p[:, g].conj()], axis=1)  # (r, N)
        a = np.diag(np.concatenate([lam[g], lam[g].conj()])) - pf.T @ pf.conj()
        eye = np.eye(a.shape[0])
        radii.append(np.abs(np.linalg.eigvals(np.linalg.solve(eye - dt[h] / 2 * a, eye + dt[h] / 2 * a))))
    return np.concatenate(radii)


def test_poles_csv_of_a_saved_checkpoint_against_independent_references(tmp_path):
    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    model = SequenceModel(d_input=1, d_model=4, n_layers=3, layer=["s4", "lru", "rglru"],
                          layer_options={"s4": {"d_state": 6}, "lru": {"d_state": 6}}, d_output=1, head="regress",
                          pool=None, dtype=torch.float64)
    with torch.no_grad():  # away from the initialisation, as after training
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "last.ckpt"  # the layout of 'ssmkit train'
    torch.save({"hyper_parameters": {"model": model.config.to_dict()},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    printed = run_zoo(["--checkpoint", str(path), "--out", str(tmp_path / "z"), "--format", "csv"])
    poles_csv = (tmp_path / "z" / "poles.csv").read_text(encoding="utf-8")
    assert poles_csv in printed
    s4, lru, rglru = list(csv.DictReader(io.StringIO(poles_csv)))

    r = s4_poles_reference(model.blocks[0].layer)
    tau = -1.0 / np.log(r)
    assert (s4["name"], s4["layer"], s4["time_unit"], float(s4["dt"])) == ("blocks.0.layer", "s4", "samples", 1.0)
    assert float(s4["spectral_radius"]) == pytest.approx(r.max(), rel=1e-12)
    assert float(s4["stability_margin"]) == pytest.approx(1 - r.max(), rel=1e-9)
    for key, want in (("slowest_tau", tau.max()), ("median_tau", np.median(tau)), ("fastest_tau", tau.min())):
        assert float(s4[key]) == pytest.approx(want, rel=1e-9), key

    rate = np.maximum(np.exp(model.blocks[1].layer.log_nu.detach().numpy()), 1e-6)  # |λ| = exp(-rate)
    assert float(lru["spectral_radius"]) == pytest.approx(np.exp(-rate.min()), rel=1e-12)
    assert float(lru["slowest_tau"]) == pytest.approx(1 / rate.min(), rel=1e-12)
    assert float(lru["fastest_tau"]) == pytest.approx(1 / rate.max(), rel=1e-12)

    assert rglru["spectral_radius"] == rglru["slowest_tau"] == "" and "time-varying" in rglru["note"]
    md = (tmp_path / "z" / "zoo.md").read_text(encoding="utf-8")
    assert f"| blocks.0.layer | s4 | {r.max():.6g} | {1 - r.max():.6g} | {tau.max():.6g} |" in md
    assert "| blocks.2.layer | rglru | — | — | — | — | — |" in md
    assert md.endswith("Time constants τ = −dt / log|z| in samples.\n")


def test_model_pt_of_a_deep_wiener_gives_seconds(tmp_path):
    from ssmkit.sysid.wiener import DeepWiener

    torch.manual_seed(1)
    model = DeepWiener(1, 1, d_model=2, n_layers=1, layer="lru", layer_options={"d_state": 4}, dt=4.0,
                       dtype=torch.float64)
    torch.save(model.checkpoint(), tmp_path / "model.pt")
    run_zoo(["--checkpoint", str(tmp_path / "model.pt"), "--out", str(tmp_path / "z")])
    (row,) = list(csv.DictReader(open(tmp_path / "z" / "poles.csv", encoding="utf-8")))
    layer = next(m for m in model.modules() if getattr(type(m), "name", "") == "lru")
    rate = np.maximum(np.exp(layer.log_nu.detach().numpy()), 1e-6)
    assert (row["layer"], row["time_unit"], float(row["dt"])) == ("lru", "s", 4.0)
    assert float(row["slowest_tau"]) == pytest.approx(4.0 / rate.min(), rel=1e-12)  # seconds, not samples
    assert float(row["fastest_tau"]) == pytest.approx(4.0 / rate.max(), rel=1e-12)
    md = (tmp_path / "z" / "zoo.md").read_text(encoding="utf-8")
    assert md.endswith("Time constants τ = −dt / log|z| in s (dt = 4 s).\n")


def test_out_files_are_utf8_whatever_the_locale(tmp_path, monkeypatch):
    # open(path, "w") took the locale's encoding: under a C locale without UTF-8 coercion (ASCII) the table's λ, τ,
    # √ and — raised UnicodeEncodeError after zoo.md was created empty. Simulated by an open() that defaults to ASCII.
    import builtins

    def ascii_default_open(file, mode="r", *args, encoding=None, **options):
        if "b" not in mode and encoding is None:
            encoding = "ascii"
        return builtins.open(file, mode, *args, encoding=encoding, **options)

    monkeypatch.setattr(commands, "open", ascii_default_open, raising=False)
    run_zoo(["--out", str(tmp_path)])
    text = (tmp_path / "zoo.md").read_bytes().decode("utf-8")
    assert text == zoo.to_markdown(zoo.zoo_table()) and "λ" in text


def test_out_that_is_a_file_is_refused_by_name(tmp_path, capsys):
    # was a FileExistsError traceback from os.makedirs, after the table had been printed
    target = tmp_path / "zoo_out"
    target.write_text("not a folder", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        commands.zoo_main(["--out", str(target)])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.out == ""
    assert f"--out must be a folder (zoo.md, zoo.csv and poles.csv go into it); {str(target)!r} is a file" in captured.err
    assert target.read_text(encoding="utf-8") == "not a folder"


def test_markdown_says_what_lti_and_stable_by_construction_mean():
    # a control engineer read "hyena: lti yes, stable_by_construction yes" and "attention: stable yes" as claims
    # about poles; the table's conventions (design.md, the zoo) were nowhere in what it printed
    table = zoo.zoo_table(d_model=32)
    rows = {r["layer"]: r for r in table}
    gated = [n for n in ("gss", "h3", "hyena") if n in rows]
    assert gated and all(rows[n]["lti"] and not rows[n]["state_space"] for n in gated)  # the case to explain
    note = zoo.to_markdown(table).split("\n")[5 + len(table)]
    assert "lti: the mixing (A, B, C) does not depend on the input" in note
    assert "the layer as a whole is not linear (their state_space is no)" in note
    assert "for layers without a recurrence (FIR kernels, attention) it means bounded outputs for bounded inputs" in note
    assert "— where the state grows with L or the layer has no step" in note


def test_out_without_checkpoint_removes_an_earlier_runs_poles_csv(tmp_path, capsys):
    # a poles.csv from an earlier `--checkpoint` run stayed beside the fresh zoo.md, which no longer lists those
    # measured poles: the folder read as one run's output but mixed two (a stop-66 Left item)
    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    model = SequenceModel(d_input=1, d_model=2, n_layers=1, layer="lru", layer_options={"d_state": 2}, d_output=1,
                          head="regress", pool=None)
    path = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {"model": model.config.to_dict()},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    out = tmp_path / "z"
    run_zoo(["--checkpoint", str(path), "--out", str(out)])
    assert sorted(os.listdir(out)) == ["poles.csv", "zoo.csv", "zoo.md"]
    capsys.readouterr()
    run_zoo(["--out", str(out)])
    assert sorted(os.listdir(out)) == ["zoo.csv", "zoo.md"]
    assert (out / "zoo.md").read_text(encoding="utf-8") == zoo.to_markdown(zoo.zoo_table())
    assert f"removed {out / 'poles.csv'}" in capsys.readouterr().err
