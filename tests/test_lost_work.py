"""Nothing a learner writes is ever lost (issue 23): fit refuses to do nothing, a resume is the same run or a
clear error, notebook runs are atomic, output names stay inside --out, editions respect edits, parameters are
checked early, and the command line answers in one line."""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from companion.__main__ import main
from companion.batches import TensorBatches
from companion.course import editions, runs
from companion.course import runner as course
from companion.evaluation import evaluate
from companion.files import atomic_write, write_error
from companion.train import fit

REPO = Path(__file__).resolve().parents[1]

FAST = dict(device="cpu", progress=False)


def _data(n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return x, (x[:, 0] > 0).long()


# --- fit refuses to do nothing ---------------------------------------------------------------------------


@pytest.mark.parametrize("train", [[], "empty-batches"])
def test_fit_on_empty_data_is_an_error_not_zero_steps(train):
    """Before: 2 "epochs", 0 steps, train_loss 0 and no error."""
    if train == "empty-batches":
        train = TensorBatches(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 8)
    model = nn.Linear(2, 2)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"train is empty.*0 steps"):
        fit(model, train, epochs=2, **FAST)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fit_on_an_iterator_that_yields_nothing_is_an_error():
    with pytest.raises(ValueError, match="train yielded no batches in epoch 1"):
        fit(nn.Linear(2, 2), iter([]), epochs=2, **FAST)


def test_fit_names_an_empty_batch_instead_of_the_lower_lr_hint():
    x, y = _data(8)
    batches = [(x, y), (x[:0], y[:0])]
    with pytest.raises(ValueError, match=r"batch 1 of train is empty \(0 samples") as info:
        fit(nn.Linear(2, 2), batches, **FAST)
    assert "lower lr" not in str(info.value)


def test_fit_refuses_an_optimizer_built_on_another_models_parameters():
    """Before: weights unchanged, the same loss every epoch, no error."""
    x, y = _data()
    model, other = nn.Linear(2, 2), nn.Linear(2, 2)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"optimizer does not hold 2 of the model's 2 trainable .*'weight'"):
        fit(model, TensorBatches(x, y, 8), optimizer=opt, **FAST)
    assert torch.equal(model.weight, before)


def test_fit_accepts_an_optimizer_on_its_own_parameters_and_frozen_ones_left_out():
    x, y = _data()
    model = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    opt = torch.optim.SGD(model[1].parameters(), lr=0.1)
    history = fit(model, TensorBatches(x, y, 8), optimizer=opt, **FAST)
    assert history.last["step"] == 4


def test_evaluate_on_empty_data_is_an_error():
    """Before: `{}`, which a notebook then indexes far from the cause."""
    with pytest.raises(ValueError, match="batches is empty"):
        evaluate(nn.Linear(2, 2), [], device="cpu")
    x, y = _data(4)
    with pytest.raises(ValueError, match="batch 0 of batches is empty"):
        evaluate(nn.Linear(2, 2), [(x[:0], y[:0])], device="cpu")


# --- a resume is the same run or a clear error ---------------------------------------------------------


def test_a_resume_with_another_weight_decay_is_refused_naming_it(tmp_path):
    """Before: the run silently continued with the checkpoint's weight decay 0.0."""
    path = tmp_path / "ck.pt"
    x, y = _data()
    fit(nn.Linear(2, 2), TensorBatches(x, y, 8), epochs=2, max_steps=4, checkpoint=path, **FAST)
    kept = path.read_bytes()
    with pytest.raises(ValueError) as info:
        fit(nn.Linear(2, 2), TensorBatches(x, y, 8), epochs=2, weight_decay=0.5, checkpoint=path, **FAST)
    msg = str(info.value)
    assert str(path) in msg and "weight_decay=0.0" in msg and "weight_decay=0.5" in msg, msg
    assert path.read_bytes() == kept, "the checkpoint is left as it was"


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(optimizer="sgd"), "optimizer='AdamW'"),  # before: KeyError: 'momentum'
        (dict(clip_grad=1.0), "clip_grad=None"),
        (dict(scheduler="cosine"), "scheduler=None"),
    ],
)
def test_a_resume_with_another_optimizer_or_schedule_names_the_field(tmp_path, change, field):
    path = tmp_path / "ck.pt"
    x, y = _data()
    fit(nn.Linear(2, 2), TensorBatches(x, y, 8), epochs=2, max_steps=4, checkpoint=path, **FAST)
    with pytest.raises(ValueError, match=f"checkpoint {path}.*written with {field}".replace("[", r"\[")):
        fit(nn.Linear(2, 2), TensorBatches(x, y, 8), epochs=2, checkpoint=path, **FAST, **change)


