"""``jaxstack serve``: argument parsing and the thin command around :mod:`jaxstack.inference.server`.

    jaxstack serve --model [NAME=]PATH [--model NAME=PATH ...] [--host 127.0.0.1] [--port 8000]
                   [--api-key KEY] [--slots 8] [--max-queue 256]
"""

from __future__ import annotations

import logging


def _model_spec(text: str) -> tuple[str | None, str]:
    """``NAME=PATH`` or ``PATH`` (named after the directory)."""
    name, sep, path = text.partition("=")
    if not sep:
        return None, text
    if not name or not path:
        raise ValueError(f"--model: expected NAME=PATH or PATH, got {text!r}")
    return name, path


def add_subparser(subparsers) -> None:
    """Adds ``serve`` to ``subparsers`` (an ``argparse`` sub-parsers action)."""
    serve = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server for local model directories")
    serve.add_argument("--model", required=True, action="append", type=_model_spec, metavar="[NAME=]PATH",
                       help="directory with config.json, safetensors, tokenizer.json; repeat for several models "
                            "(routed by the request's 'model' field)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--policy", default="fp32")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 routes")
    serve.add_argument("--slots", type=int, default=8, help="requests decoded together per model (cache rows)")
    serve.add_argument("--max-queue", type=int, default=256, help="waiting requests per model before 429")
    serve.add_argument("--max-body-bytes", type=int, default=16 * 2**20, help="larger bodies get 413")
    serve.add_argument("--max-connections", type=int, default=1024, help="open connections before 503")


def run_serve(args) -> int:
    """Loads every ``--model`` and serves them until interrupted."""
    from jaxstack.inference.server import load_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    server = load_server(args.model, policy=args.policy, slots=args.slots, max_queue=args.max_queue,
                         host=args.host, port=args.port, api_key=args.api_key, max_body_bytes=args.max_body_bytes,
                         max_connections=args.max_connections)
    print(f"serving {sorted(server.models)} on {server.url}/v1 (completions, chat/completions, models); "
          "Ctrl-C to stop", flush=True)
    server.serve_forever()
    return 0


__all__ = ["add_subparser", "run_serve"]
