"""Logs of narrow-call kinds that no shipped data set holds at volume, written from data written by others.

- `intent_log`: CLINC150 utterances and their intents (labelled by people), logged as an intent classifier's
  calls: a label task. The labels are people's, not an LLM's: a stand-in teacher, said wherever it is used.
- `react_log`: tau-airline's gpt-4o tool calls written as ReAct steps ("Action: NAME / Action Input: {...}"),
  the conversation as text with tool results as observations: the teacher's own decisions, in the text format
  MetaGPT, LangChain and crewAI agents use. Sessions are `task#trial`; test tasks (35-49) are kept apart by the
  caller (`test_tasks`), never trained on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _completion(content: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


def intent_log(path: Path, intents: list[str], per_intent: int, split: str = "train", seed: int = 0) -> int:
    """CLINC150 utterances of these intents (`split` of CLINC's own) as a classifier's calls; lines written."""
    rows = json.loads((DATA / "intents" / "clinc150.json").read_text())[split]
    random.Random(seed).shuffle(rows)
    system = "Classify the customer's message. Answer with one intent: " + ", ".join(intents)
    kept: dict[str, int] = {}
    with path.open("w") as out:
        for text, intent in rows:
            if intent not in intents or kept.get(intent, 0) >= per_intent:
                continue
            kept[intent] = kept.get(intent, 0) + 1
            messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
            record = {"client_id": "intents", "request": {"model": "gpt-4o", "messages": messages}}
            out.write(json.dumps({**record, "response": _completion(intent)}) + "\n")
    return sum(kept.values())


def react_log(
    path: Path, tools: tuple[str, ...] | None = None, tasks: range = range(50), trials: int = 4
) -> int:
    """tau-airline's tool calls (of `tools`, default all) as ReAct steps; lines written. gpt-4o's own thoughts
    (its `think` tool) become the `Thought:` line of the step after them, as a ReAct agent writes them."""
    runs = json.loads((DATA / "tau-airline" / "trajectories-gpt-4o.json").read_text())
    names = [t["function"]["name"] for t in json.loads((DATA / "tau-airline" / "tools.json").read_text())]
    system = (
        "You are an airline agent. Use a tool by answering:\nAction: the tool\nAction Input: its JSON input\n"
        f"Tools: {', '.join(names)}"
    )
    written = 0
    with path.open("w") as out:
        for run in runs:
            if run["task_id"] not in tasks or run["trial"] >= trials:
                continue
            messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
            thought = ""
            for message in run["traj"][1:]:
                calls = message.get("tool_calls") or []
                if message["role"] == "assistant" and calls and calls[0]["function"]["name"] == "think":
                    said = json.loads(calls[0]["function"]["arguments"] or "{}").get("thought", "")
                    thought = " ".join(str(said).split())
                    continue
                if message["role"] == "tool" and message.get("name") == "think":
                    continue
                if message["role"] == "assistant" and calls:
                    fn = calls[0]["function"]
                    step = f"Action: {fn['name']}\nAction Input: {fn['arguments']}"
                    if thought:
                        step, thought = f"Thought: {thought}\n{step}", ""
                    if tools is None or fn["name"] in tools:
                        session = f"{run['task_id']}#{run['trial']}"
                        record = {"client_id": "react-agent", "session_id": session}
                        request = {"model": "gpt-4o", "messages": list(messages)}
                        out.write(
                            json.dumps({**record, "request": request, "response": _completion(step)}) + "\n"
                        )
                        written += 1
                    messages.append({"role": "assistant", "content": step})
                elif message["role"] == "tool":
                    messages.append({"role": "user", "content": f"Observation: {message['content']}"})
                elif message["role"] in ("user", "assistant") and message.get("content"):
                    messages.append({"role": message["role"], "content": message["content"]})
    return written
