# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
End-to-end CPU tests of ``bundles/nnmamba_adni`` through ``python -m monai.bundle run`` on synthetic brains in the
release's class-folder layout, at a reduced size: training, evaluation (threshold and scores recomputed by brute
force from the per-subject CSV; probabilities equal to those of inference.yaml), the sMCI-vs-pMCI transfer, the
paper overlay and the class-balanced sampler as configured, a real T1 (the MNI152 template) in three storage
orientations through the preprocessing and inference, and bad input from the command line.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import stored_as, subprocess_env

from shared_networks.data import generate_adni_phantoms
from shared_networks.nets import nnMambaClassifier

BUNDLE = Path(__file__).resolve().parents[3] / "bundles" / "nnmamba_adni"
NETWORK = ["--network_def#feature_size", "8", "--network_def#blocks", "1"]
GRID = ["--spatial_size", "[40,48,40]", "--pixdim", "[4.0,4.0,4.0]"]
REDUCED = [*NETWORK, *GRID, "--num_workers", "0"]
SPLIT = ["--split_fractions", "[0.5,0.25,0.25]"]


def _run(run_id: str, configs: list[str], *overrides: str, bundle_root: Path) -> subprocess.CompletedProcess:
    config = f"configs/{configs[0]}" if len(configs) == 1 else "[" + ",".join(f"'configs/{c}'" for c in configs) + "]"
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config,
               "--bundle_root", str(bundle_root), *overrides]
    return subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=600, env=subprocess_env())


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nnmamba_adni")
    data = root / "ADNI"
    generate_adni_phantoms(data, num_cases=16, seed=5)
    run = root / "run"
    _ok(_run("training", ["train.yaml"], "--dataset_dir", str(data), *REDUCED, *SPLIT, "--epochs", "2",
             bundle_root=run))
    return {"data": data, "run": run}


def test_training_writes_a_strictly_loading_model_and_a_subject_split(trained):
    run = trained["run"]
    state = torch.load(run / "models" / "model.pt", weights_only=True)
    nnMambaClassifier(1, 1, mode="release", feature_size=8, blocks=1).load_state_dict(state, strict=True)
    datalist = json.loads((run / "datalist.json").read_text())
    assert [len(datalist[k]) for k in ("training", "validation", "testing")] == [8, 4, 4]
    for entries in datalist.values():  # stratified: each split holds both classes equally
        assert sorted(e["diagnosis"] for e in entries) == ["AD"] * (len(entries) // 2) + ["NC"] * (len(entries) // 2)
    trainer = torch.load(run / "models" / "checkpoint_last.pt", weights_only=True)["trainer"]
    assert trainer["iteration"] == 2 * 4  # 2 epochs of 8 subjects in batches of 2


def _pairwise_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    pos, neg = probs[labels == 1], probs[labels == 0]
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def test_evaluation_threshold_and_scores_match_a_brute_force_recomputation(trained, tmp_path):
    run, data = trained["run"], trained["data"]
    out = tmp_path / "eval"
    _ok(_run("run", ["train.yaml", "evaluate.yaml"], "--dataset_dir", str(data), *REDUCED, "--output_dir", str(out),
             bundle_root=run))
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "subjects.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == ["validation"] * 4 + ["testing"] * 4
    split = {k: (np.array([int(r["label"]) for r in rows if r["split"] == k]),
                 np.array([float(r["probability"]) for r in rows if r["split"] == k]))
             for k in ("validation", "testing")}
    # Youden's J over every validation probability as a threshold, by brute force
    labels, probs = split["validation"]
    j = {t: ((probs >= t) & (labels == 1)).sum() / (labels == 1).sum()
         + ((probs < t) & (labels == 0)).sum() / (labels == 0).sum() - 1 for t in probs}
    assert max(j.values()) == pytest.approx(j[min(j, key=lambda t: (-round(j[t], 9), abs(t - 0.5)))])
    assert j[round(summary["threshold"], 6)] == pytest.approx(max(j.values()), abs=1e-9)
    labels, probs = split["testing"]
    predicted = probs >= summary["threshold"]
    testing = summary["testing"]
    assert testing["accuracy"] == pytest.approx(np.mean(predicted == labels.astype(bool)), abs=1e-6)
    assert testing["auc"] == pytest.approx(_pairwise_auc(labels, probs), abs=1e-6)
    assert [r["prediction"] for r in rows if r["split"] == "testing"] == ["AD" if p else "NC" for p in predicted]

    # inference.yaml on the test volumes gives the same probabilities
    images = tmp_path / "volumes"
    images.mkdir()
    for row in rows[4:]:
        (images / Path(row["image"]).name).write_bytes(Path(row["image"]).read_bytes())
    _ok(_run("run", ["inference.yaml"], "--dataset_dir", str(images), *REDUCED, "--output_dir", str(tmp_path / "inf"),
             "--threshold", str(summary["threshold"]), bundle_root=run))
    with open(tmp_path / "inf" / "predictions.csv") as f:
        predictions = {r["scan"]: r for r in csv.DictReader(f)}
    assert list(next(iter(predictions.values()))) == ["subject", "scan", "image", "probability", "prediction"]
    for row in rows[4:]:
        assert float(predictions[row["scan"]]["probability"]) == pytest.approx(float(row["probability"]), abs=1e-5)
        assert predictions[row["scan"]]["prediction"] == row["prediction"]


def test_transfer_to_smci_vs_pmci_starts_from_the_nc_ad_model_and_keeps_it(trained, tmp_path):
    run = trained["run"]
    nc_ad = _sha256(run / "models" / "model.pt")
    mci = tmp_path / "MCI"
    generate_adni_phantoms(mci, num_cases=8, task="sMCI_v_pMCI", seed=8)
    result = _ok(_run("training", ["train.yaml", "transfer_smci_pmci.yaml"], "--dataset_dir", str(mci), *REDUCED,
                      *SPLIT, "--epochs", "1", bundle_root=run))
    assert f"Restored all variables from {run / 'models' / 'model.pt'}" in result.stdout + result.stderr
    assert _sha256(run / "models" / "model.pt") == nc_ad
    state = torch.load(run / "models" / "model_smci_pmci.pt", weights_only=True)
    before = torch.load(run / "models" / "model.pt", weights_only=True)
    assert state.keys() == before.keys() and any(not torch.equal(state[k], before[k]) for k in state)
    datalist = json.loads((run / "datalist_smci_pmci.json").read_text())
    assert {e["diagnosis"] for k in datalist for e in datalist[k]} == {"sMCI", "pMCI"}
    assert (run / "models" / "checkpoint_last_smci_pmci.pt").is_file()


def _parsed(configs: list[str], **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in configs])
    for key, value in overrides.items():
        parser[key] = value
    return parser