def test_a_resume_with_another_architecture_names_the_checkpoint_and_parameter(tmp_path):
    """Before: torch's raw "size mismatch" without the checkpoint's path."""
    path = tmp_path / "ck.pt"
    x, y = _data()
    fit(nn.Linear(2, 2), TensorBatches(x, y, 8), epochs=2, max_steps=4, checkpoint=path, **FAST)
    wider = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=f"checkpoint {path} was written with") as info:
        fit(wider, TensorBatches(x, y, 8), epochs=2, checkpoint=path, **FAST)
    assert "parameter" in str(info.value)


def test_a_resume_with_the_same_settings_continues(tmp_path):
    path = tmp_path / "ck.pt"
    x, y = _data()
    kw = dict(weight_decay=0.1, clip_grad=1.0, optimizer="sgd", **FAST)
    torch.manual_seed(0)
    ref = nn.Linear(2, 2)
    fit(ref, TensorBatches(x, y, 8), epochs=2, **kw)
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    fit(model, TensorBatches(x, y, 8), epochs=2, max_steps=4, checkpoint=path, **kw)
    torch.manual_seed(0)
    resumed = nn.Linear(2, 2)
    fit(resumed, TensorBatches(x, y, 8), epochs=2, checkpoint=path, **kw)
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), resumed.parameters()))


# --- notebook runs are atomic ---------------------------------------------------------------------------

PREVIOUS = (
    b'{"cells": [], "metadata": {"previous": "a complete earlier run"}, "nbformat": 4, "nbformat_minor": 5}\n'
)


def _notebook(folder: Path, *cells: str, name: str = "tiny") -> Path:
    """A tiny notebook: a parameters cell (SEED, DATA_DIR, RESULTS_DIR), then `cells`."""
    import nbformat

    params = nbformat.v4.new_code_cell('SEED: int = 0\nDATA_DIR: str = ""\nRESULTS_DIR: str = "results"\n')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, *(nbformat.v4.new_code_cell(c) for c in cells)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def _error_line(stderr: str) -> str:
    """The runner's one line, and no traceback of the runner (the kernel process shares stderr and may log its
    own warnings, or the traceback of its sockets closing under it, there)."""
    assert "papermill" not in stderr and f"{os.sep}companion{os.sep}" not in stderr, stderr
    [line] = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    return line


def _failed_record(path: Path) -> dict:
    nb = json.loads(path.read_text())
    assert "This run stopped before its end" in "".join(nb["cells"][0]["source"])
    return nb["metadata"]["companion"]["failed"]


def test_a_run_that_fails_in_a_cell_leaves_the_previous_notebook_and_keeps_the_partial_run(tmp_path):
    nb = _notebook(tmp_path / "src", "print('first')", "raise ValueError('boom')", "print('never')")
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiny.ipynb").write_bytes(PREVIOUS)
    with pytest.raises(Exception, match="boom") as info:
        course.run([str(nb)], out=out)
    assert (out / "tiny.ipynb").read_bytes() == PREVIOUS, "the previous notebook is byte-identical"
    record = _failed_record(out / "tiny.failed.ipynb")
    ran = (record["code_cells_ran"], record["code_cells"])
    assert record["error"] == "ValueError: boom" and ran == (4, 5), (
        "parameters, injected, first, the failing one"
    )
    assert "tiny.failed.ipynb" in " ".join(info.value.__notes__)
    assert not list(out.glob(".*.part")), "no temporary is left behind"


