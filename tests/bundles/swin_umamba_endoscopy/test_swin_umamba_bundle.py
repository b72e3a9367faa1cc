# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
End-to-end CPU tests of ``bundles/swin_umamba_endoscopy`` through ``python -m monai.bundle run`` on synthetic frames in
the EndoVis 2017 challenge layout, at a reduced size: training, evaluation (checked against a hand computation of the
release's scoring on the inference outputs), inference (label maps and overlays at the frame's resolution, skip of
finished frames), the adaptation chain of TMI Table V (adapt_mim.yaml -> train.yaml with Swin-UMamba†), and bad input.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared_networks.data import generate_endovis_phantoms
from shared_networks.nets import SwinUMamba

BUNDLE = Path(__file__).resolve().parents[3] / "bundles" / "swin_umamba_endoscopy"
NETWORK = ["--network_def#feature_size", "8", "--network_def#depths", "[1,1,1,1]", "--network_def#drop_path_rate", "0"]
REDUCED = [*NETWORK, "--patch_size", "[64,64]", "--num_workers", "0", "--sw_batch_size", "2"]
SHAPE = (64, 96)  # (height, width) of the synthetic frames


def _run(run_id: str, configs: list[str], *overrides: str, bundle_root: Path) -> subprocess.CompletedProcess:
    config = f"configs/{configs[0]}" if len(configs) == 1 else "[" + ",".join(f"'configs/{c}'" for c in configs) + "]"
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config,
               "--bundle_root", str(bundle_root), *overrides]
    return subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=600)


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("swin_umamba_endoscopy")
    data = root / "EndoVis2017"
    generate_endovis_phantoms(data, num_videos=4, frames_per_video=3, shape=SHAPE, seed=11)
    run = root / "run"
    _ok(_run("training", ["train.yaml"], "--dataset_dir", str(data), *REDUCED, "--epochs", "2",
             "--iterations_per_epoch", "3", "--batch_size", "2", "--val_interval", "1", bundle_root=run))
    return {"data": data, "run": run}


def test_training_writes_a_strictly_loading_model_and_a_by_video_split(trained):
    run = trained["run"]
    state = torch.load(run / "models" / "model.pt", weights_only=True)
    SwinUMamba(3, 8, feature_size=8, depths=(1, 1, 1, 1), deep_supervision=True).load_state_dict(state, strict=True)
    assert all(torch.isfinite(v).all() for v in state.values())
    datalist = json.loads((run / "datalist.json").read_text())
    videos = {split: {e["case"].split("/")[0] for e in entries} for split, entries in datalist.items()}
    assert [len(datalist[k]) for k in ("training", "validation", "testing")] == [6, 3, 3]  # 4 videos: 2 / 1 / 1
    assert not (videos["training"] & videos["testing"]) and not (videos["validation"] & videos["testing"])
    trainer = torch.load(run / "models" / "checkpoint_last.pt", weights_only=True)["trainer"]
    assert trainer["iteration"] == 2 * 3  # 2 epochs of 3 iterations


def _dice_per_frame(prediction: np.ndarray, label: np.ndarray) -> float:
    """The release's endoscopy_DSC_Eval.py rule, by hand: over the labels in either map; absent in label -> 0."""
    scores = []
    for c in sorted((set(np.unique(label)) | set(np.unique(prediction))) - {0}):
        g, p = label == c, prediction == c
        scores.append(0.0 if not g.any() else 2 * (g & p).sum() / (g.sum() + p.sum()))
    return float(np.mean(scores))


def test_evaluation_matches_the_release_scoring_of_the_inference_outputs(trained, tmp_path):
    run, data = trained["run"], trained["data"]
    _ok(_run("run", ["train.yaml", "evaluate.yaml"], "--dataset_dir", str(data), *REDUCED, bundle_root=run))
    summary = json.loads((run / "eval" / "metrics_summary.json").read_text())
    assert set(summary["metrics"]) == {"val_mean_dice", "val_mean_nsd"} and summary["num_cases"] == 3
    assert all(0 <= v <= 1 for v in summary["metrics"].values())
    with open(run / "eval" / "val_mean_dice_raw.csv") as f:
        rows = {row["filename"]: row for row in csv.DictReader(f)}
    assert list(next(iter(rows.values())))[1:] == [f"class{i}" for i in range(7)] + ["mean"]

    testing = json.loads((run / "datalist.json").read_text())["testing"]
    out = tmp_path / "predictions"
    datalist = f"$shared_networks.data.make_endovis_datalist(@dataset_dir, '{run / 'datalist.json'}')['testing']"
    _ok(_run("run", ["inference.yaml"], "--dataset_dir", str(data), *REDUCED, "--output_dir", str(out),
             "--datalist", datalist, bundle_root=run))
    per_frame = []
    for entry in testing:
        relative = os.path.relpath(entry["image"], data)[:-4]
        prediction = np.asarray(Image.open(out / f"{relative}_seg.png"))
        label = np.asarray(Image.open(entry["label"]))
        assert prediction.shape == label.shape == SHAPE
        expected = _dice_per_frame(prediction, label)
        assert float(rows[entry["image"]]["mean"]) == pytest.approx(expected, abs=1e-5)
        per_frame.append(expected)
    assert summary["metrics"]["val_mean_dice"] == pytest.approx(np.mean(per_frame), abs=1e-5)


