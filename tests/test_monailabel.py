# Copyright (c) the shared_networks authors. Licensed under the Apache License, Version 2.0.
"""Every segmentation bundle served by MONAI Label's ``monaibundle`` app (monailabel 0.8.5, own env made by
``ci/setup_monailabel.sh``): ``/info/`` lists the labels of ``channel_def`` and ``/infer/<bundle>`` returns a label
volume of the input's size. Skipped when the env is missing, unless RUN_MONAILABEL=1 (then it must exist)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, bundle_params, copy_bundle, free_port, reduced_settings, subprocess_env, \
    write_initial_weights

MONAILABEL_VENV = Path(os.environ.get("MONAILABEL_VENV", REPO_ROOT / ".venv-monailabel"))
MONAILABEL = MONAILABEL_VENV / "bin" / "monailabel"

pytestmark = [pytest.mark.monailabel, pytest.mark.slow]


@pytest.fixture(scope="module")
def monailabel_bin() -> Path:
    required = os.environ.get("RUN_MONAILABEL") == "1"
    if not MONAILABEL.is_file():
        reason = f"MONAI Label env missing ({MONAILABEL}); create it with `bash ci/setup_monailabel.sh`"
        pytest.fail(reason) if required else pytest.skip(reason)
    # the app imports monailabel.transform.post, which imports torchvision: it must load with the env's torch
    probe = subprocess.run([str(MONAILABEL_VENV / "bin" / "python"), "-c", "import monailabel.tasks.infer.bundle"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        reason = f"MONAI Label env {MONAILABEL_VENV} cannot load its bundle tasks ({last})"
        pytest.fail(reason) if required else pytest.skip(reason)
    return MONAILABEL


def _reduce_configs(bundle_copy: Path) -> None:
    """MONAI Label builds ``network_def`` from the bundle's own configs, so write the reduced sizes into the copy."""
    settings = reduced_settings(bundle_copy)
    for stem, section in (("inference", "inference"), ("train", "train")):
        path = next((bundle_copy / "configs").glob(f"{stem}.*"))
        content = yaml.safe_load(path.read_text())
        content["network_def"].update(settings.get("network_def", {}))
        content.update({k: v for k, v in settings.get(section, {}).items() if k in content})
        path.write_text(yaml.safe_dump(content, sort_keys=False, width=200))


def _wait_for(url: str, server: subprocess.Popen, log: Path, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail("MONAI Label server exited:\n" + log.read_text()[-5000:])
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(1)
    pytest.fail(f"MONAI Label server not up after {timeout}s:\n" + log.read_text()[-5000:])


@pytest.mark.parametrize("bundle", bundle_params())
def test_monaibundle_app_info_and_infer(monailabel_bin: Path, bundle: Path, tmp_path: Path):
    import nibabel as nib

    apps = tmp_path / "apps"
    env = subprocess_env(PATH=f"{MONAILABEL_VENV / 'bin'}{os.pathsep}{os.environ['PATH']}")
    subprocess.run([str(monailabel_bin), "apps", "--download", "--name", "monaibundle", "--output", str(apps)],
                   check=True, capture_output=True, env=env, timeout=300)
    served = copy_bundle(bundle, apps / "monaibundle" / "model")
    _reduce_configs(served)
    write_initial_weights(served, config="inference")
    studies = tmp_path / "studies"
    studies.mkdir()
    shape = (32, 32, 32)
    image = np.random.default_rng(0).random((*shape, 4), dtype=np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(studies / "case0.nii.gz"))

    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(monailabel_bin), "start_server", "--app", str(apps / "monaibundle"), "--studies", str(studies),
             "--conf", "models", bundle.name, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        info = _wait_for(f"http://127.0.0.1:{port}/info/", server, log)
        assert bundle.name in info["models"], info
        metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
        channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
        expected = {v.lower() for k, v in channel_def.items() if v.lower() != "background"}
        assert set(info["models"][bundle.name]["labels"]) == expected

        boundary = "----sharednetworks"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n"
                f"{json.dumps({'device': 'cpu'})}\r\n--{boundary}--\r\n").encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/infer/{bundle.name}?image=case0&output=image",
                                         data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=600) as response:
            (tmp_path / "pred.nii.gz").write_bytes(response.read())
        pred = np.asarray(nib.load(str(tmp_path / "pred.nii.gz")).dataobj)
        assert pred.shape == shape
        assert set(np.unique(pred).tolist()) <= set(range(len(channel_def)))
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
