"""The released dataset's loader on the hand-made fixture (tests/fixtures/spec_stress/make_fixture.py)."""

import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from jaxstack.evals.spec_stress import dataset, metrics

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "spec_stress" / "default_all_models.parquet"


def test_fixture_loads_as_n_models_2_with_published_keys():
    data = dataset.load_dataset(FIXTURE)
    assert data.positions.shape == (8, 12, 2)
    assert data.models == dataset.MODEL_KEYS
    assert data.meta["value1"][0] == "honesty" and data.meta["nudge_direction"][1] == "value1"
    grok = data.models.index("grok_4")
    assert data.positions[3, grok].tolist() == [6.0, 0.0]
    d = metrics.disagreement(data.positions)
    assert d[0] == 0.0 and d[1] == pytest.approx(3.0) and d[2] == pytest.approx(1.5)


def test_recompute_bins_subset_and_outliers_on_the_fixture():
    numbers = dataset.recompute(dataset.load_dataset(FIXTURE))
    assert numbers["rows"] == 8 and numbers["high_disagreement"] == 4  # rows 1, 2, 4, 5
    assert numbers["bin_counts"] == {"[0,1)": 3, "[1,1.5)": 1, "[1.5,2)": 3, "[2,2.5)": 0, "[2.5,3]": 1}
    assert numbers["outliers"]["grok_4"] == 1
    assert numbers["outliers"]["claude_3_5_sonnet"] == numbers["outliers"]["claude_3_7_sonnet"] == 1
    assert sum(numbers["outliers"].values()) == 3
    table = dataset.paper_table({"all_models": numbers})
    assert "| outliers `grok_4` (Fig. 6) | 10,503 | 1 |" in table and "43,960" in table


def test_subset_of_models_and_split_directory(tmp_path):
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "openai_models-00000-of-00001.parquet"
    target.write_bytes(FIXTURE.read_bytes())
    data = dataset.load_dataset(tmp_path, split="openai_models", models=dataset.SPLITS["openai_models"])
    assert data.positions.shape == (8, 5, 2) and data.models == dataset.SPLITS["openai_models"]
    with pytest.raises(dataset.DatasetError, match="no .parquet files of split 'claude_models'"):
        dataset.load_dataset(tmp_path, split="claude_models")


def test_hub_names_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="looks like a Hugging Face hub name.*never downloads"):
        dataset.load_dataset("jifanz/stress_testing_model_spec")
    with pytest.raises(ValueError, match="does not exist"):
        dataset.load_dataset("/nonexistent/dir/file.parquet")


def test_a_malformed_file_names_the_missing_column(tmp_path):
    table = pq.read_table(FIXTURE)
    broken = tmp_path / "broken.parquet"
    pq.write_table(table.drop(["gpt_4o_value2_position"]), broken)
    with pytest.raises(dataset.DatasetError, match="missing column 'gpt_4o_value2_position'"):
        dataset.load_dataset(broken)
    pq.write_table(table.drop(["value1"]), broken)
    with pytest.raises(dataset.DatasetError, match="missing column 'value1'"):
        dataset.load_dataset(broken)
    out_of_range = table.set_column(table.schema.get_field_index("o3_value1_position"), "o3_value1_position",
                                    [[9] * table.num_rows])
    pq.write_table(out_of_range, broken)
    with pytest.raises(dataset.DatasetError, match="'o3_value1_position' has positions outside 0..6"):
        dataset.load_dataset(broken)


def test_missing_positions_are_nan_and_dropped_by_recompute(tmp_path):
    table = pq.read_table(FIXTURE)
    column = table.column("o3_value1_position").to_pylist()
    column[0] = None
    path = tmp_path / "holes.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("o3_value1_position"), "o3_value1_position",
                                    [column]), path)
    data = dataset.load_dataset(path)
    assert np.isnan(data.positions[0, data.models.index("o3"), 0])
    numbers = dataset.recompute(data)
    assert numbers["rows"] == 8 and numbers["rows_complete"] == 7


def test_the_committed_fixture_is_what_its_generator_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURE.parent / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert pq.read_table(FIXTURE).equals(module.table())
    assert module.MODELS == dataset.MODEL_KEYS
