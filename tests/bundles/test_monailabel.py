# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Every segmentation bundle served by MONAI Label's ``monaibundle`` app (monailabel 0.8.5, own env made by
``ci/setup_monailabel.sh``) from a local folder: ``/info/`` lists the labels of ``channel_def``, ``/infer/<bundle>``
with an uploaded image returns a label volume on the input's grid, and ``/train/<bundle>`` fine-tunes the served
weights and rewrites ``models/model.pt``. The server runs on 127.0.0.1 (a free port) with reduced network sizes.
The datastore and the upload follow the bundle's metadata ``data_type``: 3D NIfTI volumes (``nibabel``) or 2D RGB PNG
frames with PNG label maps (``png``). A landmark bundle (``pred`` of format ``heatmaps``) is served through the label
map its inference config makes (metadata's first output): the datastore holds a ball per landmark valued by its
number, and ``/infer`` answers the same points as the bundle's own inference, in its JSON and as such balls.
Skipped when RUN_MONAILABEL=0 or the env is missing, unless RUN_MONAILABEL=1 (then it must exist and work);
``ci/test.sh`` builds the env and sets RUN_MONAILABEL=1 when the disk has room."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    REPO_ROOT,
    bundle_checks,
    bundle_params,
    copy_bundle,
    free_port,
    make_synthetic_data,
    subprocess_env,
    write_initial_weights,
)

MONAILABEL_VENV = Path(os.environ.get("MONAILABEL_VENV", REPO_ROOT / ".venv-monailabel"))
MONAILABEL = MONAILABEL_VENV / "bin" / "monailabel"
VENV_PYTHON = MONAILABEL_VENV / "bin" / "python"
TRAIN_CASES = 3  # MONAI Label splits them 2 / 1 with val_split 0.34
UPLOAD_PADDING = (8, 4, 0)  # zeros after the end of each axis of the upload: not cubic, so a mixed-up axis order shows
UPLOAD_SPACING = (1.0, 1.0, 1.25)  # not the bundle's 1 mm: Spacingd and its inverse both run
UPLOAD_PNG_PADDING = (6, 17)  # rows and columns of edge pixels added to a 2D upload: a size no window tiles evenly
LANDMARK_RADIUS_MM = 2.0  # the balls of the datastore's landmark annotations (inference.yaml's label_radius_mm)

pytestmark = [pytest.mark.monailabel, pytest.mark.slow]


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("RUN_MONAILABEL") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def monailabel_bin() -> Path:
    if os.environ.get("RUN_MONAILABEL") == "0":
        pytest.skip("RUN_MONAILABEL=0")
    if not MONAILABEL.is_file():
        _skip_or_fail(f"MONAI Label env missing ({MONAILABEL}); create it with `bash ci/setup_monailabel.sh`")
    # the app imports monailabel.transform.post, which imports torchvision: it must load with the env's torch
    code = "import monailabel.tasks.infer.bundle, monailabel.tasks.train.bundle"
    probe = subprocess.run([str(VENV_PYTHON), "-c", code], capture_output=True, text=True, timeout=300,
                           env=subprocess_env())
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        _skip_or_fail(f"MONAI Label env {MONAILABEL_VENV} cannot load its bundle tasks ({last})")
    return MONAILABEL


@pytest.fixture(scope="module")
def scan_backend(monailabel_bin: Path) -> str:
    """The CPU selective-scan backend of the MONAI Label env: ``cpp`` when the C++ kernel builds there (the build is
    cached for the server), else the pure PyTorch fallback ``torch``. The server is then forced onto it, so a kernel
    that built here but failed inside the server would fail the tests instead of silently falling back."""
    code = ("import logging; logging.basicConfig(level=logging.WARNING)\n"
            "from shared_networks.ssm.backends import selective_scan_backend\n"
            "print(selective_scan_backend('cpu', backend='auto'))")
    probe = subprocess.run([str(VENV_PYTHON), "-c", code], capture_output=True, text=True, timeout=900,
                           env=subprocess_env(), cwd=REPO_ROOT)
    assert probe.returncode == 0, probe.stderr[-3000:]
    backend = probe.stdout.strip().splitlines()[-1]
    assert backend in ("cpp", "torch"), probe.stdout
    if backend != "cpp":
        warnings.warn(f"the C++ scan kernel does not build in {MONAILABEL_VENV}; MONAI Label runs the pure PyTorch "
                      f"scan ({(probe.stderr.strip().splitlines() or ['?'])[-1]})", stacklevel=1)
    return backend


