"""Table-2 statistics against hand counts, and the ceil(w * n) mixture sampler."""

from __future__ import annotations

import pytest

from jaxstack.data.adp import (
    PAPER_WEIGHTS,
    dataset_stats,
    mixture_count,
    mixture_plan,
    overall,
    sample_indices,
)
from jaxstack.data.adp.mixture import weight_for
from jaxstack.data.adp.stats import stats_table

# Counted by hand from tests/fixtures/adp/*.raw.jsonl (after skips):
# (trajectories, actions, api, code, message, api+code actions with a thought)
HAND_COUNTS = {
    "agenttuning_os": (2, 4, 0, 2, 2, 2),  # bash + answer; bash + finish
    "agenttuning_db": (1, 2, 0, 1, 1, 1),  # sql + answer
    "code_feedback": (2, 4, 0, 2, 2, 1),  # code (thought) + reply; code (no thought) + reply
    "codeactinstruct": (1, 2, 0, 1, 1, 1),
    "orca_agentinstruct": (2, 2, 0, 1, 1, 1),  # a reply; a bash block after "Use wc:"
    "synatra": (2, 2, 2, 0, 0, 2),
    "swe_gym": (1, 4, 2, 1, 1, 3),  # view, str_replace, bash, finish
    "swe_smith": (1, 4, 3, 1, 0, 4),  # bash, view, str_replace, submit
    "nebius_swe_agent": (1, 4, 3, 1, 0, 4),  # open, edit, python check, submit
}


@pytest.mark.parametrize("name", sorted(HAND_COUNTS))
def test_stats_match_hand_counts(converted, name):
    stats = dataset_stats(converted[name])
    n, actions, api, code, message, thought = HAND_COUNTS[name]
    assert (stats.trajectories, stats.actions, stats.api_actions, stats.code_actions, stats.message_actions) == (
        n, actions, api, code, message)
    assert stats.avg_rounds == pytest.approx(actions / n)
    assert stats.action_shares == pytest.approx(
        {"api": 100 * api / actions, "code": 100 * code / actions, "message": 100 * message / actions})
    assert stats.thought_coverage == pytest.approx(100 * thought / (api + code))


def test_specific_values_and_overall(converted):
    per = {name: dataset_stats(converted[name]) for name in ("code_feedback", "swe_gym", "synatra")}
    assert per["code_feedback"].avg_rounds == 2.0 and per["code_feedback"].thought_coverage == 50.0
    assert per["swe_gym"].action_shares == {"api": 50.0, "code": 25.0, "message": 25.0}
    assert per["synatra"].avg_rounds == 1.0 and per["synatra"].action_shares["api"] == 100.0
    total = overall(per)
    assert total["avg_rounds"] == pytest.approx((2.0 + 4.0 + 1.0) / 3)
    assert total["action_shares"]["api"] == pytest.approx((0 + 50 + 100) / 3)
    assert total["thought_coverage"] == pytest.approx((50 + 100 + 100) / 3)
    table = stats_table(per)
    assert "| swe_gym | 1 | 4.0 | 50/25/25 | 100.0 |" in table


def test_paper_overall_is_the_mean_of_rows():
    # Paper Table 2 avg rounds per dataset; "Overall 10.1" is their unweighted mean.
    rows = [8.2, 4.0, 4.0, 3.9, 9.7, 16.2, 8.2, 10.1, 18.3, 1.3, 19.7, 26.8, 1.0]
    assert round(sum(rows) / len(rows), 1) == 10.1


@pytest.mark.parametrize(
    "n, weight, expected",
    [(30, 0.1, 3), (31, 0.1, 4), (1000, 0.001, 1), (999, 0.001, 1), (10, 1.0, 10), (7, 3.0, 21), (5, 0.0, 0), (3, 2.0, 6)],
)
def test_mixture_count_is_ceil(n, weight, expected):
    assert mixture_count(n, weight) == expected


def test_weights_follow_the_paper():
    assert weight_for("agenttuning_os", PAPER_WEIGHTS) == 2.0
    assert weight_for("agenttuning_db", PAPER_WEIGHTS) == 2.0
    assert weight_for("swe_gym", PAPER_WEIGHTS) == 3.0
    assert weight_for("orca_agentinstruct", PAPER_WEIGHTS) == 0.001
    assert weight_for("mind2web", PAPER_WEIGHTS) == 1.0


def test_sampling_without_replacement_below_one():
    picked = sample_indices("code_feedback", 95, 0.1, seed=3)
    assert len(picked) == 10 and len(set(picked)) == 10 and all(0 <= i < 95 for i in picked)
    assert picked == sample_indices("code_feedback", 95, 0.1, seed=3)
    assert picked != sample_indices("code_feedback", 95, 0.1, seed=4)


def test_weight_one_takes_everything_and_upsampling():
    assert sample_indices("x", 5, 1.0, seed=0) == [0, 1, 2, 3, 4]
    drawn = sample_indices("swe_gym", 4, 3.0, seed=0)
    assert len(drawn) == 12 and set(drawn) <= set(range(4))
    repeated = sample_indices("swe_gym", 4, 2.5, seed=0, upsample="repeat")
    assert len(repeated) == 10 and all(repeated.count(i) >= 2 for i in range(4))


def test_plan_is_reproducible_and_stable():
    sizes = {"synatra": 300, "swe_gym": 2, "code_feedback": 40, "agenttuning_os": 3}
    plan = mixture_plan(sizes, seed=7)
    assert plan == mixture_plan(dict(reversed(list(sizes.items()))), seed=7)
    counts = {name: sum(1 for n, _ in plan if n == name) for name in sizes}
    assert counts == {"synatra": 3, "swe_gym": 6, "code_feedback": 4, "agenttuning_os": 6}
    # Adding a dataset does not change what is drawn from the others.
    bigger = mixture_plan({**sizes, "orca_agentinstruct": 5000}, seed=7, shuffle=False)
    grouped = mixture_plan(sizes, seed=7, shuffle=False)
    assert [p for p in bigger if p[0] != "orca_agentinstruct"] == grouped
    assert sum(1 for n, _ in bigger if n == "orca_agentinstruct") == 5
    assert sorted(plan) == sorted(grouped)
