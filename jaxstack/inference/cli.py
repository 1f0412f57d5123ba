"""``jaxstack serve``: argument parsing and the thin command around :mod:`jaxstack.inference.server`.

    jaxstack serve --model PATH [--host 127.0.0.1] [--port 8000] [--name NAME] [--max-batch 32]
"""

from __future__ import annotations


def add_subparser(subparsers) -> None:
    """Adds ``serve`` to ``subparsers`` (an ``argparse`` sub-parsers action)."""
    serve = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server for a local model directory")
    serve.add_argument("--model", required=True, help="directory with config.json, safetensors, tokenizer.json")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--name", help="model name in the API (default: the directory name)")
    serve.add_argument("--policy", default="fp32")
    serve.add_argument("--max-batch", type=int, default=32, help="most requests batched into one forward")


def run_serve(args) -> int:
    """Loads ``args.model`` and serves it until interrupted."""
    from jaxstack.inference.server import load_server

    server = load_server(args.model, name=args.name, policy=args.policy, host=args.host, port=args.port,
                         max_batch=args.max_batch)
    server.start()
    print(f"serving {server.name!r} on {server.url}/v1 (completions, chat/completions, models); Ctrl-C to stop",
          flush=True)
    server.serve_forever()
    return 0


__all__ = ["add_subparser", "run_serve"]
