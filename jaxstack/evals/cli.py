"""``jaxstack eval ...``: argument parsing and the thin commands around the library.

    jaxstack eval global-piqa --model PATH --data PATH [--format cloze|prompted] [--out DIR]
    jaxstack eval piqa --model PATH --data FILE_OR_DIR          # lm-eval's piqa prompt
    jaxstack eval task --model PATH --data FILE --template "Q: {q}\\nA:" --choices a,b [--label label]

``--model`` is a local Hugging Face directory (config.json + safetensors + tokenizer.json) or the URL
of an OpenAI-compatible server (``http://127.0.0.1:8000``; its tokenizer from ``--tokenizer``).
"""

from __future__ import annotations

import json
import pathlib

from jaxstack.runs import RunRecord


def add_subparsers(sub) -> None:
    evaluate = sub.add_parser("eval", help="evaluate a model (Global PIQA, PIQA, any multiple-choice task)")
    tasks = evaluate.add_subparsers(dest="eval_task", required=True)

    def common(parser):
        parser.add_argument("--model", required=True, help="local HF model directory, or http://HOST:PORT of a server")
        parser.add_argument("--tokenizer", help="tokenizer.json (default: the one in --model)")
        parser.add_argument("--data", required=True)
        parser.add_argument("--out", help="output directory (default: runs/eval/<task>/<model>/<time>)")
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument("--policy", default="fp32", help="dtype policy preset (local models)")
        parser.add_argument("--no-progress", action="store_true")

    gp = tasks.add_parser("global-piqa", help="Global PIQA per variety and script, table + bar plot")
    common(gp)
    gp.add_argument("--format", choices=("cloze", "prompted"), default="cloze",
                    help="cloze for base models (log-likelihood), prompted for instruct models (generation)")
    gp.add_argument("--variant", choices=("auto", "nonparallel", "parallel"), default="auto")
    gp.add_argument("--varieties", help="comma-separated variety configs (default: all)")
    gp.add_argument("--max-new-tokens", type=int, default=2048, help="prompted format (lm-eval: 2048)")
    gp.add_argument("--temperature", type=float, default=0.8, help="prompted format (lm-eval: 0.8)")
    gp.add_argument("--top-p", type=float, default=0.95, help="prompted format (lm-eval: 0.95)")
    gp.add_argument("--no-chat", action="store_true", help="prompted format without the chat template")

    piqa = tasks.add_parser("piqa", help="original PIQA (Question: {goal}\\nAnswer:, choices sol1/sol2)")
    common(piqa)

    task = tasks.add_parser("task", help="any multiple-choice task from a template and field names")
    common(task)
    task.add_argument("--template", required=True, help='str.format template over record fields, e.g. "Q: {q}\\nA:"')
    task.add_argument("--choices", required=True, help="comma-separated choice fields, in label order")
    task.add_argument("--label", default="label", help="field with the correct choice's index")
    task.add_argument("--delimiter", default=" ", help="between context and choice (lm-eval: a space)")


def _load(args):
    """(model or client, tokenizer, display name)."""
    from jaxstack.data.tokenizer import load_tokenizer

    if args.model.startswith(("http://", "https://")):
        from jaxstack.inference.client import CompletionsClient

        if not args.tokenizer:
            raise ValueError("--tokenizer: required with a server URL (the client tokenises requests itself)")
        tokenizer = load_tokenizer(args.tokenizer)
        client = CompletionsClient(args.model, tokenizer)
        return client, tokenizer, client.model
    from jaxstack.data.chat import load_chat_template
    from jaxstack.models.checkpoint import load_pretrained

    model = load_pretrained(args.model, policy=args.policy)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    tokenizer.chat_template = load_chat_template(args.model)
    return model, tokenizer, pathlib.Path(args.model).resolve().name


def _record(args, task: str, name: str) -> RunRecord:
    """The evaluation's run record, its config.json (the command's arguments) written before it runs:
    ``--out`` as given, else a new ``runs/eval/<task>/<model>/<time>``."""
    if args.out:
        return RunRecord.open(args.out, vars(args))
    return RunRecord.create(pathlib.Path("runs") / "eval" / task, name.replace("/", "_"), vars(args))


def run_eval(args) -> int:
    from jaxstack.evals import global_piqa
    from jaxstack.evals.multiple_choice import evaluate_multiple_choice
    from jaxstack.evals.tasks import PIQA, MultipleChoiceTask

    if args.batch_size <= 0:
        raise ValueError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    model, tokenizer, name = _load(args)
    progress = not args.no_progress
    if args.eval_task == "global-piqa":
        varieties = args.varieties.split(",") if args.varieties else None
        data = global_piqa.load_global_piqa(args.data, variant=args.variant, varieties=varieties)
        record = _record(args, f"global_piqa_{args.format}", name)
        generation = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p}
        if args.format == "prompted" and not hasattr(model, "complete_chat"):
            generation["chat"] = not args.no_chat
        report = global_piqa.evaluate_global_piqa(model, tokenizer, data, format=args.format,
                                                  batch_size=args.batch_size, progress=progress,
                                                  generation=generation)
        report["model"] = name
        paths = global_piqa.write_report(report, record.dir)
        print(global_piqa.markdown_report(report))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    task = PIQA if args.eval_task == "piqa" else MultipleChoiceTask(
        "task", args.template.encode().decode("unicode_escape"), tuple(args.choices.split(",")), args.label,
        args.delimiter)
    items = task.load(args.data)
    record = _record(args, task.name, name)
    result = evaluate_multiple_choice(model, tokenizer, items, target_delimiter=task.target_delimiter,
                                      batch_size=args.batch_size, progress=progress)
    summary = record.write_summary({k: v for k, v in result.items() if k != "records"}
                                   | {"task": task.name, "model": name})
    record.write_jsonl("records.jsonl", result["records"])
    print(json.dumps(summary))
    return 0


__all__ = ["add_subparsers", "run_eval"]
