"""The command line as a user meets it in a terminal and in pipes: a progress bar that fits the
terminal and redraws in place (a real pseudo-terminal of 80 columns), Ctrl-C typed into that
terminal at start-up and mid-run, readers that go away (``| head``), usage errors (exit 2), the
global ``--log-level`` on either side of the command, help that shows one spelling per flag."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import run_cli
from fastwds.cores import available_cores
from fastwds.synthetic import generate

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-data")
    generate(root, rows=3000, subsets=2, files_per_subset=2, row_group_rows=50, seed=3)
    return root


class Terminal:
    """A child process whose stdin/stdout/stderr and controlling terminal are a pseudo-terminal of
    the given size, as in a terminal emulator: typing Ctrl-C there signals its foreground group."""

    def __init__(self, args: list[str], columns: int = 80, cwd: Path | None = None) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        self.process = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.output = b""

    def read(self, timeout: float = 0.1) -> None:
        while select.select([self.master], [], [], timeout)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the child closed the terminal
                return
            if not chunk:
                return
            self.output += chunk
            timeout = 0

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.read()
                if re.search(pattern, self.text()):
                    return
                raise AssertionError(f"no {pattern!r} in the terminal:\n{self.text()[-3000:]}")
            self.read()

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def finish(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self.read()
        self.read()
        if self.process.poll() is None:
            self.process.kill()
            raise AssertionError(f"still running after {timeout} s:\n{self.text()[-3000:]}")
        os.close(self.master)
        return self.process.returncode


def fastwds(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastwds", *args]


def screen_lines(raw: str) -> list[str]:
    """What each redraw put on one terminal line: text between carriage returns and newlines,
    escape sequences removed."""
    return [ANSI.sub("", piece) for piece in re.split(r"[\r\n]", raw) if ANSI.sub("", piece).strip()]


def test_progress_bar_fits_80_columns_and_redraws_in_place(dataset, tmp_path):
    terminal = Terminal(fastwds("convert", "parquet", str(dataset), str(tmp_path / "out"), "--num-workers", "1",
                                "--max-samples-per-shard", "200"))
    assert terminal.finish() == 0
    text = terminal.text()
    bars = [line for line in screen_lines(text) if re.match(r" *\d+%\|", line)]
    assert len(bars) >= 3, text  # redrawn while it ran
    assert all(len(line) <= 80 for line in bars), [line for line in bars if len(line) > 80]
    # Redraws go over the same line: the only newline in the bar's output is the last one.
    bar_lines_ended = [line for line in text.split("\n") if re.search(r"\d+%\|", ANSI.sub("", line))]
    assert len(bar_lines_ended) == 1, bar_lines_ended
    last = bars[-1]
    # A bar of 10+ cells, elapsed<ETA, then tasks, rows/s, bytes/s and skipped rows.
    assert re.match(r"100%\|█{10,}\| \d\d:\d\d<\d\d:\d\d, 16/16 tasks, [\d.]+k? rows/s, [\d.]+[kMG]?B/s, "
                    r"\d+ skipped$", last), last
    assert "fastwds convert: done" in text and "Traceback" not in text


def test_log_lines_while_the_bar_is_up_get_lines_of_their_own(dataset, tmp_path):
    """A message logged while the bar is drawn (here the plan and the worker count, at DEBUG) clears the bar,
    takes a line and the bar is drawn again below it: it never lands after the bar's text."""
    terminal = Terminal(fastwds("--log-level", "DEBUG", "convert", "parquet", str(dataset), str(tmp_path / "out"),
                                "--num-workers", "2", "--max-samples-per-shard", "200"))
    assert terminal.finish() == 0
    lines = screen_lines(terminal.text())
    # The first line logged after the bar appeared ("plan: ...") used to follow the bar's text.
    logged = [line for line in lines if "DEBUG fastwds: plan:" in line or "worker processes" in line]
    assert len(logged) == 2, lines
    for line in logged:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d [\d:,]+ DEBUG fastwds: .*", line.strip()), logged
    assert re.match(r" *\d+%\|", lines[lines.index(logged[-1]) + 1]), "the bar is not drawn again below it"


