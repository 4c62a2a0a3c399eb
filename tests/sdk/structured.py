"""Structured outputs through the official `openai` Python SDK against `hone serve`.

Checks what a user of OpenAI's structured outputs does unchanged but for
`base_url`:
- `client.chat.completions.parse(..., response_format=PydanticModel)` (or the
  `beta` path of older SDKs) returns a parsed, validated model instance;
- the same with `stream=True` through `client.chat.completions.stream`;
- `response_format={"type": "json_object"}` with `n=2` gives two JSON objects;
- a schema the server cannot honour raises `BadRequestError` with
  `param == "response_format"`;
- `tools=[...]`: a forced call comes back in `message.tool_calls` (arguments
  that parse and validate), plainly and through the SDK's stream helper, and
  a two-turn conversation (the call, the tool's result, the final answer) is
  answered; a `tool_choice` naming an unknown function is a 400 on
  `tool_choice`;
- a fine-tuning job on a tool-calling file (examples/tools/tools_sdk.jsonl:
  10 conversations with `tools`, calls and tool results; one epoch), then
  its `ft:` model called with `tools` (one call, forced, that parses and
  validates against the tool's schema), and chatted with without tools,
  plainly and streamed (the same text). On Qwen2.5-Coder-0.5B here this step
  takes about a minute and a half on a quiet machine (`--skip-fine-tune`
  leaves it out).

Usage:
    python tests/sdk/structured.py --hone target/release/hone --model GGUF [--base-id ID]

It starts its own server on a free port with a fresh HONE_HOME, and stops it
at the end. Exit 0 when every step passed.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Literal

import openai
from openai import OpenAI
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_openai import API_KEY, ROOT, free_port, start_server, step, wait_file  # noqa: E402

BASE = "smollm2-135m-instruct"  # replaced by --base-id


class Person(BaseModel):
    name: str
    age: int
    city: str


class Pets(BaseModel):
    owner: str
    pets: List[Literal["cat", "dog", "fish"]]


PROMPT = "Alice is 30 years old and lives in Paris. Extract her name, age and city."


def parse(client: OpenAI, **kw):
    """`chat.completions.parse`, or its `beta` home in older SDKs."""
    completions = getattr(client.chat.completions, "parse", None)
    if completions is None:
        completions = client.beta.chat.completions.parse
    return completions(**kw)


def run(client: OpenAI) -> None:
    step("parse(response_format=Person)")
    r = parse(
        client,
        model=BASE,
        messages=[{"role": "user", "content": PROMPT}],
        response_format=Person,
        temperature=0,
        max_completion_tokens=80,
    )
    msg = r.choices[0].message
    assert isinstance(msg.parsed, Person), msg
    assert r.choices[0].finish_reason == "stop", r
    print("   ", msg.parsed)

    step("parse with a nested enum list")
    r = parse(
        client,
        model=BASE,
        messages=[{"role": "user", "content": "Bob has a cat and two dogs. List his pets."}],
        response_format=Pets,
        temperature=0,
        max_completion_tokens=160,
    )
    assert isinstance(r.choices[0].message.parsed, Pets), r
    print("   ", r.choices[0].message.parsed)

    step("stream(response_format=Person)")
    stream_api = getattr(client.chat.completions, "stream", None) or client.beta.chat.completions.stream
    with stream_api(
        model=BASE,
        messages=[{"role": "user", "content": PROMPT}],
        response_format=Person,
        temperature=0,
        max_completion_tokens=80,
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Person), final
    print("   ", final.choices[0].message.parsed)

    step("json_object, n=2")
    r = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        response_format={"type": "json_object"},
        n=2,
        temperature=1.0,
        seed=1,
        max_completion_tokens=120,
    )
    assert len(r.choices) == 2
    for c in r.choices:
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.message.content), dict), c
        print("   ", c.finish_reason, c.message.content)

    step("a bad schema is a 400 on response_format")
    try:
        client.chat.completions.create(
            model=BASE,
            messages=[{"role": "user", "content": "hi"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "frobnicate"}},
            },
        )
        raise AssertionError("a bad schema was accepted")
    except openai.BadRequestError as e:
        assert e.body and e.body.get("param") == "response_format", e.body
        print("   ", e.body.get("message"))


class Weather(BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": Weather.model_json_schema() | {"additionalProperties": False},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Get the current time in a time zone",
            "parameters": {
                "type": "object",
                "properties": {"tz": {"type": "string"}},
                "required": ["tz"],
                "additionalProperties": False,
            },
        },
    },
]

WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris right now, in celsius?"}]


def check_weather_call(call) -> None:
    assert call.id.startswith("call_") and call.type == "function", call
    assert call.function.name == "get_weather", call
    Weather.model_validate_json(call.function.arguments)


def run_tools(client: OpenAI) -> None:
    step("tools, tool_choice=required")
    r = client.chat.completions.create(
        model=BASE, messages=WEATHER_Q, tools=TOOLS, tool_choice="required",
        temperature=0, max_completion_tokens=80,
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None, c
    check_weather_call(c.message.tool_calls[0])
    print("   ", [(t.function.name, t.function.arguments) for t in c.message.tool_calls])

    step("tools, streamed, reassembled by the SDK's stream helper")
    stream_api = getattr(client.chat.completions, "stream", None) or client.beta.chat.completions.stream
    with stream_api(
        model=BASE, messages=WEATHER_Q, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0, max_completion_tokens=80,
    ) as stream:
        done_args = [e.arguments for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert len(calls) == 1 and done_args == [calls[0].function.arguments], (done_args, final)
    assert final.choices[0].finish_reason == "tool_calls", final
    check_weather_call(calls[0])
    print("   ", calls[0].function.name, calls[0].function.arguments)

    step("a two-turn tool conversation")
    messages = list(WEATHER_Q) + [c.message.model_dump(exclude_none=True)]
    for call in c.message.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id,
                         "content": json.dumps({"temperature": 21, "sky": "clear"})})
    r = client.chat.completions.create(
        model=BASE, messages=messages, tools=TOOLS, tool_choice="none",
        temperature=0, max_completion_tokens=60,
    )
    answer = r.choices[0].message
    assert answer.tool_calls is None and answer.content, r
    print("   ", answer.content)

    step("tool_choice naming an unknown function is a 400 on tool_choice")
    try:
        client.chat.completions.create(
            model=BASE, messages=WEATHER_Q, tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
        raise AssertionError("an unknown function was accepted")
    except openai.BadRequestError as e:
        assert e.body and e.body.get("param") == "tool_choice", e.body
        print("   ", e.body.get("message"))


def run_fine_tune(client: OpenAI) -> str:
    step("fine-tune on a tool-calling file (1 epoch), then call tools with the ft: model")
    started = time.time()
    train = ROOT / "examples" / "tools" / "tools_sdk.jsonl"
    lines = [json.loads(l) for l in train.read_text(encoding="utf-8").splitlines() if l.strip()]
    assert all(l.get("tools") for l in lines), "every line has tools"
    f = wait_file(client, client.files.create(file=train.open("rb"), purpose="fine-tune").id)
    assert f.status == "processed", f"status {f.status}: {f.status_details}"
    job = client.fine_tuning.jobs.create(
        training_file=f.id, model=BASE, suffix="tools", seed=7,
        method={"type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5,
                                                   "learning_rate_multiplier": 5}}},
    )
    deadline = time.time() + 1200
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline, "job did not finish in 20 minutes"
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", f"job {job.status}: {job.error}"
    assert job.fine_tuned_model.startswith(f"ft:{BASE}"), job.fine_tuned_model
    assert job.trained_tokens and job.trained_tokens > 0
    tools = lines[0]["tools"]
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    r = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "system", "content": lines[0]["messages"][0]["content"]},
                  {"role": "user", "content": "What's the weather in Lisbon?"}],
        tools=tools, tool_choice="required", parallel_tool_calls=False,
        temperature=0, max_completion_tokens=60,
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1, c
    call = c.message.tool_calls[0]
    schema = by_name[call.function.name]
    args = json.loads(call.function.arguments)
    assert set(schema["required"]) <= set(args) <= set(schema["properties"]), (schema, args)
    print(f"    {job.fine_tuned_model}: {call.function.name} {call.function.arguments} "
          f"({time.time() - started:.0f} s with the job)")
    chat_plain_and_streamed(client, job.fine_tuned_model)
    return job.id


def chat_plain_and_streamed(client: OpenAI, model: str) -> None:
    """The `ft:` model chatted with without tools, plainly and streamed with usage: the
    streamed text equals the plain answer (greedy), and the last chunk carries usage."""
    step("chat with the ft: model without tools, plain and streamed with usage")
    messages = [{"role": "user", "content": "Say hello in one short sentence."}]
    r = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                       max_tokens=24)
    answer = r.choices[0].message.content
    assert answer and r.usage.completion_tokens > 0, r
    chunks = list(client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=24,
        stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer, f"stream {streamed!r} != {answer!r}"
    assert chunks[-1].usage is not None, "no usage chunk"
    print(f"    {answer!r}")


def keep_adapter(home: Path, job_id: str, dest: Path) -> None:
    """Copies the job's final adapter (the newest under its directory) to `dest`, for
    scripts/test.sh's peft check of an adapter with trained token rows."""
    configs = sorted((home / "jobs" / job_id).rglob("adapter_config.json"),
                     key=lambda p: p.stat().st_mtime)
    assert configs, f"no adapter under {home / 'jobs' / job_id}"
    cfg = json.loads(configs[-1].read_text())
    assert cfg.get("trainable_token_indices"), f"the tool job trained no token rows: {cfg}"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(configs[-1].parent / name, dest / name)
    print(f"    kept {configs[-1].parent} (token rows {cfg['trainable_token_indices']}) in {dest}")


def main() -> int:
    global BASE
    ap = argparse.ArgumentParser()
    ap.add_argument("--hone", default=str(ROOT / "target" / "release" / "hone"))
    ap.add_argument("--model", required=True, help="the base model GGUF")
    ap.add_argument("--base-id", default=BASE, help="the id the server gives that model")
    ap.add_argument("--skip-fine-tune", action="store_true", help="leave out the fine-tuning job")
    ap.add_argument("--keep-adapter", type=Path, help="copy the tool job's adapter here")
    args = ap.parse_args()
    BASE = args.base_id
    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        server = start_server(args.hone, args.model, Path(home), port)
        try:
            client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY)
            run(client)
            run_tools(client)
            if not args.skip_fine_tune:
                job_id = run_fine_tune(client)
                if args.keep_adapter:
                    keep_adapter(Path(home), job_id, args.keep_adapter)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print("structured outputs and tools: all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