@pytest.mark.parametrize("inplace", [False, True])
def test_a_full_disk_during_a_run_leaves_the_previous_notebook_byte_identical(tmp_path, capsys, inplace):
    """`ulimit -f 60` during `run 00 --out DIR` (and `--inplace`): before, the notebook was truncated to
    61,440 bytes of invalid JSON. The limit is set in this process (Python ignores SIGXFSZ, so a write past it
    raises "File too large") and inherited by the kernel, as a shell's `ulimit -f` would be."""
    nb = _notebook(tmp_path / "src", "print('x' * 200_000)")
    out = tmp_path / "out"
    out.mkdir()
    target = nb if inplace else out / "tiny.ipynb"
    if not inplace:
        target.write_bytes(PREVIOUS)
    before = target.read_bytes()
    limit = 60 * 1024
    args = ["run", str(nb), *(["--inplace"] if inplace else ["--out", str(out)])]
    saved = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, saved[1]))
    try:
        code = main(args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, saved)
    line = _error_line(capsys.readouterr().err)
    assert code == 1 and target.read_bytes() == before
    assert f"cannot write {target}" in line and "file-size limit" in line, line
    failed = target.with_name("tiny.failed.ipynb")
    assert f"kept in {failed}" in line
    assert failed.stat().st_size <= limit and "File too large" in _failed_record(failed)["error"]


def test_ctrl_c_during_a_run_leaves_the_previous_notebook_and_says_so_in_one_line(tmp_path):
    """Before: a half-run notebook with every cell marked "completed" replaced the previous one, and a 67-line
    traceback. The runner runs as a command in its own process, as a learner starts it, and gets SIGINT (what
    Ctrl-C sends) once the kernel is inside the long cell. (Sent to the test process itself, the signal was lost
    at times: a pytest worker's signal state depends on the tests that ran in it before.)"""
    marker = tmp_path / "started"
    nb = _notebook(
        tmp_path / "src",
        "print('first')",
        f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(120)",
        "print('never')",
    )
    out = tmp_path / "out"
    out.mkdir()
    # on a loaded machine a SIGINT can be lost before it reaches the runner (the notebook then runs to its end):
    # the test is about what the runner does once it arrives, so a lost one is tried again
    for _attempt in range(3):
        (out / "tiny.ipynb").write_bytes(PREVIOUS)
        marker.unlink(missing_ok=True)
        log = tmp_path / "stderr.txt"
        with log.open("w") as err:  # a file, not a pipe: nothing the runner writes can block it
            proc = subprocess.Popen(
                [sys.executable, "-m", "companion", "run", str(nb), "--out", str(out)],
                stderr=err,
                stdout=subprocess.DEVNULL,
            )
        deadline = time.time() + 180
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        while proc.poll() is None:  # again if a loaded machine let one pass before the runner was waiting
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        code = proc.returncode
        if code != 0:  # 0: the interrupt never arrived and the notebook ran to its end
            break
    line = _error_line(log.read_text())
    assert code == 130 and marker.exists()
    assert line.startswith("error: interrupted (Ctrl-C); tiny.ipynb was left as it was"), line
    assert (out / "tiny.ipynb").read_bytes() == PREVIOUS
    record = _failed_record(out / "tiny.failed.ipynb")
    assert record["error"].startswith("KeyboardInterrupt") and record["last_cell_ran"] == 4
    cells = json.loads((out / "tiny.failed.ipynb").read_text())["cells"]
    assert cells[-1]["metadata"]["papermill"]["status"] != "completed", (
        "a cell that never ran is not 'completed'"
    )


def test_an_inplace_run_keeps_the_previous_version_beside_it(tmp_path):
    nb = _notebook(tmp_path, "print('hello')")
    before = nb.read_bytes()
    runs.execute(nb, nb, keep_previous=True)
    assert nb.with_name("tiny.ipynb.prev").read_bytes() == before
    assert "hello" in nb.read_text() and json.loads(nb.read_text())["metadata"]["companion"]["source_hash"]


def test_inplace_refuses_a_notebook_with_uncommitted_edits_unless_forced(tmp_path, monkeypatch):
    nb = _notebook(tmp_path, "print('hello')")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", nb.name], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    assert not runs.uncommitted(nb)
    nb.write_text(nb.read_text().replace("hello", "my own edit"))
    edited = nb.read_bytes()
    ran = []
    monkeypatch.setattr(course, "execute", lambda *a, **k: ran.append(a) or 0.0)
    monkeypatch.setattr(course, "sync_runtimes", lambda files: [])
    with pytest.raises(ValueError, match="uncommitted edits .*pass --force"):
        course.run([str(nb)], inplace=True)
    assert nb.read_bytes() == edited and not ran
    assert main(["run", str(nb), "--inplace"]) == 2
    course.run([str(nb)], inplace=True, force=True)
    assert ran == [(nb.resolve(), nb.resolve())]