def test_release_and_paper_configurations_at_full_size():
    release = _parsed(["train.yaml"])
    net = release.get_parsed_content("network_def")
    assert net.mode == "release" and sum(p.numel() for p in net.parameters()) == 12_876_321
    optimizer = release.get_parsed_content("optimizer")
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["lr"] == 1e-4 and optimizer.defaults["weight_decay"] == 1e-3
    paper = _parsed(["train.yaml", "paper.yaml"])
    net = paper.get_parsed_content("network_def")
    assert net.mode == "paper" and isinstance(net.pooling, torch.nn.AdaptiveMaxPool3d)
    assert sum(p.numel() for p in net.parameters()) == 12_905_633
    optimizer = paper.get_parsed_content("optimizer")
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["lr"] == 2e-3 and optimizer.defaults["weight_decay"] == 1e-3


def test_class_balanced_sampler_draws_both_classes_equally(tmp_path):
    data = tmp_path / "ADNI"
    generate_adni_phantoms(data, num_cases=18, shape=(16, 16, 16), seed=1)
    for path in sorted((data / "AD").iterdir())[3:]:  # 9 NC, 3 AD
        path.unlink()
    parser = _parsed(["train.yaml"], bundle_root=str(tmp_path), dataset_dir=str(data), class_balanced=True,
                     split_fractions=[0.5, 0.25, 0.25])
    training = parser.get_parsed_content("datalist")["training"]
    assert [e["label"] for e in training].count(0) == 4 * [e["label"] for e in training].count(1)
    sampler = parser.get_parsed_content("train#sampler")
    assert isinstance(sampler, torch.utils.data.WeightedRandomSampler) and len(sampler) == len(training)
    assert not parser.get_parsed_content("train#dataloader#shuffle")
    torch.manual_seed(0)
    draws = [training[i]["label"] for _ in range(400) for i in sampler]
    assert abs(np.mean(draws) - 0.5) < 0.05, np.mean(draws)