def _reduce_configs(bundle_copy: Path) -> None:
    """MONAI Label builds ``network_def`` from the bundle's own configs, so write the reduced sizes into the copy.
    A ``finetune`` switch of the train config is turned on: MONAI Label then trains from the served ``model.pt``
    (it does not add its own loader when the bundle has a ``CheckpointLoader``, see docs/monailabel.md)."""
    checks = bundle_checks(bundle_copy)
    for stem in ("inference", "train"):
        # every copy of the config (MONAI Label reads the JSON one first when a release carries both)
        paths = [p for p in (bundle_copy / "configs").glob(f"{stem}.*") if p.suffix in (".json", ".yaml", ".yml")]
        assert paths, f"{bundle_copy.name} has no configs/{stem}.json|yaml"
        for path in paths:
            content = (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text())
            content["network_def"].update(checks.network_def)
            content.update({k: v for k, v in getattr(checks, stem).items() if k in content})
            if stem == "train" and "finetune" in content:
                content["finetune"] = True
            path.write_text(json.dumps(content, indent=2) if path.suffix == ".json"
                            else yaml.safe_dump(content, sort_keys=False, width=200))


def _metadata(bundle: Path) -> tuple[dict, dict]:
    """(input channel_def, output channel_def) of the first input/output, as MONAI Label reads them."""
    formats = json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]
    image = next(iter(formats["inputs"].values()))
    pred = next(iter(formats["outputs"].values()))
    return image["channel_def"], pred["channel_def"]