def test_progress_is_plain_lines_when_not_a_terminal(dataset, tmp_path):
    result = run_cli("convert", "parquet", str(dataset), str(tmp_path / "out"), "--num-workers", "1")
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("fastwds: ")]
    assert lines and "3,000/3,000 rows (100%)" in lines[-1] and "ETA" in lines[-1]


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.4])
def test_ctrl_c_during_start_up_prints_no_traceback(dataset, tmp_path, delay):
    terminal = Terminal(fastwds("convert", "parquet", str(dataset), str(tmp_path / "out")))
    time.sleep(delay)
    terminal.type(b"\x03")
    code = terminal.finish()
    text = terminal.text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    # Before Python installs its handler the kernel's default ends the process (-SIGINT); after, 130.
    assert code in (130, -signal.SIGINT), (code, text)
    assert not list((tmp_path / "out").glob("*.tar")) if (tmp_path / "out").exists() else True


def test_ctrl_c_mid_run_says_how_far_and_how_to_resume(dataset, tmp_path):
    out = tmp_path / "out"
    args = ["convert", "parquet", str(dataset), str(out), "--num-workers", "2", "--max-samples-per-shard", "100"]
    terminal = Terminal(fastwds(*args))
    terminal.wait_for(r"\| \S+, [1-9]\d*/\d+ tasks")  # at least one task finished
    terminal.type(b"\x03")
    assert terminal.finish() == 130
    text = terminal.text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    message = re.search(r"fastwds: interrupted: (\d+) of (\d+) tasks had finished.*?rows read", text, re.S)
    assert message, text
    assert text.count("fastwds: interrupted") == 1, text
    finished = int(message.group(1))
    assert finished >= 1 and len(list(out.glob("*.tar"))) >= finished
    command = re.search(r"to continue:\s*\n\s*(fastwds .*)", text).group(1).strip()
    words = shlex.split(command)
    assert words[0] == "fastwds" and words[1:] == [*args, "--resume"], command
    resumed = run_cli(*words[1:], "--no-progress")
    assert "(resumed)" in resumed.stdout and "converted in this run" in resumed.stdout
    clean = tmp_path / "clean"
    run_cli(*args[:2], str(dataset), str(clean), *args[4:], "--no-progress")
    names = sorted(p.name for p in clean.glob("*.tar"))
    assert sorted(p.name for p in out.glob("*.tar")) == names
    assert all((out / name).read_bytes() == (clean / name).read_bytes() for name in names)
    assert run_cli("verify", str(out)).returncode == 0


@pytest.mark.parametrize("gap", [0.0, 0.05, 0.3])
def test_a_second_ctrl_c_still_says_how_to_resume(dataset, tmp_path, gap):
    """Impatient users press Ctrl-C twice: wherever the second lands (while the first is being
    handled, or as the process exits), the resume command is said and --resume completes the run."""
    out = tmp_path / "out"
    args = ["convert", "parquet", str(dataset), str(out), "--num-workers", "2", "--max-samples-per-shard", "100"]
    terminal = Terminal(fastwds(*args))
    terminal.wait_for(r"\| \S+, [1-9]\d*/\d+ tasks")
    terminal.type(b"\x03")
    time.sleep(gap)
    terminal.type(b"\x03")
    code = terminal.finish()
    text = terminal.text()
    # A Ctrl-C that lands after Python restored the default handler at exit ends it by SIGINT: the
    # shell shows 130 all the same.
    assert code in (130, -signal.SIGINT), (code, text)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    command = re.search(r"to continue:\s*\n\s*(fastwds .*)", text).group(1).strip()
    assert shlex.split(command)[1:] == [*args, "--resume"], command
    run_cli(*args, "--resume", "--no-progress")
    assert run_cli("verify", str(out)).returncode == 0


