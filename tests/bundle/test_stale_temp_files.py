# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The temporary files of writes killed half-way (``kill -9``) are removed when training starts; nothing else is."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from shared_networks.bundle import AtomicCheckpointSaver, TrainingCheckpoint
from shared_networks.io import remove_stale_temporaries

OTHER_FILES = ["checkpoint_last.pt", "model.pt", "notes.tmp", ".hidden.tmp", ".model.pt.short.tmp", "tmpab12cd_9",
               "model.pt.abcdefgh.tmp"]


def _killed_write(folder: Path, name: str) -> Path:
    """The orphan a process killed with SIGKILL inside ``atomic_write`` leaves: run one and return the file."""
    code = (
        "import os, signal\n"
        "from shared_networks.io import atomic_write\n"
        f"with atomic_write({str(folder / name)!r}) as f:\n"
        "    f.write(b'half a checkpoint')\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert result.returncode == -9
    orphans = [p for p in folder.iterdir() if p.name.startswith(f".{name}.")]
    assert len(orphans) == 1, sorted(os.listdir(folder))
    return orphans[0]


def _age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def _other_files(folder: Path) -> None:
    for name in OTHER_FILES:
        (folder / name).write_bytes(b"keep")
    (folder / ".sub.abcdefgh.tmp").mkdir()  # a folder with the pattern's name


def test_remove_stale_temporaries_removes_only_atomic_write_orphans(tmp_path, caplog):
    orphan = _killed_write(tmp_path, "checkpoint_last.pt")
    _age(orphan, 3600)
    fresh = _killed_write(tmp_path, "model.pt")  # as if another process were writing it right now
    _other_files(tmp_path)
    with caplog.at_level(logging.INFO):
        removed = remove_stale_temporaries(tmp_path, min_age_s=60)
    assert removed == [str(orphan)]
    assert not orphan.exists() and fresh.exists()
    assert all((tmp_path / name).exists() for name in OTHER_FILES) and (tmp_path / ".sub.abcdefgh.tmp").is_dir()
    assert str(orphan) in caplog.text and "'checkpoint_last.pt'" in caplog.text
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_training_checkpoint_cleans_its_folder_when_training_starts(tmp_path, caplog):
    models = tmp_path / "models"
    models.mkdir()
    orphan = _killed_write(models, "checkpoint_last.pt")
    _age(orphan, 3600)
    _other_files(models)
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    engine = Engine(lambda e, b: None)
    TrainingCheckpoint(str(models / "checkpoint_last.pt"), network, optimizer, save_interval=5).attach(engine)
    present_at_first_iteration = []
    engine.add_event_handler(Events.ITERATION_STARTED(once=1), lambda e: present_at_first_iteration.append(
        orphan.exists()))
    with caplog.at_level(logging.INFO):
        engine.run([0], max_epochs=1)
    assert present_at_first_iteration == [False]
    assert all((models / name).exists() for name in OTHER_FILES)
    assert f"Removed the stale temporary file '{orphan}'" in caplog.text
    # ignite's own temporaries are reported, not deleted
    assert "tmpab12cd_9" in caplog.text and "left in place" in caplog.text


def test_atomic_checkpoint_saver_cleans_its_folder_at_first_start(tmp_path):
    orphan = _killed_write(tmp_path, "model.pt")
    _age(orphan, 3600)
    (tmp_path / "keep.txt").write_text("keep")
    network = torch.nn.Linear(2, 1)
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": network}, save_final=True,
                                  final_filename="model.pt")
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    assert sorted(os.listdir(tmp_path)) == ["keep.txt", "model.pt"]
