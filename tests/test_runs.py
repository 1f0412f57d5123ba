"""The run record: unique directories, config first, appended metrics, merged summary, plots."""

import json
import pathlib
import threading

import pytest

from jaxstack import runs
from jaxstack.runs import RunRecord, read_metrics
from jaxstack.train.optimizers import OptimizerConfig


@pytest.fixture
def frozen_clock(monkeypatch):
    """Every run starts in the same second."""
    monkeypatch.setattr(runs, "_timestamp", lambda: "20250101-120000")


def test_same_second_runs_get_distinct_directories(tmp_path, frozen_clock):
    first = RunRecord.create(tmp_path, "demo", {"seed": 0})
    second = RunRecord.create(tmp_path, "demo", {"seed": 1})
    assert first.dir == tmp_path / "demo" / "20250101-120000"
    assert second.dir == tmp_path / "demo" / "20250101-120000-1"
    assert first.read_config() == {"seed": 0} and second.read_config() == {"seed": 1}


def test_concurrent_runs_never_share_a_directory(tmp_path, frozen_clock):
    made, barrier = [], threading.Barrier(8)

    def start(seed):
        barrier.wait()
        made.append(RunRecord.create(tmp_path, "study", {"seed": seed}).dir)

    threads = [threading.Thread(target=start, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == 8
    assert sorted(json.loads((d / "config.json").read_text())["seed"] for d in made) == list(range(8))


def test_config_is_written_first_from_a_dataclass(tmp_path):
    record = RunRecord.create(tmp_path, "opt", OptimizerConfig(learning_rate=1e-3))
    files = [p.name for p in record.dir.iterdir()]
    assert files == ["config.json"]  # before any other file, and no temporary left behind
    assert record.read_config()["learning_rate"] == 1e-3


def test_fixed_run_name_is_reused(tmp_path):
    record = RunRecord.create(tmp_path, "demo", {"a": 1}, stamp="smoke")
    record.log_metrics(1, loss=2.0)
    again = RunRecord.create(tmp_path, "demo", {"a": 2}, stamp="smoke")
    assert again.dir == record.dir == tmp_path / "demo" / "smoke"
    assert again.read_config() == {"a": 2} and again.read_metrics() == [{"step": 1, "loss": 2.0}]


@pytest.mark.parametrize("name, stamp, field", [("a/b", None, "run record name"), ("demo", "../x", "run_name"),
                                                ("", None, "run record name")])
def test_bad_names_are_named(tmp_path, name, stamp, field):
    with pytest.raises(ValueError, match=field):
        RunRecord.create(tmp_path, name, {}, stamp=stamp)


def test_metrics_append_one_object_per_line(tmp_path):
    record = RunRecord.open(tmp_path / "run", {"x": 1})
    record.log_metrics(1, loss=3.0, **{"eval_loss/web": 2.5})
    record.log_metrics(turn=0, alive=4)  # tables without a step
    lines = (record.dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 1, "loss": 3.0, "eval_loss/web": 2.5},
                                                    {"turn": 0, "alive": 4}]


def test_torn_metrics_line_is_skipped_and_repaired(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "lo')  # a crash mid-append
    assert read_metrics(path) == read_metrics(tmp_path) == [{"step": 1, "loss": 3.0}]
    record = RunRecord.open(tmp_path)
    record.log_metrics(2, loss=2.0)
    assert path.read_text() == '{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.0}\n'
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_metrics(path)


def test_unterminated_complete_line_is_kept(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}')
    record = RunRecord.open(tmp_path)
    record.log_metrics(2)
    assert record.read_metrics() == [{"step": 1}, {"step": 2}]


def test_truncate_metrics_for_resume(tmp_path):
    record = RunRecord.open(tmp_path)
    for step in (1, 2, 3, 4):
        record.log_metrics(step, loss=float(step))
    record.truncate_metrics(2)
    assert [m["step"] for m in record.read_metrics()] == [1, 2]
    record.truncate_metrics(0)
    assert record.read_metrics() == []


def test_summary_merges_writers(tmp_path):
    record = RunRecord.open(tmp_path)
    assert record.read_summary() == {}
    record.write_summary({"steps": 4, "final": {"loss": 2.0}})  # the trainer
    merged = RunRecord.open(tmp_path).write_summary({"samples": ["a"], "final": {"loss": 1.5}})  # the experiment
    assert merged == {"steps": 4, "final": {"loss": 1.5}, "samples": ["a"]}
    assert json.loads((tmp_path / "summary.json").read_text()) == merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_save_plot_writes_png_and_closes(tmp_path):
    plt = runs.pyplot()
    import matplotlib

    assert matplotlib.get_backend().lower() == "agg"
    record = RunRecord.open(tmp_path)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = record.save_plot(fig, "curve")
    assert path == tmp_path / "curve.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)


def test_non_writer_process_writes_nothing(tmp_path):
    record = runs.RunRecord(tmp_path, writer=False)
    record.write_config({"a": 1})
    record.log_metrics(1, loss=1.0)
    record.write_summary({"a": 1})
    record.write_jsonl("rows.jsonl", [{"a": 1}])
    assert list(tmp_path.iterdir()) == []


def test_write_jsonl_and_numpy_values(tmp_path):
    import numpy as np

    record = RunRecord.open(tmp_path)
    record.write_jsonl("tables/rows.jsonl", [{"x": np.float32(0.5), "y": np.arange(2)}])
    record.write_summary({"n": np.int64(3), "path": tmp_path})
    assert read_metrics(tmp_path / "tables" / "rows.jsonl") == [{"x": 0.5, "y": [0, 1]}]
    assert record.read_summary() == {"n": 3, "path": str(tmp_path)}


_TWO_HOSTS = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jaxstack.runs import RunRecord
record = RunRecord.create(sys.argv[3], "study", {"seed": 0})
record.write_summary({"process": jax.process_index()})
print("RUN", record.dir, record.writer, flush=True)
"""


@pytest.mark.slow
def test_multi_host_processes_share_one_directory(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    import time

    for ahead in range(60):  # the next minute's stamps are taken: process 0 picks a suffix and tells process 1
        (tmp_path / "study" / time.strftime(runs.STAMP_FORMAT, time.localtime(time.time() + ahead))).mkdir(
            parents=True, exist_ok=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_HOSTS, port, str(i), str(tmp_path)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-2000:]
    (_, dir0, writer0), (_, dir1, writer1) = ([line for line in out.splitlines() if line.startswith("RUN ")][0].split()
                                              for out, _ in outputs)
    assert dir0 == dir1 and dir0.endswith("-1") and (writer0, writer1) == ("True", "False")
    assert json.loads((pathlib.Path(dir0) / "summary.json").read_text()) == {"process": 0}