@pytest.mark.parametrize("target", ["driver", "process group"])
def test_sigterm_stops_like_ctrl_c_and_the_run_resumes(dataset, tmp_path, target):
    """A scheduler's stop: Kubernetes and `docker stop` send SIGTERM to the main process, Slurm's
    scancel to every process of the job. Either way the run stops as with Ctrl-C: exit 143, how
    far it got and the resume command, and --resume completes it with the clean run's bytes."""
    out = tmp_path / "out"
    args = ["convert", "parquet", str(dataset), str(out), "--num-workers", "2", "--max-samples-per-shard", "100",
            "--no-progress"]
    with subprocess.Popen(fastwds(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL, start_new_session=True) as child:
        deadline = time.monotonic() + 120
        while not list((out / ".fastwds" / "tasks").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.poll() is None, "the run ended before it could be stopped"
        if target == "driver":
            os.kill(child.pid, signal.SIGTERM)
        else:
            os.killpg(child.pid, signal.SIGTERM)
        _, stderr = child.communicate(timeout=60)
    assert child.returncode == 143, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert re.search(r"fastwds: interrupted: \d+ of \d+ tasks had finished", stderr), stderr
    command = re.search(r"to continue:\s*\n\s*(fastwds .*)", stderr).group(1).strip()
    assert shlex.split(command)[1:] == [*args, "--resume"]
    assert not (out / "manifest.json").exists()
    run_cli(*args, "--resume")
    clean = tmp_path / "clean"
    run_cli(*args[:3], str(clean), *args[4:])
    names = sorted(p.name for p in clean.glob("*.tar"))
    assert sorted(p.name for p in out.glob("*.tar")) == names
    assert all((out / name).read_bytes() == (clean / name).read_bytes() for name in names)


@pytest.mark.parametrize("flags, per_core", [((), False), (("--verify-images", "full"), True),
                                              (("--reencode", "jpeg"), True)])
def test_default_worker_count_is_one_per_two_cores_or_one_per_core_when_decoding(dataset, tmp_path, flags, per_core):
    """Decoding runs Pillow on threads that need the GIL between images: one process per core."""
    cores = available_cores()
    default = cores if per_core else max(1, cores // 2)
    help_text = run_cli("convert", "parquet", "--help").stdout
    assert f"one per two cores, here {max(1, cores // 2)}; one per core" in " ".join(help_text.split())
    result = run_cli("convert", "parquet", str(dataset), str(tmp_path / "out"), "--max-samples-per-shard", "500",
                     "--limit", "1000", *flags, "--no-progress", "--log-level", "DEBUG")
    tasks = int(re.search(r"plan: (\d+) task", result.stderr).group(1))
    assert tasks >= 2, result.stderr
    workers = min(default, tasks)
    expected = f"{tasks} task(s) on {workers} worker processes" if workers > 1 else \
        f"{tasks} task(s), one at a time in this process"
    assert expected in result.stderr, result.stderr


def test_default_worker_count_follows_the_cores_the_process_may_use(dataset, tmp_path):
    """Under taskset (as in a container's cpuset) the defaults count the cores allowed, not the
    host's: one core means one worker even when decoding, whatever the machine has. (CPU quotas
    of cgroups are read by the same function, loky's cpu_count.)"""
    one_core = {min(os.sched_getaffinity(0))}

    def pinned(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fastwds", *args], capture_output=True, text=True,
                              preexec_fn=lambda: os.sched_setaffinity(0, one_core))

    assert "one per two cores, here 1; one per core with --verify-images full or --reencode, here 1)" in \
        " ".join(pinned("convert", "parquet", "--help").stdout.split())
    result = pinned("convert", "parquet", str(dataset), str(tmp_path / "out"), "--max-samples-per-shard", "500",
                    "--limit", "1000", "--verify-images", "full", "--no-progress", "--log-level", "DEBUG")
    assert result.returncode == 0, result.stderr
    assert re.search(r"\d+ task\(s\), one at a time in this process", result.stderr), result.stderr


@pytest.fixture(scope="module")
def shards(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli-shards") / "out"
    run_cli("convert", "parquet", str(dataset), str(out), "--max-samples-per-shard", "100", "--no-progress")
    return out


@pytest.mark.parametrize("command", [["inspect", "-n", "3000"], ["inspect", "--json", "-n", "3000"]])
def test_a_reader_that_goes_away_ends_quietly_like_head(shards, command):
    """`fastwds inspect ... | head -1` in a shell with pipefail: exit 141 (SIGPIPE's), no message."""
    script = f"set -o pipefail; {shlex.join(fastwds(command[0], str(shards), *command[1:]))} | head -1"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert result.stdout.strip(), result.stderr
    assert result.returncode == 141, (result.returncode, result.stderr)
    assert "Broken pipe" not in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("command", [["verify"], ["verify", "--json"], ["inspect"], ["convert", "parquet"]])
def test_output_into_a_closed_pipe_ends_quietly(shards, dataset, tmp_path, command):
    """A reader gone before the first write (`| head -0`): every write fails with EPIPE."""
    args = [*command, str(dataset if command[0] == "convert" else shards)]
    if command[0] == "convert":
        args += [str(tmp_path / "out"), "--no-progress", "--limit", "100"]
    read_end, write_end = os.pipe()
    os.close(read_end)
    result = subprocess.run(fastwds(*args), stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    assert result.returncode == 141, (result.returncode, result.stderr)
    assert result.stderr == "", result.stderr


@pytest.mark.parametrize("args, message", [
    (["convert", "parquet"], "INPUT is required"),
    (["convert", "parquet", "IN"], "OUTPUT_DIR is required"),
    (["convert", "sft", "IN.jsonl"], "OUTPUT_DIR is required"),
    (["convert", "npz", "IN", "--num-workers", "1", "OUT", "EXTRA"], "unrecognized arguments: EXTRA"),
    (["convert", "parquet", "IN", "OUT", "--num-workers", "0"], "--num-workers: must be at least 1, not 0"),
    (["convert", "parquet", "IN", "OUT", "--max-samples-per-shard", "-3"], "--max-samples-per-shard"),
    (["convert", "parquet", "IN", "OUT", "--resume", "--overwrite"], "not allowed with argument --resume"),
    (["convert", "parquet", "IN", "OUT", "--max-shard-size", "lots"], "--max-shard-size"),
    (["convert", "parquet", "IN", "OUT", "--max-shard-size", "0"], "must be more than 0 bytes, not '0'"),
    (["convert", "sft", "IN", "OUT", "--max-media-size", "0KB"], "must be more than 0 bytes"),
    (["convert", "sft", "IN", "OUT", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["convert", "video", "IN", "OUT"], "invalid choice: 'video'"),
    (["inspect", "x.tar", "-n", "0"], "-n"),
    (["verify", "x.tar", "--source-root", "src"], "--source-root"),
    ([], "choose a COMMAND: convert, bench, inspect, verify"),
    (["convert"], "choose a SOURCE: parquet, sft, npz"),
    (["bench"], "choose a BENCHMARK: write, convert"),
    # An unknown option is named, not hidden behind the missing subcommand.
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["convert", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_usage_errors_exit_2_with_the_usage(args, message):
    result = run_cli(*args, check=False)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "usage: fastwds" in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("source", ["parquet", "sft"])
def test_options_may_come_between_the_input_and_the_output(tmp_path, source):
    """``convert parquet IN --overwrite OUT`` said "unrecognized arguments: OUT": argparse fills
    the positionals from the first run of words only."""
    examples = Path(__file__).parent.parent / "examples"
    data = str(examples / "llava") if source == "parquet" else str(examples / "sft" / "train.jsonl")
    out = tmp_path / "out"
    result = run_cli("convert", source, data, "--no-progress", "--max-samples-per-shard", "7", str(out), "--json")
    assert json.loads(result.stdout)["samples"] > 0 and (out / "manifest.json").exists()
    assert all(shard["samples"] <= 7 for shard in json.loads((out / "manifest.json").read_text())["shards"])


def test_data_errors_exit_1_with_one_line(tmp_path):
    result = run_cli("convert", "parquet", str(tmp_path / "missing"), str(tmp_path / "out"), check=False)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"fastwds: error: {tmp_path / 'missing'}: no such file or folder"), line


@pytest.mark.parametrize("source", ["parquet", "sft"])
def test_an_input_without_rows_is_no_success(tmp_path, source):
    """0 samples is never a success: an input with no rows at all fails before writing anything."""
    if source == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        (tmp_path / "in").mkdir()
        pq.write_table(pa.table({"id": pa.array([], pa.string()), "conversations": pa.array([], pa.string())}),
                       tmp_path / "in" / "empty.parquet")
        data = tmp_path / "in"
    else:
        data = tmp_path / "empty.jsonl"
        data.write_text("")
    result = run_cli("convert", source, str(data), str(tmp_path / "out"), "--no-progress", check=False)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("fastwds: error: ") and "the input has no rows (1 file(s), 0 rows)" in line, line
    empty_file = "empty.parquet" if source == "parquet" else "empty.jsonl"
    assert line.startswith(f"fastwds: error: {tmp_path}/") and f"/{empty_file}: the input" in line, line  # the file
    assert not (tmp_path / "out").exists()


def test_a_run_removes_the_temporary_files_a_killed_run_left(dataset, tmp_path):
    """A run killed while writing a dataset file or a task record leaves it under a temporary name
    (``NAME.PID-THREAD.partial``); the next run on the folder (it holds the run lock) removes them,
    and nothing else."""
    out = tmp_path / "out"
    args = ["convert", "parquet", str(dataset), str(out), "--no-progress", "--limit", "200"]
    run_cli(*args)
    left = [out / "index.wids.json.4242-139914513623936.partial", out / ".fastwds" / "tasks" / "x.json.4242-1.partial"]
    for path in left:
        path.write_text("half")
    (out / "notes.partial").write_text("the user's")
    run_cli(*args, "--resume")
    assert not [path for path in left if path.exists()]
    assert (out / "notes.partial").read_text() == "the user's"


@pytest.mark.parametrize("where", ["before", "after"])
def test_log_level_on_either_side_of_the_command(dataset, tmp_path, where):
    args = ["convert", "parquet", str(dataset), str(tmp_path / "out"), "--no-progress", "--limit", "50"]
    args = ["--log-level", "DEBUG", *args] if where == "before" else [*args, "--log-level", "DEBUG"]
    debug = run_cli(*args).stderr
    assert re.search(r" DEBUG fastwds[.\w]*: plan: \d+ task", debug), debug
    assert re.search(r" DEBUG fastwds: task \S+: published \S+-\d{6}\.tar \(\d+ samples, ", debug), debug
    assert "asyncio" not in debug  # other libraries' debug messages stay out
    quiet = run_cli("convert", "parquet", str(dataset), str(tmp_path / "quiet"), "--no-progress", "--limit", "50",
                    "--log-level", "WARNING").stderr
    assert " DEBUG " not in quiet and " INFO " not in quiet


@pytest.mark.parametrize("source", ["parquet", "sft", "npz"])
def test_help_shows_one_spelling_per_flag(source):
    text = run_cli("convert", source, "--help").stdout
    assert text.startswith(f"usage: fastwds convert {source} ")
    flags = re.findall(r"(?<![\w-])--[a-z][\w-]*", text)
    assert flags and not [flag for flag in flags if "_" in flag], [flag for flag in flags if "_" in flag]
    assert "--log-level" in text and "--engine" in text


def test_sft_accepts_a_folder_of_json_files(tmp_path):
    examples = Path(__file__).parent.parent / "examples" / "sft"
    folder = run_cli("convert", "sft", str(examples), str(tmp_path / "folder"), "--no-progress", "--json").stdout
    file = run_cli("convert", "sft", str(examples / "train.jsonl"), str(tmp_path / "file"), "--no-progress",
                   "--json").stdout
    assert json.loads(folder)["samples"] == json.loads(file)["samples"] > 0
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("convert", "sft", str(empty), str(tmp_path / "o"), check=False)
    assert result.returncode == 1 and "no .json or .jsonl file" in result.stderr


def test_every_option_of_every_command_has_help():
    import argparse

    from fastwds.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not action.help:
                missing.append((" ".join(path), action.option_strings or action.dest))

    walk(build_parser(), ["fastwds"])
    assert not missing, missing


def test_the_command_starts_no_openblas_threads():
    """The CLI does no linear algebra: numpy imported by it starts no OpenBLAS thread pool (a
    thread per core, spinning after import, in every worker process too); a user's own setting
    is kept."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    count = [sys.executable, "-c", "import fastwds.cli, numpy, os; print(len(os.listdir('/proc/self/task')), "
                                   "os.environ['OPENBLAS_NUM_THREADS'])"]
    assert subprocess.run(count, env=env, capture_output=True, text=True, check=True).stdout.split() == ["1", "1"]
    kept = subprocess.run(count, env={**env, "OPENBLAS_NUM_THREADS": "2"}, capture_output=True, text=True, check=True)
    assert kept.stdout.split()[1] == "2"


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["inspect", "{shard}", "-n", "1"], ["verify", "{shard}"]])
def test_commands_that_read_shards_start_without_the_conversion_stack(tmp_path, args):
    """``--help``, ``--version``, ``inspect`` and ``verify`` do not import polars or pyarrow (most
    of the ~0.8 s every command took to start): only the command asked for is set up."""
    import fastwds

    shard = tmp_path / "a-000000.tar"
    with fastwds.ShardWriter(str(tmp_path / "a-%06d.tar")) as writer:
        writer.write({"__key__": "k0", "json": {"id": "k0"}})
    argv = [arg.format(shard=shard) for arg in args]
    code = ("import contextlib, io, sys\nfrom fastwds.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        code = main({argv!r})\n    except SystemExit as exit:\n        code = exit.code\n"
            "print(code, sorted(name for name in ('polars', 'pyarrow') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "0 []", (result.stdout, result.stderr)


def test_the_help_of_a_command_names_only_options_it_has():
    """``convert npz --help`` told npz users about --verify-images and --reencode, which npz
    does not have. (``bench`` describes its modes by convert's flags on purpose.)"""
    import argparse
    import re as regex

    from fastwds.cli import build_parser

    wrong = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        own = {option for action in parser._actions for option in action.option_strings}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif action.help and action.help is not argparse.SUPPRESS:
                for option in regex.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", action.help):
                    if option not in own:
                        wrong.append((" ".join(path), action.option_strings, option))

    walk(build_parser(), ["fastwds"])
    wrong = [entry for entry in wrong if not entry[0].startswith("fastwds bench")]
    assert not wrong, wrong
