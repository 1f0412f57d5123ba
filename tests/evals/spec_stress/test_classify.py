"""The judge path (strict JSON, errors named by scenario, the run goes on) and the log-likelihood classifier."""

import json

import numpy as np
import pytest

from jaxstack.evals.spec_stress import classify
from jaxstack.evals.spec_stress.store import JsonlStore

LABELS = classify.POSITION_LABELS
RUBRIC = {"value_pair": ["honesty", "kindness"],
          "value1_bias_spectrum": {label: f"strategy {i}" for i, label in enumerate(LABELS)},
          "value2_bias_spectrum": {label: f"other {i}" for i, label in enumerate(LABELS)}}
SCENARIOS = [{"scenario_id": f"s{i}", "pair_id": "p0", "value1": "honesty", "value2": "kindness",
              "query": f"question {i}"} for i in range(3)]


def _classification(count, first=2):
    return json.dumps({"classifications": [
        {"response": i + 1, "reasoning": "r", "value1_position": first, "value2_position": 6 - first,
         "confidence": 0.5} for i in range(count)]})


class ScriptedJudge:
    def __init__(self, replies):
        self.replies, self.prompts = replies, []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        for key, reply in self.replies.items():
            if key in prompt:
                return reply
        raise AssertionError("unexpected prompt")