@pytest.mark.slow
def test_real_t1_in_three_storage_orientations(mni152_t1, tmp_path):
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    kinds = ("ras", "lps_1x1x3mm", "sagittal_first")
    for kind in kinds:
        nib.save(stored_as(mni152_t1, kind), str(volumes / f"MNI152_{kind}.nii.gz"))
    # a central part of the brain: smaller than the 113 x 137 x 113 grid in every direction, so it is padded
    nib.save(stored_as(mni152_t1, "ras", (slice(40, 150), slice(50, 180), slice(30, 160))),
             str(volumes / "MNI152_crop.nii.gz"))

    parser = _parsed(["inference.yaml"])
    preprocess = parser.get_parsed_content("preprocessing")
    inputs = {kind: preprocess({"image": str(volumes / f"MNI152_{kind}.nii.gz")})["image"]
              for kind in (*kinds, "crop")}
    for kind, image in inputs.items():
        assert tuple(image.shape) == (1, 113, 137, 113), kind
        assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S"), kind
        np.testing.assert_allclose(np.abs(np.diag(image.affine.numpy())[:3]), 1.5, err_msg=kind)
        brain = image[0] != 0
        assert 0.2 < float(brain.float().mean()) < 0.7, kind  # the brain fills the grid, with background around
        values = image[0][brain]
        # z-scored over the brain before the crop, which removes a little of it
        assert abs(float(values.mean())) < 0.05 and abs(float(values.std()) - 1) < 0.05, kind
    # a permutation of the storage axes changes nothing once reoriented
    torch.testing.assert_close(inputs["sagittal_first"], inputs["ras"])

    torch.manual_seed(0)
    net = nnMambaClassifier(1, 1, mode="release", feature_size=8, blocks=1)
    (tmp_path / "bundle" / "models").mkdir(parents=True)
    torch.save(net.state_dict(), tmp_path / "bundle" / "models" / "model.pt")
    _ok(_run("run", ["inference.yaml"], "--dataset_dir", str(volumes), *NETWORK, "--num_workers", "0",
             bundle_root=tmp_path / "bundle"))
    with open(tmp_path / "bundle" / "eval" / "predictions.csv") as f:
        rows = {r["scan"]: float(r["probability"]) for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(f"MNI152_{k}" for k in (*kinds, "crop"))
    net.eval()
    with torch.no_grad():
        expected = {k: float(torch.sigmoid(net(v.as_tensor()[None]))) for k, v in inputs.items()}
    for kind, probability in rows.items():
        assert probability == pytest.approx(expected[kind.removeprefix("MNI152_")], abs=1e-5), kind


def test_bad_input_from_the_command_line_names_subject_and_file(tmp_path):
    data = tmp_path / "ADNI"
    generate_adni_phantoms(data, num_cases=8, layout="csv", seed=2)
    table = data / "subjects.csv"
    table.write_text(table.read_text() + "002_S_9999,AD,images/002_S_9999.nii.gz\n")
    result = _run("training", ["train.yaml"], "--dataset_dir", str(data), "--subjects_csv", str(table), *REDUCED,
                  "--epochs", "1", bundle_root=tmp_path / "run")
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "subject '002_S_9999': its volume" in log and "002_S_9999.nii.gz' does not exist" in log
    table.write_text("subject,label,image\n002_S_1000,Dementia,images/002_S_1000.nii.gz\n")
    result = _run("training", ["train.yaml"], "--dataset_dir", str(data), "--subjects_csv", str(table), *REDUCED,
                  "--epochs", "1", bundle_root=tmp_path / "run2")
    assert result.returncode != 0 and "label 'Dementia' is not a class of the task ['NC', 'AD']" in (
        result.stdout + result.stderr)


@pytest.mark.slow
def test_class_balanced_sampling_under_two_process_ddp(tmp_path):
    from conftest import free_port

    data = tmp_path / "ADNI"
    generate_adni_phantoms(data, num_cases=28, seed=6)
    for path in sorted((data / "AD").iterdir())[8:]:  # 14 NC, 8 AD: 7 + 4 training scans
        path.unlink()
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "monai.bundle", "run",
               "training", "--config_file", "['configs/train.yaml','configs/multi_gpu_train.yaml']",
               "--bundle_root", str(run), "--dataset_dir", str(data), *REDUCED, "--epochs", "1",
               "--class_balanced", "True", "--split_fractions", "[0.5,0.25,0.25]"]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=600, env=subprocess_env())
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    # 11 training scans: DistributedWeightedRandomSampler draws 11 // 2 = 5 per rank (2 batches of 2), where the
    # shuffling DistributedSampler would pad to 6 per rank (3 batches)
    assert "Epoch: 1/1, Iter: 2/2" in log and "Iter: 3/" not in log
    state = torch.load(run / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