def _labelled_cases(bundle_copy: Path, dataset: Path, scratch: Path) -> list[dict]:
    """The labelled cases of ``dataset`` as the bundle's train config lists them: its ``datalist`` resolved with
    ``dataset_dir`` = ``dataset`` (and ``bundle_root`` = ``scratch``, where a datalist file may be written), every
    split of a split datalist, sorted by label file."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(next((bundle_copy / "configs").glob("train.*"))))
    parser["bundle_root"] = str(scratch)
    parser["dataset_dir"] = str(dataset)
    datalist = parser.get_parsed_content("datalist")
    items = [item for split in datalist.values() for item in split] if isinstance(datalist, dict) else datalist
    return sorted(items, key=lambda item: str(item.get("label", item["image"])))


def _as_single_files(item: dict, padding: tuple[int, ...] = (0, 0, 0), spacing: tuple[float, ...] | None = None):
    """One datalist case as a single channel-last NIfTI (MONAI Label serves one image file per case; a list of
    files is stacked as channels in the datalist's order, which is the bundle's input order) and its label map (for a
    landmark case, a ball per landmark valued by its number). ``padding`` appends zeros after the end of each spatial
    axis; ``spacing`` rescales the voxel axes of the affine."""
    import nibabel as nib
    from monai.transforms import LoadImage

    from shared_networks.bundle import landmark_label_map

    image = LoadImage(image_only=True, ensure_channel_first=True)(item["image"])
    if "label" in item:
        label = LoadImage(image_only=True)(item["label"])
    else:
        label = landmark_label_map(item["landmarks"], image.affine, image.shape[1:], LANDMARK_RADIUS_MM)
    affine = np.asarray(image.affine, dtype=np.float64)
    if spacing is not None:
        affine = affine @ np.diag([*spacing, 1.0])
    pad = [(0, p) for p in padding]
    channels_last = np.moveaxis(np.asarray(image, dtype=np.float32), 0, -1)
    if channels_last.shape[-1] == 1:  # one channel: a plain 3D volume, as such data is stored
        image_file = nib.Nifti1Image(np.pad(channels_last[..., 0], pad), affine)
    else:
        image_file = nib.Nifti1Image(np.pad(channels_last, [*pad, (0, 0)]), affine)
    label_file = nib.Nifti1Image(np.pad(np.asarray(label, dtype=np.uint8), pad), affine)
    return image_file, label_file


def _multipart(fields: dict[str, str], files: dict[str, Path]) -> tuple[bytes, str]:
    boundary = f"----sharednetworks{uuid.uuid4().hex}"
    parts = []
    for name, value in fields.items():
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode())
    for name, path in files.items():
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{path.name}\"\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _post(url: str, body: bytes, content_type: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.status == 200, response.status
        return response.read()


@dataclasses.dataclass
class Served:
    bundle: Path  # the bundle in bundles/
    copy: Path  # the served copy under <app>/model/
    base_url: str
    server: subprocess.Popen
    log: Path
    initial_weights: Path  # a copy of the weights the server started with
    upload: Path  # the image to upload for /infer: one NIfTI holding all input channels
    tmp: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def _wait_for(url: str, server: subprocess.Popen, log: Path, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail("MONAI Label server exited:\n" + log.read_text(errors="replace")[-6000:])
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(1)
    pytest.fail(f"MONAI Label server not up after {timeout}s:\n" + log.read_text(errors="replace")[-6000:])


def _data_type(bundle: Path) -> str:
    return json.loads((bundle / "configs" / "metadata.json").read_text()).get("data_type", "nibabel")


def _pred_format(bundle: Path) -> str:
    formats = json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]
    return next(iter(formats["outputs"].values())).get("format", "")


def _serves_landmarks(bundle: Path) -> bool:
    formats = json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]
    return formats["outputs"]["pred"].get("format") == "heatmaps"


def _served_bundle_params() -> list:
    """The bundles whose served output is a label map (MONAI Label has no classification task: nnmamba_adni's README
    says so)."""
    return [p for p in bundle_params()
            if _data_type(p.values[0]) in ("nibabel", "png") and _pred_format(p.values[0]) == "segmentation"]


def _write_png_datastore(cases: list[dict], studies: Path, upload: Path) -> None:
    """``studies/case_<i>.png`` (RGB frame) + ``studies/labels/final/case_<i>.png`` (label map) for all cases but the
    last; the last frame, edge-padded to an uneven size, is the upload."""
    import shutil

    from PIL import Image

    for i, item in enumerate(cases[:-1]):
        shutil.copyfile(item["image"], studies / f"case_{i}.png")
        shutil.copyfile(item["label"], studies / "labels" / "final" / f"case_{i}.png")
    frame = np.asarray(Image.open(cases[-1]["image"]).convert("RGB"))
    rows, cols = UPLOAD_PNG_PADDING
    Image.fromarray(np.pad(frame, [(0, rows), (0, cols), (0, 0)], mode="edge")).save(upload)


@pytest.fixture(scope="module", params=_served_bundle_params())
def served(request, monailabel_bin: Path, scan_backend: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The bundle (reduced, initial weights) in a fresh ``monaibundle`` app, with a datastore of labelled cases of
    the bundle's synthetic data, served on 127.0.0.1."""
    import shutil

    import nibabel as nib

    bundle: Path = request.param
    tmp = tmp_path_factory.mktemp(f"monailabel_{bundle.name}")
    env = subprocess_env(PATH=f"{MONAILABEL_VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
                         SHARED_NETWORKS_SCAN_BACKEND=scan_backend)
    apps = tmp / "apps"
    subprocess.run([str(monailabel_bin), "apps", "--download", "--name", "monaibundle", "--output", str(apps)],
                   check=True, capture_output=True, env=env, timeout=300)
    served_copy = copy_bundle(bundle, apps / "monaibundle" / "model")
    _reduce_configs(served_copy)
    weights = write_initial_weights(served_copy, config="inference")
    initial_weights = tmp / "initial_model.pt"
    shutil.copy2(weights, initial_weights)

    # datastore: <studies>/case_<i>.nii.gz (all input channels) and <studies>/labels/final/case_<i>.nii.gz
    dataset = make_synthetic_data(bundle, tmp / "synthetic", num_cases=TRAIN_CASES + 1)
    cases = _labelled_cases(served_copy, dataset, tmp)
    assert len(cases) >= TRAIN_CASES + 1, cases  # a generator may add labelled test cases (nnU-Net imagesTs)
    studies = tmp / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    if _data_type(bundle) == "png":
        upload = tmp / "upload_image.png"
        _write_png_datastore(cases, studies, upload)
    else:
        for i, item in enumerate(cases[:TRAIN_CASES]):
            image, label = _as_single_files(item)
            nib.save(image, str(studies / f"case_{i}.nii.gz"))
            nib.save(label, str(studies / "labels" / "final" / f"case_{i}.nii.gz"))
        # upload: the case left out of the datastore, padded to a non-cubic shape, on an anisotropic grid
        image, _ = _as_single_files(cases[-1], padding=UPLOAD_PADDING, spacing=UPLOAD_SPACING)
        assert len(set(image.shape[:3])) == 3, image.shape
        upload = tmp / "upload_image.nii.gz"
        nib.save(image, str(upload))

    port = free_port()
    log = tmp / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(monailabel_bin), "start_server", "--app", str(apps / "monaibundle"), "--studies", str(studies),
             "--conf", "models", bundle.name, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_for(f"http://127.0.0.1:{port}/info/", server, log)
        yield Served(bundle, served_copy, f"http://127.0.0.1:{port}", server, log, initial_weights, upload, tmp)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)


