"""The panel: N models answer every scenario; answers appended to JSONL keyed by (scenario_id, model).

Members (each has a ``name``, ``settings()`` -- what is recorded with every answer -- and
``answer(queries) -> responses``):

* :class:`LocalMember`: a jaxstack model in this process, sampled with
  :func:`jaxstack.inference.generate`; with ``intervention=`` it is a *steered* variant (e.g. a
  value vector from :mod:`jaxstack.interp.concepts`, applied at every prompt and generated token);
* :class:`EndpointMember`: any OpenAI-compatible endpoint (``jaxstack serve --model NAME=PATH``,
  vLLM, a hosted API) through :class:`jaxstack.inference.client.CompletionsClient`, addressed by
  model name; ``mode="completions"`` sends a batch of prompts in one request, ``mode="chat"`` one
  user turn per query.

:func:`run_panel` asks each member about the scenarios it has not answered yet, ``batch_size`` at a
time, with a progress bar, and appends each batch's answers (``scenario_id``, ``model``,
``response``, ``settings``) to the store before the next batch: a run killed midway loses at most the
batch in flight, and a rerun asks only for what is missing. A rerun whose member settings differ
from those recorded is refused (mixing settings in one panel would be silent). At temperature 0 a
resumed run gives the same answers as an uninterrupted one; at temperature > 0 a local member's
draws depend on the batch (one PRNG key per batch, seeded by the member seed and the first
scenario's index), so they are reproducible for a given batching only.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from jaxstack.evals.spec_stress.store import JsonlStore
from jaxstack.inference.sampler import SamplingConfig, generate
from jaxstack.layers.interventions import Intervention

DEFAULT_TEMPLATE = "{query}"


class PanelMember(Protocol):
    name: str

    def settings(self) -> dict[str, Any]: ...

    def answer(self, queries: Sequence[str], *, first_index: int = 0) -> list[str]: ...


def _bucket(width: int, step: int = 16) -> int:
    return -(-width // step) * step


@dataclasses.dataclass
class LocalMember:
    """A local jaxstack model (optionally steered). template: how a query becomes the prompt
    (``{query}`` is replaced). batch rows are padded to ``batch_size`` and prompt widths to a multiple
    of 16, so a panel run compiles once per width bucket. ``steering``: a description of the
    intervention, recorded with the answers (vectors are not serialised)."""

    name: str
    model: Any
    tokenizer: Any
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=64, temperature=0.0)
    intervention: Intervention | None = None
    steering: dict[str, Any] | None = None
    template: str = DEFAULT_TEMPLATE
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self):
        if "{query}" not in self.template:
            raise ValueError(f"template: must contain '{{query}}', got {self.template!r}")
        if self.intervention is not None and self.intervention.batch != 1:
            raise ValueError("intervention: a panel member applies one edit to every row (vectors [L, 1, D])")
        eos = self.tokenizer.eos_id
        if eos is not None and eos not in self.sampling.stop_tokens:
            self.sampling = dataclasses.replace(self.sampling, stop_tokens=(*self.sampling.stop_tokens, eos))

    def settings(self) -> dict[str, Any]:
        s = self.sampling
        out = {"kind": "local", "max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "top_k": s.top_k,
               "top_p": s.top_p, "stop_tokens": list(s.stop_tokens), "seed": self.seed, "template": self.template}
        if self.intervention is not None:
            out["steering"] = self.steering or {"kind": self.intervention.kind, "site": self.intervention.site}
        return out

    def answer(self, queries: Sequence[str], *, first_index: int = 0) -> list[str]:
        prompts = [self.tokenizer.encode(self.template.format(query=q)) or [self.tokenizer.eos_id] for q in queries]
        limit = self.model.config.max_position_embeddings
        for index, ids in enumerate(prompts):
            if len(ids) + self.sampling.max_new_tokens > limit:
                raise ValueError(f"queries[{first_index + index}]: {len(ids)} prompt tokens + max_new_tokens "
                                 f"{self.sampling.max_new_tokens} exceed the model's context of {limit} ({self.name})")
        out = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            rows = chunk + [chunk[0]] * (self.batch_size - len(chunk))
            width = min(_bucket(max(len(r) for r in rows)), limit - self.sampling.max_new_tokens)
            result = generate(self.model, rows, self.sampling, seed=self.seed * 1_000_003 + first_index + start,
                              pad_length=width, intervention=self.intervention)
            tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
            for row in range(len(chunk)):
                ids = tokens[row, :int(lengths[row])].tolist()
                ids = [t for t in ids if t not in self.sampling.stop_tokens]
                out.append(self.tokenizer.decode(ids))
        return out


@dataclasses.dataclass
class EndpointMember:
    """An OpenAI-compatible endpoint. client: a CompletionsClient (its ``model`` is the name sent);
    params: the sampling fields sent with every request (``temperature``, ``max_tokens``, ``top_p``,
    ``seed``, ...), recorded as given. concurrency: parallel requests in chat mode."""

    name: str
    client: Any
    params: dict[str, Any] = dataclasses.field(default_factory=lambda: {"temperature": 0.0, "max_tokens": 64})
    mode: str = "completions"
    template: str = DEFAULT_TEMPLATE
    concurrency: int = 4

    def __post_init__(self):
        if self.mode not in ("completions", "chat"):
            raise ValueError(f"mode: expected 'completions' or 'chat', got {self.mode!r}")
        if "{query}" not in self.template:
            raise ValueError(f"template: must contain '{{query}}', got {self.template!r}")

    def settings(self) -> dict[str, Any]:
        return {"kind": "endpoint", "base_url": self.client.base_url, "served_model": self.client.model,
                "mode": self.mode, "template": self.template, **self.params}

    def answer(self, queries: Sequence[str], *, first_index: int = 0) -> list[str]:
        prompts = [self.template.format(query=q) for q in queries]
        if self.mode == "completions":
            answer = self.client.completions(prompts, **self.params)
            choices = sorted(answer["choices"], key=lambda c: c["index"])
            if len(choices) != len(prompts):
                raise ValueError(f"{self.name}: the server returned {len(choices)} choices for {len(prompts)} prompts")
            return [c["text"] for c in choices]

        def one(prompt):
            reply = self.client.chat([{"role": "user", "content": prompt}], **self.params)
            return reply["choices"][0]["message"]["content"]

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(one, prompts))


def _settings_digest(settings: dict[str, Any]) -> str:
    import json

    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_panel(scenarios: Sequence[dict[str, Any]], members: Sequence[PanelMember], out_path, *,
              batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    """Every member answers every scenario (``scenario_id``, ``query``) not yet in ``out_path``.

    Returns {"asked": {model: answers requested this run}, "skipped": {model: already done},
    "settings": {model: settings}}.
    """
    from tqdm.auto import tqdm

    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"members: names must be distinct, got {names}")
    for index, scenario in enumerate(scenarios):
        for field in ("scenario_id", "query"):
            if field not in scenario:
                raise ValueError(f"scenarios[{index}]: missing field {field!r}")
    ids = [s["scenario_id"] for s in scenarios]
    if len(set(ids)) != len(ids):
        raise ValueError("scenarios: scenario_id values must be distinct")
    store = JsonlStore(out_path, ("scenario_id", "model"))
    stored = store.rows()
    recorded = {}
    for row in stored:
        recorded.setdefault(row["model"], row.get("settings_digest"))
    done = {store.key(row) for row in stored}
    report: dict[str, Any] = {"asked": {}, "skipped": {}, "settings": {}}
    todo = {}
    for member in members:
        settings = member.settings()
        digest = _settings_digest(settings)
        if member.name in recorded and recorded[member.name] != digest:
            raise ValueError(f"members: {member.name!r} has answers in {out_path} under other settings; use a new "
                             f"store or the recorded settings (now: {settings})")
        report["settings"][member.name] = settings
        todo[member.name] = [i for i, sid in enumerate(ids) if (sid, member.name) not in done]
        report["skipped"][member.name] = len(ids) - len(todo[member.name])
        report["asked"][member.name] = 0
    total = sum(len(v) for v in todo.values())
    bar = tqdm(total=total, desc="panel", unit="answer", disable=not progress)
    for member in members:
        digest = _settings_digest(report["settings"][member.name])
        pending = todo[member.name]
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            responses = member.answer([scenarios[i]["query"] for i in chunk], first_index=chunk[0])
            if len(responses) != len(chunk):
                raise ValueError(f"{member.name}: answered {len(responses)} of {len(chunk)} queries")
            store.append({"scenario_id": ids[i], "model": member.name, "response": response,
                          "settings_digest": digest, "settings": report["settings"][member.name]}
                         for i, response in zip(chunk, responses))
            report["asked"][member.name] += len(chunk)
            bar.update(len(chunk))
            bar.set_postfix(model=member.name)
    bar.close()
    return report


def answer_table(out_path, scenario_ids: Sequence[str], models: Sequence[str]) -> list[list[str]]:
    """responses[i][m] for scenario_ids x models from a panel store (KeyError naming a missing answer)."""
    rows = {(r["scenario_id"], r["model"]): r["response"] for r in JsonlStore(out_path, ("scenario_id", "model")).rows()}
    out = []
    for sid in scenario_ids:
        line = []
        for model in models:
            if (sid, model) not in rows:
                raise KeyError(f"{out_path}: no answer of {model!r} to scenario {sid!r} (run the panel first)")
            line.append(rows[(sid, model)])
        out.append(line)
    return out


__all__ = ["EndpointMember", "LocalMember", "PanelMember", "answer_table", "run_panel"]