def test_inference_writes_label_maps_and_overlays_and_skips_finished_frames(trained, tmp_path):
    run, data = trained["run"], trained["data"]
    frames = tmp_path / "frames"
    frames.mkdir()
    sources = sorted((data / "instrument_dataset_2" / "left_frames").glob("*.png"))
    for source in sources:
        (frames / source.name).write_bytes(source.read_bytes())
    out = tmp_path / "out"
    _ok(_run("run", ["inference.yaml"], "--dataset_dir", str(frames), *REDUCED, "--output_dir", str(out),
             bundle_root=run))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s.stem}_{kind}.png" for s in sources for kind in ("overlay", "seg"))
    for source in sources:
        frame = np.asarray(Image.open(source))
        seg = Image.open(out / f"{source.stem}_seg.png")
        overlay = np.asarray(Image.open(out / f"{source.stem}_overlay.png"))
        labels = np.asarray(seg)
        assert seg.mode == "L" and labels.shape == SHAPE and set(np.unique(labels)) <= set(range(8))
        assert overlay.shape == frame.shape
        np.testing.assert_array_equal(overlay[labels == 0], frame[labels == 0])
        assert (overlay[labels > 0] != frame[labels > 0]).any() or not (labels > 0).any()
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / f"{sources[0].stem}_seg.png").unlink()
    _ok(_run("run", ["inference.yaml"], "--dataset_dir", str(frames), *REDUCED, "--output_dir", str(out),
             bundle_root=run))
    again = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(again) == set(first)
    # only the frame whose label map was missing is recomputed (its label map and overlay)
    assert sorted(n for n in again if again[n] != first.get(n)) == [
        f"{sources[0].stem}_overlay.png", f"{sources[0].stem}_seg.png"]


def test_adaptation_then_swin_umamba_dagger_from_the_adapted_encoder(trained, tmp_path):
    data = trained["data"]
    run = tmp_path / "run"
    dagger = ["--network_def#feature_size", "16", "--network_def#depths", "[1,1,1,1]"]
    _ok(_run("run", ["adapt_mim.yaml"], "--dataset_dir", str(data), *dagger, "--image_size", "64", "--batch_size", "3",
             "--epochs", "2", "--num_workers", "0", bundle_root=run))
    encoder = torch.load(run / "models" / "mim_encoder.pt", weights_only=True)["model"]
    assert "patch_embed.proj.weight" in encoder and "layers.0.downsample.reduction.weight" in encoder
    result = _ok(_run("training", ["train.yaml", "swin_umamba_d.yaml"], "--dataset_dir", str(data), *dagger,
                      "--patch_size", "[64,64]", "--num_workers", "0", "--sw_batch_size", "2", "--epochs", "2",
                      "--iterations_per_epoch", "2", "--batch_size", "2", "--val_interval", "2",
                      "--freeze_encoder_epochs", "1", "--pretrained_path", str(run / "models" / "mim_encoder.pt"),
                      bundle_root=run))
    log = result.stdout + result.stderr
    assert f"{len(encoder) - 2} encoder tensors loaded" in log
    assert "Epoch 1: encoder frozen" in log and "Epoch 2: encoder trainable" in log
    state = torch.load(run / "models" / "model.pt", weights_only=True)
    # the patch embedding came from the adaptation and was trained further; it has the adapted encoder's shape
    assert state["vssm_encoder.patch_embed.proj.weight"].shape == encoder["patch_embed.proj.weight"].shape