def test_info_lists_bundle_labels(served: Served):
    with urllib.request.urlopen(f"{served.base_url}/info/", timeout=60) as response:
        info = json.loads(response.read())
    name = served.bundle.name
    assert name in info["models"], info["models"].keys()
    assert name in info["trainers"], info["trainers"].keys()
    _, out_channels = _metadata(served.bundle)
    expected = {v.lower(): int(k) for k, v in out_channels.items() if v.lower() != "background"}
    assert info["models"][name]["labels"] == expected
    assert info["models"][name]["dimension"] == (2 if _data_type(served.bundle) == "png" else 3)
    assert set(info["labels"]) == set(expected)


def _infer(served: Served, name: str) -> Path:
    """POST the upload to /infer/<bundle>; returns the saved answer, named with the upload's extension."""
    body, content_type = _multipart({"params": json.dumps({"device": "cpu"})}, {"file": served.upload})
    result = _post(f"{served.base_url}/infer/{served.bundle.name}?output=image", body, content_type, timeout=900)
    suffix = ".png" if served.upload.suffix == ".png" else ".nii.gz"
    path = served.tmp / f"{name}{suffix}"
    path.write_bytes(result)
    return path


def _infer_json(served: Served) -> dict:
    """POST the upload to /infer/<bundle>?output=json: the answer's JSON."""
    body, content_type = _multipart({"params": json.dumps({"device": "cpu"})}, {"file": served.upload})
    return json.loads(_post(f"{served.base_url}/infer/{served.bundle.name}?output=json", body, content_type,
                            timeout=900))


def _check_prediction(served: Served, pred_path: Path) -> np.ndarray:
    """The label map is on the upload's grid (NIfTI: shape and affine; PNG: rows x columns) with only the bundle's
    labels; returns it."""
    _, out_channels = _metadata(served.bundle)
    if served.upload.suffix == ".png":
        from PIL import Image

        with Image.open(pred_path) as answer, Image.open(served.upload) as source:
            assert answer.size == source.size, (answer.size, source.size)
            pred = np.asarray(answer)
        assert pred.ndim == 2, pred.shape
    else:
        import nibabel as nib

        pred_image, source = nib.load(str(pred_path)), nib.load(str(served.upload))
        pred = np.asarray(pred_image.dataobj)
        assert pred.shape == source.shape[:3], (pred.shape, source.shape)
        np.testing.assert_allclose(pred_image.affine, source.affine, atol=1e-4)
    assert np.issubdtype(pred.dtype, np.integer) or np.array_equal(pred, np.round(pred)), pred.dtype
    assert set(np.unique(pred).astype(int).tolist()) <= {int(k) for k in out_channels}
    return pred