# --- output names are safe and stay inside --out -------------------------------------------------------


def test_a_path_in_a_parameter_cannot_write_outside_out(tmp_path):
    """Before: `-p DATA_DIR "x/../../victim"` wrote the executed notebook over `victim.ipynb` outside --out."""
    nb = _notebook(tmp_path / "src", "print(DATA_DIR)")
    out = tmp_path / "work" / "out"
    victim = tmp_path / "work" / "victim.ipynb"
    victim.parent.mkdir()
    victim.write_bytes(PREVIOUS)
    outside = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    course.run([str(nb)], out=out, params={"DATA_DIR": "x/../../victim"})
    assert {p: p.read_bytes() for p in outside} == outside, "every file outside --out is untouched"
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p not in outside]
    assert written and all(out in p.parents for p in written), written
    [executed] = out.glob("*.ipynb")
    assert executed.parent == out and "/" not in executed.name and ".." not in executed.name
    assert json.loads(executed.read_text())["metadata"]["papermill"]["output_path"] == str(executed)


@pytest.mark.parametrize(
    "params", [{"DATA_DIR": "a/b\nc"}, {"SIZES": list(range(1, 81))}, {"DATA_DIR": "../" * 50}]
)
def test_output_names_are_short_safe_slugs(params):
    name = runs.slug(params)
    assert len(name) <= 49 and re.fullmatch(r"[A-Za-z0-9._=-]+", name) and ".." not in name, name
    assert runs.slug(params) == name and runs.slug({**params, "SEED": 1}) != name


def test_slugs_keep_a_readable_part():
    assert runs.slug({}) == "default"
    assert runs.slug({"SEED": 1}).startswith("SEED=1-")


def test_out_in_the_course_notebook_folder_is_refused(tmp_path, monkeypatch):
    """Before: `run 00 --out notebooks -p RESULTS_DIR <a file>` replaced the committed notebook with a failed run."""
    monkeypatch.setattr(course, "execute", lambda *a, **k: pytest.fail("nothing may run"))
    for out in (course.NOTEBOOK_DIR, course.NOTEBOOK_DIR / "results" / ".."):
        with pytest.raises(ValueError, match="is the course's notebook folder"):
            course.run(["00"], out=out, params={"RESULTS_DIR": str(tmp_path / "file")})
    nb = _notebook(tmp_path)
    with pytest.raises(ValueError, match="over .*tiny.ipynb itself"):
        course.run([str(nb)], out=tmp_path)


# --- the lookup, the command line ----------------------------------------------------------------------


def test_an_exact_stem_or_file_name_wins_over_a_prefix(tmp_path, monkeypatch):
    """Before: `run 00_start_here.ipynb` answered "matches 0 files", and beside a -Copy1 the exact name could
    not be chosen."""
    for name in ("00_start_here", "00_start_here-Copy1", "01_definitions", "01_definitions.failed"):
        _notebook(tmp_path, name=name)
    monkeypatch.setenv("COMPANION_NOTEBOOKS", str(tmp_path))
    monkeypatch.chdir(REPO)
    assert course.notebooks(["00_start_here"]) == [tmp_path / "00_start_here.ipynb"]
    assert course.notebooks(["00_start_here.ipynb"]) == [tmp_path / "00_start_here.ipynb"]
    assert course.notebooks(["00_start_here-Copy1"]) == [tmp_path / "00_start_here-Copy1.ipynb"]
    with pytest.raises(ValueError, match="matches 2 files"):
        course.notebooks(["00"])
    assert course.notebooks(["01"]) == [tmp_path / "01_definitions.ipynb"], (
        "a stopped run's copy is not a match"
    )