def test_malformed_reply_is_recorded_with_the_scenario_id_and_the_run_goes_on(tmp_path):
    judge = ScriptedJudge({"question 0": _classification(2), "question 1": "Sure! {\"classifications\": [",
                           "question 2": "```json\n" + _classification(2, first=5) + "\n```"})
    out = tmp_path / "classifications.jsonl"
    responses = [["a", "b"]] * 3
    counts = classify.classify_with_judge(SCENARIOS, responses, {"p0": RUBRIC}, judge, out, progress=False)
    assert counts == {"done_before": 0, "ok": 2, "errors": 1}
    rows = JsonlStore(out, ("scenario_id",)).rows()
    assert [r["scenario_id"] for r in rows] == ["s0", "s2"]
    assert rows[1]["classifications"][0]["value1_position"] == 5
    errors = [json.loads(line) for line in (tmp_path / "classifications.jsonl.errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["scenario_id"] == "s1"
    assert "scenario 's1'" in errors[0]["message"] and "not valid JSON" in errors[0]["message"]
    # a rerun asks only for the failed scenario
    fixed = ScriptedJudge({"question 1": _classification(2)})
    counts = classify.classify_with_judge(SCENARIOS, responses, {"p0": RUBRIC}, fixed, out, progress=False)
    assert counts == {"done_before": 2, "ok": 1, "errors": 0} and len(fixed.prompts) == 1
    positions, confidence = classify.judged_positions(out, ["s0", "s1", "s2"], ["m0", "m1"])
    assert positions.shape == (3, 2, 2) and positions[2, 1].tolist() == [5.0, 1.0]
    assert np.all(confidence == 0.5)


@pytest.mark.parametrize("reply, message", [
    ("[1, 2]", "expected a JSON object"),
    ("Here it is: {\"classifications\": []}", "not valid JSON"),
    ("```json\n{}\n```\nand more", "not valid JSON"),
    (json.dumps({"classifications": []}), "expected a list of 2 entries"),
    (_classification(2, first=7), "value1_position: expected an integer 0..6, got 7"),
    (json.dumps({"classifications": [{"response": 1, "reasoning": "r", "value1_position": 1, "value2_position": 2,
                                      "confidence": True}] * 2}), "confidence"),
    (json.dumps({"classifications": [{"response": 2, "reasoning": "r", "value1_position": 1, "value2_position": 2,
                                      "confidence": 0.1}] * 2}), r"classifications\[0\].response: expected 1"),
])
def test_strict_parsing_names_the_scenario_and_the_field(reply, message):
    with pytest.raises(classify.JudgeReplyError, match=message) as error:
        classify.validate_classification(classify.parse_json_reply(reply, "scn-7"), "scn-7", 2)
    assert error.value.scenario_id == "scn-7" and "scenario 'scn-7'" in str(error.value)


def test_rubric_and_compliance_validation(tmp_path):
    assert classify.validate_rubric(RUBRIC, "p0", "honesty", "kindness")["value1_bias_spectrum"]["neutral"] == "strategy 3"
    broken = {**RUBRIC, "value2_bias_spectrum": {k: v for k, v in RUBRIC["value2_bias_spectrum"].items() if k != "neutral"}}
    with pytest.raises(classify.JudgeReplyError, match="value2_bias_spectrum: expected an object with keys"):
        classify.validate_rubric(broken, "p0", "honesty", "kindness")
    with pytest.raises(classify.JudgeReplyError, match="value_pair"):
        classify.validate_rubric({**RUBRIC, "value_pair": ["kindness", "honesty"]}, "p0", "honesty", "kindness")
    assert classify.validate_compliance({"reasoning": "x", "decision": "ambiguous"}, "s")["decision"] == "ambiguous"
    with pytest.raises(classify.JudgeReplyError, match="decision: expected one of"):
        classify.validate_compliance({"reasoning": "x", "decision": "fine"}, "s")
    # B.6 with three judges; one judge's malformed reply is counted, the others are stored
    judges = {"j1": lambda p: json.dumps({"reasoning": "r", "decision": "compliant"}),
              "j2": lambda p: json.dumps({"reasoning": "r", "decision": "non-compliant"}),
              "j3": lambda p: "not json"}
    counts = classify.check_compliance(SCENARIOS[:1], [["resp a", "resp b"]], ["m0", "m1"], "Be honest.", judges,
                                       tmp_path / "compliance.jsonl", progress=False)
    assert counts == {"done_before": 0, "ok": 4, "errors": 2}
    prompt = classify.compliance_prompt("Be honest.", "q", "r")
    assert prompt.startswith("<model_spec>\nBe honest.\n</model_spec>")


class FakeBackend:
    """A scoring backend whose log-likelihood of " k" is -|k - target| for a target named in the prompt."""

    def __init__(self):
        self.requests = []

    def loglikelihoods(self, requests, *, batch_size=16, progress=True):
        self.requests += requests
        out = []
        for context, continuation in requests:
            target = int(context.split("target=")[1][0]) if "target=" in context else 3
            out.append((-abs(int(continuation) - target) * 2.0, False))
        return out


def test_loglikelihood_classifier_takes_the_argmax_and_scores_each_prompt_once():
    backend = FakeBackend()
    classifier = classify.LoglikelihoodClassifier(backend, template="{response} ; {value} =")
    positions, confidence = classifier.classify(["q0", "q1"], [["target=6", "target=1"], ["target=6", "x"]],
                                                [("a", "b"), ("a", "b")])
    assert positions.shape == (2, 2, 2)
    assert positions[0, 0].tolist() == [6, 6] and positions[0, 1].tolist() == [1, 1] and positions[1, 1].tolist() == [3, 3]
    expected = 1.0 / (1.0 + 2 * np.exp(-2.0) + 2 * np.exp(-4.0) + 2 * np.exp(-6.0))  # target 3
    assert confidence[1, 1, 0] == pytest.approx(expected)
    # "target=6 ; a =" appears twice (scenarios 0 and 1): scored once, 7 continuations per distinct prompt
    assert len(backend.requests) == 7 * 6
    with pytest.raises(ValueError, match="choices: expected 7"):
        classify.LoglikelihoodClassifier(backend, choices=(" 0", " 1"))


def test_loglikelihood_classifier_on_a_local_model_is_deterministic(random_model, tokenizer):
    classifier = classify.LoglikelihoodClassifier(random_model, tokenizer, batch_size=8,
                                                  template="Q: {query} A: {response} Favours {value}:")
    args = (["Should I tell?"], [["Yes, tell them.", "No."]], [("honesty", "kindness")])
    first, conf = classifier.classify(*args)
    again, _ = classifier.classify(*args)
    assert first.shape == (1, 2, 2) and np.array_equal(first, again)
    assert np.all((conf > 0) & (conf <= 1))
    scores = classifier.loglikelihoods([("Should I tell?", "No.", "kindness")])
    assert int(np.argmax(scores[0])) == first[0, 1, 1]
