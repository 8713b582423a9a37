"""The runner behind the demos and benchmarks: logs, streamed lines, failures that name the command and log."""
import sys

import pytest

from slim.apps import commands


def test_run_keeps_the_whole_output_and_streams_the_chosen_lines(tmp_path, capsys):
    log = tmp_path / "out.log"
    script = "print('[TRAIN] a'); print('noise'); print('[TRAIN] b'); print('[EVAL] #Images: 3')"
    seconds = commands.run([sys.executable, "-c", script], str(log), every=2)
    assert seconds >= 0
    assert log.read_text().splitlines() == ["[TRAIN] a", "noise", "[TRAIN] b", "[EVAL] #Images: 3"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("$ ") and script in printed[0]  # the command, then the chosen lines:
    assert [line.strip() for line in printed[1:]] == ["[TRAIN] b", "[EVAL] #Images: 3"]  # every 2nd [TRAIN]


def test_failure_names_the_command_its_exit_code_and_log(tmp_path, capsys):
    log = tmp_path / "fail.log"
    script = "import sys; print('something broke here'); sys.exit(3)"
    with pytest.raises(commands.CommandFailed) as e:
        commands.run([sys.executable, "-c", script], str(log), echo=False)
    message = str(e.value)
    assert "exit 3" in message and str(log) in message and "something broke here" in message
    assert commands.main_guard(commands.run, [sys.executable, "-c", script], str(log), echo=False) == 3
    assert "exit 3" in capsys.readouterr().err


def test_last_checkpoint_picks_the_largest_iteration(tmp_path):
    for n in (5, 40, 100):
        (tmp_path / f"iter_{n}").mkdir()
    (tmp_path / "best_model").mkdir()
    assert commands.last_checkpoint(str(tmp_path)) == str(tmp_path / "iter_100" / "model.pdparams")
    with pytest.raises(RuntimeError, match="no checkpoint"):
        commands.last_checkpoint(str(tmp_path / "best_model"))


def test_jobs_run_side_by_side_on_a_share_of_the_cores(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # `make` exports 2: each of two jobs must get one core instead
    monkeypatch.setattr(commands.os, "cpu_count", lambda: 2)
    # each command waits for the other's file: they finish only if they run at the same time
    script = ("import os, sys, time; open(sys.argv[1], 'w').close(); t = time.time()\n"
              "while not os.path.exists(sys.argv[2]):\n"
              "    time.sleep(0.05); assert time.time() - t < 60\n"
              "print('threads', os.environ['OMP_NUM_THREADS'])")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    with commands.Jobs(2) as jobs:
        first = jobs.submit(commands.run, [sys.executable, "-c", script, a, b], str(tmp_path / "a.log"), echo=False)
        second = jobs.submit(commands.run, [sys.executable, "-c", script, b, a], str(tmp_path / "b.log"), echo=False)
        assert first.result() >= 0 and second.result() >= 0
    assert (tmp_path / "a.log").read_text().strip() == "threads 1" == (tmp_path / "b.log").read_text().strip()
    with commands.Jobs(1) as jobs:  # one at a time: the caller's threads, and the result at once
        done = jobs.submit(commands.run, [sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"],
                           str(tmp_path / "c.log"), echo=False)
    assert done.result() >= 0 and (tmp_path / "c.log").read_text().strip() == "2"