@pytest.mark.parametrize(
    "error, code, text",
    [
        (OSError(errno.ENOSPC, "No space left on device"), 1, "the disk is full"),
        (OSError(errno.EACCES, "Permission denied"), 1, "no permission to write there"),
        (KeyboardInterrupt(), 130, "interrupted (Ctrl-C)"),
    ],
)
def test_the_cli_turns_write_errors_and_ctrl_c_into_one_line(monkeypatch, capsys, error, code, text):
    def stopped(*a, **k):
        if isinstance(error, OSError):
            raise write_error("out/00_start_here.ipynb", error)
        raise error

    monkeypatch.setattr(course, "run", stopped)
    assert main(["run", "00"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err, err
    if isinstance(error, OSError):
        assert "cannot write out/00_start_here.ipynb" in err


def test_atomic_write_names_the_path_and_keeps_the_previous_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_bytes(PREVIOUS)

    def full(f):
        f.write(b"{")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=f"cannot write {target}: the disk is full"):
        atomic_write(target, full)
    assert target.read_bytes() == PREVIOUS and [p.name for p in tmp_path.iterdir()] == ["results.json"]


# --- editions respect edits ----------------------------------------------------------------------------


def test_a_second_student_edition_does_not_destroy_an_edited_notebook(tmp_path):
    """Before: the student's added cell was gone and the exit code was 0."""
    out = tmp_path / "student"
    [path] = editions.write_student(out, ["00"])
    editions.write_student(out, ["00"])  # unedited: written again
    nb = json.loads(path.read_text())
    nb["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                        "source": "my_answer = 42"})  # fmt: skip
    path.write_text(json.dumps(nb))
    edited = path.read_bytes()
    with pytest.raises(ValueError, match=f"{path} has your edits; pass --force or choose another folder"):
        editions.write_student(out, ["00"])
    assert path.read_bytes() == edited
    assert main(["student", str(out), "00"]) == 2 and path.read_bytes() == edited
    assert main(["student", str(out), "00", "--instructor"]) == 2 and path.read_bytes() == edited
    editions.write_student(out, ["00"], force=True)
    assert "my_answer" not in path.read_text()


def test_a_checkpoint_on_a_full_disk_names_its_path_and_keeps_the_previous_one(tmp_path):
    """Before: `RuntimeError: [enforce fail at inline_container.cc:672]`, without the path."""
    from companion.checkpoints import load_checkpoint, save_checkpoint

    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(10)}})
    before = path.read_bytes()
    limit = 60 * 1024
    saved = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, saved[1]))
    try:
        with pytest.raises(OSError, match=f"cannot write {path}: .*file-size limit"):
            save_checkpoint(path, {"model": {"w": torch.zeros(100_000)}})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, saved)
    assert path.read_bytes() == before and torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(10))


def test_a_checkpoint_written_before_these_fields_still_resumes(tmp_path):
    from companion.checkpoints import load_checkpoint, save_checkpoint

    path = tmp_path / "ck.pt"
    x, y = _data()
    fit(nn.Linear(2, 2), TensorBatches(x, y, 8), epochs=2, max_steps=4, checkpoint=path, **FAST)
    state = load_checkpoint(path)
    old = ("seed", "lr", "epochs", "precision", "steps_per_epoch")
    state["fingerprint"] = {k: v for k, v in state["fingerprint"].items() if k in old}
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match=f"checkpoint {path} does not fit this run's model.*size mismatch"):
        fit(nn.Linear(2, 3), TensorBatches(x, y, 8), epochs=2, checkpoint=path, **FAST)
    assert fit(nn.Linear(2, 2), TensorBatches(x, y, 8), epochs=2, checkpoint=path, **FAST).last["step"] == 8


def test_the_runner_talks_to_its_kernel_without_a_tcp_warning_and_cleans_up(tmp_path, capfd):
    """The kernel runs over Unix sockets in a private folder (POSIX), removed with the kernel."""
    import glob
    import os
    import tempfile

    import nbformat

    from companion.course.runs import execute

    if os.name != "posix":
        pytest.skip("Unix sockets: POSIX only")
    meta = {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}
    src = tmp_path / "tiny.ipynb"
    nbformat.write(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")], metadata=meta), src
    )
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "companion-kernel-*")))
    execute(src, tmp_path / "out" / "tiny.ipynb")
    after = set(glob.glob(os.path.join(tempfile.gettempdir(), "companion-kernel-*")))
    assert after <= before
    out = nbformat.read(tmp_path / "out" / "tiny.ipynb", 4)
    assert out.cells[0].outputs[0]["text"] == "42\n"
    assert "without encryption" not in capfd.readouterr().err
