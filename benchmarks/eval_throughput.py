"""Multiple-choice scoring throughput on CPU: jaxstack vs lm-evaluation-harness's HF backend.

Workload (both sides, one process): the Global PIQA-format fixture (``tests/fixtures/global_piqa``,
19 two-choice items in six varieties) repeated ``--copies`` times (copy k's contexts start with
"k. ", so no two requests are identical and neither side can de-duplicate), scored as lm-eval's cloze task
(``(prompt, " " + solution)`` per choice), with the tiny random Llama of ``tests/fixtures/evals/model``
(or any local HF directory via ``--model``), float32, batch size ``--batch-size`` on both sides.

* jaxstack: ``LoglikelihoodScorer.loglikelihoods`` (tokenisation, bucketed jitted forward, sums) +
  ``multiple_choice_metrics``.
* lm-eval: ``HFLM(pretrained=DIR).loglikelihood(instances)`` (its own tokenisation, length-sorted
  batches, torch forward) + the same metric function. The task-building machinery (datasets, YAML)
  is not timed on either side.

One warm-up pass each (jit compile / torch warm-up; reported as ``cold_s``), then ``--passes`` timed
passes alternating jaxstack, lm-eval, jaxstack, ... so load changes hit both; the median pass gives
items/s. The per-choice log-likelihoods of the two sides are compared too (max abs difference).

    .venv/bin/python benchmarks/eval_throughput.py                 # writes results/eval_throughput_cpu.json
    .venv/bin/python benchmarks/eval_throughput.py --copies 1 --passes 1 --no-write   # smoke test
Needs lm-eval, torch and accelerate (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "eval_throughput_cpu.json"
DEFAULT_MODEL = ROOT / "tests" / "fixtures" / "evals" / "model"
DEFAULT_DATA = ROOT / "tests" / "fixtures" / "global_piqa"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--copies", type=int, default=20, help="repeat the fixture's items this many times")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--only", choices=("both", "jax"), default="both")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    import jax
    import numpy as np

    from jaxstack.data.tokenizer import load_tokenizer
    from jaxstack.evals.global_piqa import load_global_piqa
    from jaxstack.evals.multiple_choice import multiple_choice_metrics, multiple_choice_requests
    from jaxstack.inference.scoring import LoglikelihoodScorer
    from jaxstack.models.checkpoint import load_pretrained

    jax.config.update("jax_default_matmul_precision", "highest")  # float32 on both sides
    base = [item for variety in load_global_piqa(args.data).values() for item in variety]
    # copies get a distinct prefix: identical requests would be de-duplicated by both sides
    items = [dataclasses.replace(item, context=f"{copy}. {item.context}") if copy else item
             for copy in range(args.copies) for item in base]
    requests = multiple_choice_requests(items)
    offsets = np.cumsum([0] + [len(item.choices) for item in items])

    def metrics(results):
        lls = [[ll for ll, _ in results[offsets[i]:offsets[i + 1]]] for i in range(len(items))]
        return multiple_choice_metrics(lls, items)

    model = load_pretrained(args.model)
    tokenizer = load_tokenizer(args.model)
    scorer = LoglikelihoodScorer(model, tokenizer, batch_size=args.batch_size)

    sides = {}

    def run_jax():
        results = scorer.loglikelihoods(requests, progress=False)
        return results, metrics(results)

    sides["jaxstack"] = run_jax
    if args.only == "both":
        import torch
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=args.model, tokenizer=args.model, device="cpu", dtype="float32",
                  batch_size=args.batch_size)
        instances = [Instance(request_type="loglikelihood", doc={}, arguments=request, idx=i)
                     for i, request in enumerate(requests)]

        def run_lm_eval():
            with torch.no_grad():
                results = lm.loglikelihood(instances, disable_tqdm=True)
            return results, metrics(results)

        sides["lm_eval_hf"] = run_lm_eval

    record: dict = {"benchmark": "eval_throughput", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                "cpu_count": os.cpu_count(), "jax": jax.__version__},
                    "workload": {"model": str(Path(args.model).resolve().relative_to(ROOT))
                                 if Path(args.model).resolve().is_relative_to(ROOT) else args.model,
                                 "data": str(args.data), "items": len(items), "requests": len(requests),
                                 "copies": args.copies, "batch_size": args.batch_size, "passes": args.passes}}
    outputs = {}
    for name, run in sides.items():
        start = time.perf_counter()
        outputs[name], _ = run()
        record[name] = {"cold_s": time.perf_counter() - start, "passes_s": []}
    for _ in range(args.passes):
        for name, run in sides.items():
            start = time.perf_counter()
            _, summary = run()
            record[name]["passes_s"].append(time.perf_counter() - start)
            record[name]["acc"], record[name]["acc_norm"] = summary["acc"], summary["acc_norm"]
            record[name]["acc_bytes"] = summary["acc_bytes"]
    for name in sides:
        median = statistics.median(record[name]["passes_s"])
        record[name]["median_s"] = median
        record[name]["items_per_s"] = len(items) / median
    if "lm_eval_hf" in sides:
        import torch

        record["machine"]["torch"] = torch.__version__
        record["machine"]["torch_threads"] = torch.get_num_threads()
        ours = np.array([ll for ll, _ in outputs["jaxstack"]])
        theirs = np.array([ll for ll, _ in outputs["lm_eval_hf"]])
        record["max_abs_loglikelihood_diff"] = float(np.abs(ours - theirs).max())
        record["ratio_jaxstack_over_lm_eval"] = record["jaxstack"]["items_per_s"] / record["lm_eval_hf"]["items_per_s"]
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}, indent=1))
    if not args.no_write:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
