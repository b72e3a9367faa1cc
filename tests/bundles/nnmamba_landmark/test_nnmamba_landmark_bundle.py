# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
End-to-end CPU tests of ``bundles/nnmamba_landmark`` through ``python -m monai.bundle run`` on synthetic volumes with
landmarks, at a reduced size: training (model selection on the lowest validation MRE), training from label maps as
MONAI Label's /train lists them, evaluation (the per-landmark table and the MRE recomputed from the written points and
the true ones), inference (points in mm and in voxels of the input file, mutually consistent through its affine, and
label maps of them on the input's grid), and the released network and recipe at full size.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import subprocess_env

from shared_networks.data import generate_landmark_phantoms
from shared_networks.nets import nnMambaSeg

BUNDLE = Path(__file__).resolve().parents[3] / "bundles" / "nnmamba_landmark"
NETWORK = ["--network_def#feature_size", "16", "--network_def#blocks", "1"]
REDUCED = [*NETWORK, "--spatial_size", "[32,32,32]", "--heatmap_sigma", "2.0", "--num_workers", "0"]
NAMES = ["TCD1", "TCD2", "HDV1", "HDV2", "ADV1", "ADV2"]


def _run(configs: list[str], *overrides: str, bundle_root: Path) -> subprocess.CompletedProcess:
    """``monai.bundle run`` of ``configs`` (names in configs/, or paths of overlay files)."""
    configs = [c if "/" in c else f"configs/{c}" for c in configs]
    config = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root",
                             str(bundle_root), *overrides], cwd=BUNDLE, capture_output=True, text=True, timeout=600,
                            env=subprocess_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nnmamba_landmark")
    data = root / "landmarks"
    generate_landmark_phantoms(data, num_cases=10, shape=(32, 32, 32), spacing=1.5, seed=2)
    run = root / "run"
    result = _run(["train.yaml"], "--dataset_dir", str(data), *REDUCED, "--epochs", "3", "--warmup_epochs", "2",
                  bundle_root=run)
    return {"data": data, "run": run, "log": result.stdout + result.stderr}