@pytest.mark.parametrize("problem", ["missing_mask", "rgba_frame", "wrong_checkpoint"])
def test_bad_input_is_refused_naming_the_file(trained, tmp_path, problem):
    data = tmp_path / "data"
    generate_endovis_phantoms(data, num_videos=3, frames_per_video=2, shape=SHAPE, seed=2)
    extra = []
    if problem == "missing_mask":
        bad = data / "instrument_dataset_2" / "ground_truth" / "Vessel_Sealer_labels" / "frame001.png"
        bad.unlink()
        expected = [str(bad), "frame001.png"]
    elif problem == "rgba_frame":
        bad = data / "instrument_dataset_3" / "left_frames" / "frame000.png"
        rgb = np.asarray(Image.open(bad))
        Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(bad)
        expected = [str(bad), "RGBA", "expected an 8-bit RGB PNG"]
    else:
        bad = trained["run"] / "models" / "model.pt"  # a whole trained network, not a VMamba encoder
        extra = ["--pretrained_path", str(bad)]
        expected = [str(bad), "not a VMamba checkpoint"]
    result = _run("training", ["train.yaml"], "--dataset_dir", str(data), *REDUCED, "--epochs", "1",
                  "--iterations_per_epoch", "1", *extra, bundle_root=tmp_path / "run")
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "The run stopped:" in message
    for text in expected:
        assert text in message, message[-3000:]
    assert not (tmp_path / "run" / "models" / "model.pt").exists()


@pytest.mark.slow
def test_encoder_freezing_under_ddp_then_resume_into_the_trainable_phase(trained, tmp_path):
    """2 ranks (gloo): a pretrained encoder stays exactly as loaded through the frozen epoch while the decoder trains,
    then a resume with more epochs lands in the trainable phase and the encoder moves."""
    from conftest import free_port, subprocess_env

    from shared_networks.nets import save_vmamba_encoder

    torch.manual_seed(5)
    pretrained = SwinUMamba(3, 8, feature_size=8, depths=(1, 1, 1, 1))
    encoder_path = save_vmamba_encoder(pretrained, tmp_path / "encoder.pt")
    run = tmp_path / "run"

    def ddp_training(epochs: int, *extra: str) -> str:
        config = "['configs/train.yaml','configs/multi_gpu_train.yaml']"
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "monai.bundle", "run",
                   "training", "--config_file", config, "--bundle_root", str(run), "--dataset_dir",
                   str(trained["data"]), *REDUCED, "--epochs", str(epochs), "--iterations_per_epoch", "2",
                   "--batch_size", "2", "--val_interval", "1", "--freeze_encoder_epochs", "1",
                   "--pretrained_path", encoder_path, *extra]
        result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, env=subprocess_env(),
                                timeout=600)
        return _ok(result).stdout + result.stderr

    names = [name for name, _ in pretrained.named_parameters()]  # the optimizer's parameter order

    def last_checkpoint() -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """(network weights, AdamW step count of each parameter that has optimizer state) of checkpoint_last.pt"""
        checkpoint = torch.load(run / "models" / "checkpoint_last.pt", weights_only=True)
        steps = {names[i]: int(state["step"]) for i, state in checkpoint["optimizer"]["state"].items()}
        return checkpoint["network"], steps

    released = pretrained.state_dict()
    # frozen: every VMamba encoder parameter but the patch embedding (trained from the start, as released)
    frozen = [n for n in names if n.startswith("vssm_encoder.") and "patch_embed" not in n]

    log = ddp_training(1)
    assert "Epoch 1: encoder frozen" in log
    weights, steps = last_checkpoint()
    assert not any(k.startswith("module.") for k in weights)
    assert all(torch.equal(weights[k], released[k]) for k in frozen), "a frozen encoder parameter moved"
    assert not set(frozen) & set(steps), "frozen parameters got optimizer state"
    assert steps["decoder1.layer.conv1.conv.weight"] == 2  # the decoder trained: 1 epoch of 2 iterations
    after_frozen = weights

    log = ddp_training(2, "--resume", "True")
    assert "Epoch 2: encoder trainable" in log and "Epoch 1: encoder" not in log
    weights, steps = last_checkpoint()
    # unfrozen with fresh optimizer state: the encoder's moments start at epoch 2, the decoder's continue
    assert {steps.get(k) for k in frozen} == {2}, "stale or missing optimizer state after unfreezing"
    assert steps["decoder1.layer.conv1.conv.weight"] == 4
    moved = [k for k in frozen if not torch.equal(weights[k], after_frozen[k])]
    assert len(moved) > len(frozen) // 2, f"only {len(moved)} of {len(frozen)} encoder tensors trained after unfreezing"
