"""The runner and setup stop bad input before any training; damaged data and orphan temporaries are handled."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from companion import data as D
from companion import files, store
from companion.__main__ import main
from companion.course import catalog
from companion.course import runner as course
from companion.course.params import ParameterError, setup
from companion.files import REPO, resolve
from companion.store import CHECKSUMS, DamagedFileError, damaged_files

NB = course.NOTEBOOK_DIR / "01_definitions.ipynb"


def test_unknown_parameter_is_refused_with_the_valid_names(capsys):
    assert main(["run", str(NB), "-p", "SEDE", "3"]) == 2
    err = capsys.readouterr().err
    assert "has no parameter SEDE (did you mean SEED?)" in err and "SEED, DEVICE, SCALE" in err


def test_bad_values_and_repeated_parameters_stop_before_any_run(capsys, monkeypatch):
    monkeypatch.setattr(course, "execute", lambda *a, **k: pytest.fail("nothing may run"))
    assert main(["run", str(NB), "-p", "TARGET_EPOCHS", str(10**9)]) == 2
    assert "TARGET_EPOCHS must be at most 1,000" in capsys.readouterr().err
    assert main(["run", str(NB), "-p", "SEED", "1", "-p", "SEED", "2"]) == 2
    assert "SEED is given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", str(NB), "-p", "SEED", "0", "1", "-p", "TARGET_EPOCHS", "1"])
    assert "sweep takes one -p" in capsys.readouterr().err
    assert (
        main(["sweep", str(NB), "-p", "SEED", "0", "1", "-1"]) == 2
    )  # the bad last value stops the first run
    assert "SEED must be a non-negative integer, got -1" in capsys.readouterr().err


def test_list_parameters_from_the_command_line_are_literals(tmp_path):
    assert __import__("companion.__main__", fromlist=["_params"])._params([["SIZES", "[1, 3]"]]) == {
        "SIZES": [1, 3]
    }
    cfg = setup(SIZES="[1, 3]", RESULTS_DIR=str(tmp_path))
    assert cfg.SIZES == [1, 3]
    with pytest.raises(ParameterError, match=r"SIZES must be a non-empty list .*-p SIZES '\[1, 3\]'"):
        setup(SIZES="1,3", RESULTS_DIR=str(tmp_path))


def test_unwritable_results_dir_bounds_and_zero_stop_in_setup(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    t0 = time.perf_counter()
    with pytest.raises(
        ParameterError, match="^RESULTS_DIR must be a folder this process can create and write to"
    ):
        setup(SEED=0, RESULTS_DIR=str(blocker / "results"))
    with pytest.raises(ParameterError, match="EPOCHS must be at most 1,000"):
        setup(EPOCHS=10**9, RESULTS_DIR=str(tmp_path), defaults={"EPOCHS": (3, 5)})
    with pytest.raises(
        ParameterError,
        match=r"EPOCHS must be an integer in 1\.\.200 for this notebook; 0: the scale's default \(quick 3, full 5\), got 500",
    ):
        setup(EPOCHS=500, RESULTS_DIR=str(tmp_path), defaults={"EPOCHS": (3, 5)}, bounds={"EPOCHS": (1, 200)})
    with pytest.raises(
        ParameterError,
        match="TARGET_PER_CLASS must be a positive integer \\(this notebook has no scale default for 0\\)",
    ):
        setup(TARGET_PER_CLASS=0, RESULTS_DIR=str(tmp_path))
    assert setup(N_AUX=0, RESULTS_DIR=str(tmp_path), bounds={"N_AUX": (0, 3)}).N_AUX == 0
    assert time.perf_counter() - t0 < 5


def test_outside_a_checkout_data_and_results_go_to_a_user_folder(tmp_path, monkeypatch, capsys):
    for module in (files, store, catalog):  # each module that asks
        monkeypatch.setattr(module, "in_checkout", lambda: False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("COMPANION_DATA", raising=False)
    if os.name == "posix" and not __import__("sys").platform == "darwin":
        assert D.data_root() == tmp_path / "xdg" / "companion" / "data"
        assert resolve("results") == tmp_path / "xdg" / "companion" / "results"
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path / "mine"))
    assert D.data_root() == tmp_path / "mine"
    monkeypatch.setattr(catalog, "NOTEBOOK_DIR", tmp_path / "site-packages" / "notebooks")
    assert main(["run", "00"]) == 2
    err = capsys.readouterr().err
    assert "looked in" in err and "installed, not a checkout" in err and "COMPANION_NOTEBOOKS" in err
    assert course.notebooks([str(NB)]) == [NB.resolve()]  # a path always works


def test_atomic_write_removes_only_stale_temporaries_of_its_target(tmp_path):
    target = tmp_path / "x.pt"
    target.write_bytes(b"good")
    dead = 2**22 + 12345  # above the default pid_max: no such process
    names = {
        f".x.pt.{dead}-abcdefgh.part": False,  # its writer is gone
        ".x.pt.abcdefgh.part": False,  # old naming, untouched for an hour
        ".x.pt.ijklmnop.part": True,  # old naming, recent: maybe being written
        f".x.pt.{os.getpid()}-qrstuvwx.part": True,  # a live writer
        f".y.pt.{dead}-abcdefgh.part": True,  # another target
        f".x.pt.prev.{dead}-abcdefgh.part": True,  # another target (x.pt.prev)
        "x.pt.prev": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"t")
    old = time.time() - 3600
    os.utime(tmp_path / ".x.pt.abcdefgh.part", (old, old))
    D.atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    for name, kept in names.items():
        assert (tmp_path / name).exists() == kept, name


def test_same_size_damage_is_detected_listed_and_repaired(tmp_path, monkeypatch, capsys):
    mirror, root = tmp_path / "mirror", tmp_path / "root"
    (mirror / "usps").mkdir(parents=True)
    good = b"label 256 values\n" * 50
    (mirror / "usps" / "zip.info.txt").write_bytes(good)
    monkeypatch.setitem(CHECKSUMS, ("usps", "zip.info.txt"), (len(good), hashlib.sha256(good).hexdigest()))
    assert store.fetch(["usps"], root=root, mirror=mirror, download=False) == {"usps": "copied 1 files"}
    bad = bytearray(good)
    bad[10] ^= 0xFF  # same size, other bytes
    (root / "usps" / "zip.info.txt").write_bytes(bytes(bad))
    assert damaged_files("usps", root) == [root / "usps" / "zip.info.txt"]
    status = store.fetch(["usps"], root=root, mirror=mirror, download=False)
    assert status == {"usps": "copied 1 files (replaced 1 damaged)"}
    assert (root / "usps" / "zip.info.txt").read_bytes() == good and not list(root.rglob("*.part"))
    # a damaged mirror copy is refused and what is here is kept
    (mirror / "usps" / "zip.info.txt").write_bytes(bytes(bad))
    (root / "usps" / "zip.info.txt").unlink()
    status = store.fetch(["usps"], root=root, mirror=mirror, download=False)["usps"]
    assert status.startswith("failed: data file") and "is damaged" in status
    assert not (root / "usps" / "zip.info.txt").exists()


def test_damaged_data_file_load_error_names_file_and_repair(tmp_path, monkeypatch):
    import gzip

    import numpy as np

    raw = (
        tmp_path / "mnist" / "MNIST" / "raw"
    )  # torchvision layout: no checksum, the decoder finds the damage
    raw.mkdir(parents=True)
    for stem, arr in (
        ("t10k-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8)),
        ("t10k-labels-idx1-ubyte", np.zeros(4, np.uint8)),
    ):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
        (raw / f"{stem}.gz").write_bytes(gzip.compress(header + arr.tobytes()))
    images = raw / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-12])  # truncated: a raw EOFError before
    monkeypatch.delenv("COMPANION_DATA_MIRROR", raising=False)
    with pytest.raises(DamagedFileError) as info:
        D.load_dataset("mnist", root=tmp_path)
    msg = str(info.value)
    assert (
        str(images) in msg and "is damaged (EOFError" in msg and "python -m companion data fetch mnist" in msg
    )
    assert "\n" not in msg


TINY = {
    "cells": [
        {
            "cell_type": "code",
            "metadata": {"tags": ["parameters"]},
            "execution_count": None,
            "outputs": [],
            "source": 'SEED: int = 0  # seed\nDEVICE: str = "auto"  # device\nSCALE: str = "auto"  # scale\n'
            'DATA_DIR: str = ""  # data\nRESULTS_DIR: str = "results"  # results\n',
        },
        {
            "cell_type": "code",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": "import companion\nfrom companion.course.claims import Claims\nfrom companion.course.params import setup\n"
            "cfg = setup(SEED=SEED, DEVICE=DEVICE, SCALE=SCALE, DATA_DIR=DATA_DIR, RESULTS_DIR=RESULTS_DIR)\n"
            "claims = Claims('tiny', cfg)\nclaims.demonstrate('one is one', {'one': 1}, True)\n"
            "print('package at', companion.__file__)\nclaims.report()\n",
        },
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.mark.slow
def test_an_installed_copy_runs_a_notebook_by_path(tmp_path):
    """What a non-editable install leaves: the package alone in site-packages, no checkout around it. It runs a
    notebook given by path and keeps results in the per-user folder, not beside the package."""
    import json
    import shutil
    import subprocess
    import sys

    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "companion", site / "companion", ignore=shutil.ignore_patterns("__pycache__"))
    nb = tmp_path / "work" / "tiny.ipynb"
    nb.parent.mkdir()
    nb.write_text(json.dumps(TINY))
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "COMPANION_DATA": "",
    }
    env.pop("COMPANION_NOTEBOOKS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "companion", "run", str(nb), "--out", str(tmp_path / "out")],
        cwd=tmp_path / "work",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    executed = (tmp_path / "out" / "tiny.ipynb").read_text()
    assert f"package at {site / 'companion' / '__init__.py'}" in executed.replace("\\n", "\n")
    assert json.loads((tmp_path / "out" / "results" / "tiny" / "default" / "tiny.json").read_text())[
        "demonstrations"
    ]
    assert not (site / "results").exists() and not (site / "data").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "companion", "run", "00"],
        cwd=tmp_path / "work",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "installed, not a checkout" in proc.stderr


def test_the_runner_leaves_the_callers_environment_as_it_was(tmp_path, monkeypatch):
    import papermill as pm

    seen = {}

    def fake_execute(src, dst, **kw):  # records what the kernel would inherit, writes a minimal notebook
        seen["backend"] = os.environ.get("MPLBACKEND")
        Path(dst).write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')

    monkeypatch.setattr(pm, "execute_notebook", fake_execute)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    course.execute(tmp_path / "in.ipynb", tmp_path / "out.ipynb", {"SEED": 1})
    assert seen["backend"] == "module://matplotlib_inline.backend_inline", "kernels draw figures inline"
    assert os.environ["MPLBACKEND"] == "Agg", "the caller's own setting is back after the run"
    monkeypatch.delenv("MPLBACKEND")
    course.execute(tmp_path / "in.ipynb", tmp_path / "out.ipynb", {"SEED": 1})
    assert "MPLBACKEND" not in os.environ