def _own_inference(served: Served, weights: Path) -> Path:
    """Runs the served bundle's own inference.yaml (this repository's env) on the upload with ``weights``; returns
    its output folder."""
    import shutil
    import sys

    frames, models, out = (served.tmp / "own" / d for d in ("frames", "models", "eval"))
    for folder in (frames, models):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(served.upload, frames / served.upload.name)
    shutil.copyfile(weights, models / "model.pt")
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
               "--bundle_root", str(served.copy), "--dataset_dir", str(frames), "--ckpt_dir", str(models),
               "--output_dir", str(out)]
    result = subprocess.run(command, cwd=served.copy, capture_output=True, text=True, env=subprocess_env(),
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_infer_uploaded_image_returns_label_volume_on_input_grid(served: Served):
    pred = _check_prediction(served, _infer(served, "pred"))
    if served.upload.suffix == ".png":
        # the same labels, pixel for pixel up to rare argmax ties, as the bundle's own inference with these weights
        # (so the answer is neither transposed nor mirrored); MONAI Label's env runs another MONAI and torch
        from PIL import Image

        with Image.open(_own_inference(served, served.initial_weights) / f"{served.upload.stem}_seg.png") as image:
            own = np.asarray(image)
        assert len(np.unique(own)) > 1, "a constant label map cannot show the orientation"
        assert (pred == own).mean() >= 0.99, (pred == own).mean()


def test_infer_answers_the_landmarks_of_the_bundles_own_inference(served: Served):
    """The JSON answer lists the points of the bundle's own inference.yaml (same weights, this repository's env), by
    name and label value, and the served label map has the ball of each point at that point."""
    import csv

    import nibabel as nib

    if not _serves_landmarks(served.bundle):
        pytest.skip("not a landmark bundle")
    answer = _infer_json(served)
    _, out_channels = _metadata(served.bundle)
    records = answer["landmarks"]
    assert [(r["name"], r["value"]) for r in records] == [(v, int(k)) for k, v in out_channels.items() if k != "0"]
    points = np.array([[r[a] for a in "xyz"] for r in records])
    with open(_own_inference(served, served.initial_weights) / "landmarks.csv") as f:
        own = {row["landmark"]: [float(row[a]) for a in "xyz"] for row in csv.DictReader(f)}
    np.testing.assert_allclose(points, [own[r["name"]] for r in records], atol=0.01)

    label_map = nib.load(str(_infer(served, "pred_landmarks")))
    labels, affine = np.asarray(label_map.dataobj), label_map.affine
    voxels = [tuple(v) for v in np.rint((points - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)]
    unique = [i for i, v in enumerate(voxels) if voxels.count(v) == 1]  # two points in one voxel show only one
    assert unique, voxels
    for index in unique:
        assert labels[voxels[index]] == index + 1
        centroid = affine[:3, :3] @ np.argwhere(labels == index + 1).mean(axis=0) + affine[:3, 3]
        assert np.linalg.norm(centroid - points[index]) <= np.abs(affine[:3, :3]).sum(axis=0).max(), index


def _env_has_monai_transform(name: str) -> bool:
    code = f"import monai.transforms as t; print(hasattr(t, {name!r}))"
    probe = subprocess.run([str(VENV_PYTHON), "-c", code], capture_output=True, text=True, timeout=300,
                           env=subprocess_env())
    return probe.stdout.strip().splitlines()[-1:] == ["True"]


def test_train_fine_tunes_and_rewrites_model_pt(served: Served):
    import torch
    from monai.bundle import ConfigParser

    if _serves_landmarks(served.bundle) and not _env_has_monai_transform("GenerateHeatmapd"):
        # docs/monailabel.md: the landmark bundle's heatmaps need MONAI >= 1.6, which this env cannot hold for the
        # Spacingd bundles; an env made with MONAILABEL_MONAI='monai>=1.6,<1.7' trains it
        pytest.skip(f"MONAI in {MONAILABEL_VENV} has no GenerateHeatmapd (MONAI >= 1.6)")

    weights = served.copy / "models" / "model.pt"
    before = weights.stat().st_mtime_ns, weights.read_bytes()
    request = {"max_epochs": 1, "device": "cpu", "val_split": 0.34, "multi_gpu": False, "pretrained": True}
    answer = _post(f"{served.base_url}/train/{served.bundle.name}?run_sync=true", json.dumps(request).encode(),
                   "application/json", timeout=1500)
    assert served.server.poll() is None, served.log_tail()
    assert json.loads(answer) is not None
    assert weights.stat().st_mtime_ns != before[0], "models/model.pt was not rewritten:\n" + served.log_tail()
    assert weights.read_bytes() != before[1]

    # the new file is a plain state dict of the (reduced) network_def
    parser = ConfigParser()
    parser.read_config(str(next((served.copy / "configs").glob("train.*"))))
    parser["bundle_root"] = str(served.copy)
    network = parser.get_parsed_content("network_def")
    new_state = torch.load(weights, map_location="cpu", weights_only=True)
    network.load_state_dict(new_state, strict=True)
    # fine-tuned from the served weights, not trained from scratch: 1 epoch of a few iterations moves them far less
    # than the distance to another random initialisation of the same network
    initial = torch.load(served.initial_weights, map_location="cpu", weights_only=True)
    assert new_state.keys() == initial.keys()
    torch.manual_seed(12345)
    other_init = parser.get_parsed_content("network_def", lazy=False).state_dict()
    # parameters only: BatchNorm running statistics (nnMamba) follow the data, not the optimiser
    float_keys = [name for name, _ in network.named_parameters()]

    def distance(state: dict) -> float:
        return float(torch.cat([(state[k] - initial[k]).flatten() for k in float_keys]).norm())

    moved, scratch = distance(new_state), distance(other_init)
    assert scratch > 0
    assert 0 < moved < 0.1 * scratch, (moved, scratch)

    # the server reloads the new weights and still answers /infer
    _check_prediction(served, _infer(served, "pred_after_train"))