def test_training_keeps_the_epoch_of_the_lowest_validation_mre(trained):
    state = torch.load(trained["run"] / "models" / "model.pt", weights_only=True)
    nnMambaSeg(1, 6, feature_size=16, blocks=1).load_state_dict(state, strict=True)
    values = [float(v) for v in re.findall(r"Epoch\[\d+\] Metrics -- val_mre: ([0-9.]+)", trained["log"])]
    assert len(values) == 3
    best = re.findall(r"Key metric: val_mre best value: ([0-9.]+) at epoch: (\d+)", trained["log"])[-1]
    assert float(best[0]) == pytest.approx(min(values), abs=1e-4)
    assert int(best[1]) == 1 + values.index(min(values))
    checkpoint = torch.load(trained["run"] / "models" / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 3 * 3  # 7 training cases, batches of 2, the last one dropped


def test_training_from_label_maps_equals_training_from_their_centroids(trained, tmp_path):
    """MONAI Label's /train overrides the datasets with {"image", "label"} items, the label maps holding a ball per
    landmark valued by its number: training then sees the balls' centroids, exactly as if they were given as points."""
    from shared_networks.bundle import landmark_label_map, landmarks_from_label_map

    cases = json.loads((trained["run"] / "datalist.json").read_text())
    items = (cases["training"] + cases["validation"] + cases["testing"])[:6]
    labels, from_maps, from_points = tmp_path / "labels", [], []
    labels.mkdir()
    for item in items:
        image = nib.load(item["image"])
        label_map = landmark_label_map(item["landmarks"], image.affine, image.shape, radius_mm=2.2)
        path = labels / f"{item['case']}.nii.gz"
        nib.save(nib.Nifti1Image(label_map, image.affine), str(path))
        from_maps.append({"image": item["image"], "label": str(path)})
        centroids = landmarks_from_label_map(label_map, image.affine, len(NAMES))
        from_points.append({"image": item["image"], "landmarks": centroids.tolist()})
    logs = []
    for name, data in (("maps", from_maps), ("points", from_points)):
        overlay = tmp_path / f"{name}.json"
        overlay.write_text(json.dumps({"train#dataset#data": data[:4], "validate#dataset#data": data[4:]}))
        result = _run(["train.yaml", str(overlay)], *REDUCED, "--epochs", "1", "--warmup_epochs", "1",
                      bundle_root=tmp_path / name)
        logs.append(re.findall(r"Epoch\[1\] Metrics -- val_mre: ([0-9.]+)", result.stdout + result.stderr))
    assert len(logs[0]) == 1 and logs[0] == logs[1], logs


def test_evaluation_table_matches_the_written_points(trained, tmp_path):
    run, data = trained["run"], trained["data"]
    out = tmp_path / "eval"
    _run(["train.yaml", "evaluate.yaml"], "--dataset_dir", str(data), *REDUCED, "--output_dir", str(out),
         bundle_root=run)
    summary = json.loads((out / "metrics_summary.json").read_text())["metrics"]
    assert list(summary["val_radial_error"]) == NAMES
    with open(out / "landmarks_testing.csv") as f:
        rows = list(csv.DictReader(f))
    testing = {e["case"]: e for e in json.loads((run / "datalist.json").read_text())["testing"]}
    assert len(rows) == 6 * len(testing)
    errors = {name: [] for name in NAMES}
    for row in rows:
        truth = np.asarray(testing[row["case"]]["landmarks"][NAMES.index(row["landmark"])])
        predicted = np.array([float(row[a]) for a in "xyz"])
        error = float(np.linalg.norm(predicted - truth))
        assert float(row["error_mm"]) == pytest.approx(error, abs=2e-3)
        errors[row["landmark"]].append(error)
    for name in NAMES:
        assert summary["val_radial_error"][name] == pytest.approx(np.mean(errors[name]), abs=2e-3)
    assert summary["val_mre"] == pytest.approx(np.mean([e for v in errors.values() for e in v]), abs=2e-3)
    with open(out / "val_mre_raw.csv") as f:
        raw = list(csv.DictReader(f))
    assert len(raw) == len(testing) and list(raw[0])[1:7] == [f"class{i}" for i in range(6)]


def test_inference_points_in_mm_and_in_voxels_of_the_input_agree(trained, tmp_path):
    run, data = trained["run"], trained["data"]
    out = tmp_path / "out"
    _run(["inference.yaml"], "--dataset_dir", str(data / "images"), *NETWORK, "--spatial_size", "[32,32,32]",
         "--num_workers", "0", "--output_dir", str(out), bundle_root=run)
    with open(out / "landmarks.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 10 and list(rows[0]) == ["case", "image", "landmark", "x", "y", "z", "i", "j", "k"]
    for row in rows:
        affine = nib.load(row["image"]).affine
        voxel = np.array([float(row[a]) for a in "ijk"])
        world = affine[:3, :3] @ voxel + affine[:3, 3]
        np.testing.assert_allclose(world, [float(row[a]) for a in "xyz"], atol=0.02)
    from shared_networks.data import read_landmark_table

    table, space = read_landmark_table(out / "landmarks.csv", space="ras")
    assert space == "ras" and len(table) == 10 and all(list(points) == NAMES for points in table.values())

    # the label maps (what MONAI Label serves): on the input's grid, landmark n a ball valued n + 1 around its point
    # (a barely trained network may put two landmarks in one voxel: only one of them can be shown there)
    checked = 0
    for case, points in table.items():
        source, label_map = nib.load(data / "images" / f"{case}.nii.gz"), nib.load(out / f"{case}_landmarks.nii.gz")
        labels = np.asarray(label_map.dataobj)
        assert label_map.shape == source.shape and labels.dtype == np.uint8
        np.testing.assert_allclose(label_map.affine, source.affine, atol=1e-5)
        world = np.array([points[n] for n in NAMES])
        voxels = [tuple(v) for v in np.rint((world - source.affine[:3, 3]) @ np.linalg.inv(source.affine[:3, :3]).T)]
        for index in (i for i, v in enumerate(voxels) if voxels.count(v) == 1):
            centroid = np.argwhere(labels == index + 1).mean(axis=0)
            distance = np.linalg.norm(source.affine[:3, :3] @ centroid + source.affine[:3, 3] - world[index])
            assert distance <= 1.5, (case, NAMES[index], distance)  # within one voxel (1.5 mm) where balls touch
            checked += 1
    assert checked >= 30, checked


def test_released_network_and_recipe_at_full_size():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    net = parser.get_parsed_content("network_def")
    assert sum(p.numel() for p in net.parameters()) == 15_944_958
    parser["bundle_root"] = "."
    optimizer = parser.get_parsed_content("optimizer")
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 1e-3
    scheduler = parser.get_parsed_content("lr_scheduler")
    rates = []
    for _ in range(80):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # warm-up 0.2, 0.4, ..., 1.0 x 1e-3 over 5 epochs, then (1 - t / 75)^2 decay
    np.testing.assert_allclose(rates[:5], [2e-4, 4e-4, 6e-4, 8e-4, 1e-3], rtol=1e-6)
    np.testing.assert_allclose(rates[5 + 30], 1e-3 * (1 - 31 / 75) ** 2, rtol=1e-6)
    assert rates[-1] < 1e-5
