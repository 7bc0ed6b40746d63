"""Policies mounted the way Kubernetes mounts a ConfigMap volume: entries are symlinks into a
``..data`` symlink that points at a timestamped directory, swapped atomically on update."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from gateway.policy import default_policy_dir
from gateway.policy.bundle import load_bundle, snapshot


def _configmap_volume(tmp: Path) -> tuple[Path, Path]:
    volume = tmp / "policies"
    version = volume / "..2026_11_25_16_00_00.000000001"
    shutil.copytree(default_policy_dir(), version)
    os.symlink(version.name, volume / "..data")
    os.symlink("..data/switchboard", volume / "switchboard")
    return volume, version


def test_symlinked_policy_directory_is_loaded(tmp_path: Path) -> None:
    volume, _ = _configmap_volume(tmp_path)
    direct = load_bundle(default_policy_dir())
    mounted = load_bundle(volume)
    assert [m for m, _ in mounted.modules] == [m for m, _ in direct.modules]
    assert mounted.revision == direct.revision  # same content, same revision
    assert mounted.data == direct.data


def test_atomic_configmap_update_is_seen(tmp_path: Path) -> None:
    volume, version = _configmap_volume(tmp_path)
    before = snapshot(volume)
    revision = load_bundle(volume).revision
    update = volume / "..2026_11_25_16_05_00.000000002"
    shutil.copytree(version, update)
    data_file = update / "switchboard" / "data.json"
    data = json.loads(data_file.read_text())
    data["grants"]["payments"].append("agent")
    data_file.write_text(json.dumps(data))
    os.symlink(update.name, volume / "..data_tmp")
    os.replace(volume / "..data_tmp", volume / "..data")  # what the kubelet does
    assert snapshot(volume) != before
    assert load_bundle(volume).revision != revision


def test_symlink_loop_is_walked_once(tmp_path: Path) -> None:
    volume, version = _configmap_volume(tmp_path)
    os.symlink("..", version / "switchboard" / "loop")
    assert len(load_bundle(volume).modules) == len(load_bundle(default_policy_dir()).modules)
