#!/usr/bin/env python3
"""Writes the tool-calling task of examples/tools/ (deterministic: seed 7).

    python3 examples/tools/make_data.py

- train.jsonl: 100 SFT conversations over four tools (single calls, parallel
  calls, calls followed by the tool result and a final answer, and turns that
  need no call);
- heldout.jsonl: 30 `hone eval` cases with `expected_tool_calls` (names and
  values that appear in no training line, some phrasings too);
- heldout_strict.jsonl: the same cases with every tool `strict: true`, so
  `hone eval` decodes calls held to the tools' schemas (the grammar run);
- heldout_required.jsonl: the same cases with `tool_choice: "required"`: the
  answer must be calls, held to the schemas (the forced grammar run; the no-call
  cases then fail by design);
- tools_sdk.jsonl: 10 short lines for the SDK fine-tuning job
  (tests/sdk/structured.py);
- extract_train.jsonl / extract_heldout.jsonl: a structured-extraction task
  (a person's name, age and city as JSON): 60 training conversations and 20
  held-out cases with `expected_schema` and `expected_json`.

See README.md here for the rules the answers follow.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM = "You are a helpful assistant. Use the tools when they help; otherwise answer directly."

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "convert_currency",
        "description": "Convert an amount of money between currencies.",
        "parameters": {"type": "object", "properties": {
            "amount": {"type": "number"},
            "from_currency": {"type": "string", "description": "ISO code, e.g. USD"},
            "to_currency": {"type": "string", "description": "ISO code, e.g. EUR"}},
            "required": ["amount", "from_currency", "to_currency"],
            "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "set_reminder",
        "description": "Set a reminder for today at a 24-hour time.",
        "parameters": {"type": "object", "properties": {
            "text": {"type": "string"},
            "time": {"type": "string", "description": "HH:MM, 24-hour"}},
            "required": ["text", "time"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "lookup_contact",
        "description": "Find a person's phone number and email in the address book.",
        "parameters": {"type": "object", "properties": {
            "name": {"type": "string"}},
            "required": ["name"], "additionalProperties": False}}},
]

TRAIN_CITIES = ["Paris", "Tokyo", "Berlin", "Madrid", "Toronto", "Sydney", "Cairo", "Oslo",
                "Lima", "Seoul", "Dublin", "Nairobi", "Vienna", "Chicago", "Mumbai", "Prague"]
HELD_CITIES = ["Lisbon", "Helsinki", "Denver", "Hanoi", "Zurich", "Santiago", "Krakow"]
TRAIN_CUR = [("USD", "EUR"), ("EUR", "GBP"), ("GBP", "JPY"), ("USD", "CAD"), ("AUD", "USD"),
             ("CHF", "EUR"), ("EUR", "USD"), ("JPY", "USD"), ("CAD", "GBP")]
HELD_CUR = [("SEK", "USD"), ("USD", "INR"), ("NZD", "EUR"), ("MXN", "USD"), ("EUR", "PLN")]
TRAIN_PEOPLE = ["Alice Martin", "Bob Chen", "Carla Diaz", "David Okafor", "Emma Novak",
                "Farid Haddad", "Grace Kim", "Hugo Silva", "Ines Moreau", "Jonas Berg"]
HELD_PEOPLE = ["Priya Raman", "Tomas Lindqvist", "Wanjiru Mwangi", "Oscar Pereira"]
TRAIN_TASKS = ["call the dentist", "take out the trash", "water the plants", "pay rent",
               "pick up the kids", "send the invoice", "buy milk", "stretch", "book the car service",
               "check the oven"]
HELD_TASKS = ["renew my passport", "feed the cat", "submit the timesheet", "call grandma"]
# (said, written): times as people say them, and as the tool wants them.
TRAIN_TIMES = [("09:30", "09:30"), ("7pm", "19:00"), ("14:15", "14:15"), ("8am", "08:00"),
               ("noon", "12:00"), ("6:45pm", "18:45"), ("10:00", "10:00"), ("5pm", "17:00")]
HELD_TIMES = [("3pm", "15:00"), ("11:20", "11:20"), ("7:30am", "07:30"), ("21:05", "21:05")]

WEATHER_ASK = ["What's the weather in {c}?", "How is the weather in {c} right now?",
               "Is it raining in {c}?", "weather {c}", "Tell me the current weather in {c}.",
               "Do I need a jacket in {c} today?"]
WEATHER_UNIT = ["What's the temperature in {c} in {u}?", "Weather in {c}, please, in {u}."]
CUR_ASK = ["Convert {a} {f} to {t}.", "How much is {a} {f} in {t}?", "{a} {f} to {t}",
           "What would {a} {f} be in {t}?"]
REM_ASK = ["Remind me to {x} at {s}.", "Set a reminder at {s} to {x}.",
           "Can you remind me at {s} that I need to {x}?"]
CONTACT_ASK = ["What's {n}'s phone number?", "Find {n} in my contacts.",
               "I need the email address of {n}.", "Look up {n} for me."]
# Phrasings only the held-out cases use.
HELD_ASK = {
    "weather": ["I'm flying to {c} tonight; what's the weather like there?"],
    "currency": ["I have {a} {f}. How many {t} is that?"],
    "reminder": ["Please ping me at {s} to {x}."],
    "contact": ["Get me the contact details for {n}."],
}

NO_CALL = [
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("Tell me a short joke.", "Why did the scarecrow win an award? Because he was outstanding in his field."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What does HTTP stand for?", "HTTP stands for Hypertext Transfer Protocol."),
    ("Can you book me a flight to Rome?", "I can't book flights: my tools cover weather, currency conversion, reminders and contacts."),
    ("Thanks, that's all!", "You're welcome! Have a great day."),
    ("What is 12 times 8?", "12 times 8 is 96."),
    ("Translate 'good morning' into Spanish.", "'Good morning' in Spanish is 'buenos días'."),
    ("Who wrote Pride and Prejudice?", "Pride and Prejudice was written by Jane Austen."),
    ("How do I reverse a list in Python?", "Use my_list.reverse() to reverse it in place, or my_list[::-1] for a reversed copy."),
    ("Order me a pizza.", "I can't order food: my tools cover weather, currency conversion, reminders and contacts."),
    ("What's a good name for a goldfish?", "How about Bubbles, Goldie or Captain Fin?"),
    ("Hi!", "Hello! How can I help you today?"),
    ("What is the boiling point of water at sea level?", "Water boils at 100 °C (212 °F) at sea level."),
    ("Explain what a tool call is in one sentence.", "A tool call is a structured request the assistant makes so that an external function runs and returns its result."),
    ("Play some music.", "I can't play music: my tools cover weather, currency conversion, reminders and contacts."),
    ("How many continents are there?", "There are seven continents."),
    ("What's the opposite of 'ancient'?", "The opposite of 'ancient' is 'modern'."),
    ("Send a text message to my mom.", "I can't send messages, but I can look up her contact details if you tell me her name."),
    ("Is a tomato a fruit?", "Yes: botanically a tomato is a fruit, though it is cooked like a vegetable."),
]
HELD_NO_CALL = [
    "What is the largest planet in the solar system?",
    "Write a haiku about autumn.",
    "Can you call a taxi for me?",
    "What's 15% of 200?",
    "Good night!",
]


def call(name, args):
    return {"name": name, "arguments": args}


def weather(rng, cities, held=False):
    c = rng.choice(cities)
    if rng.random() < 0.25:
        u = rng.choice(["celsius", "fahrenheit"])
        return rng.choice(WEATHER_UNIT).format(c=c, u=u), [call("get_weather", {"city": c, "unit": u})]
    asks = WEATHER_ASK + (HELD_ASK["weather"] if held else [])
    return rng.choice(asks).format(c=c), [call("get_weather", {"city": c})]


def currency(rng, pairs, held=False):
    f, t = rng.choice(pairs)
    a = rng.choice([20, 50, 75, 100, 250, 1200, 19.99, 5000, 42.5])
    asks = CUR_ASK + (HELD_ASK["currency"] if held else [])
    q = rng.choice(asks).format(a=a, f=f, t=t)
    return q, [call("convert_currency", {"amount": a, "from_currency": f, "to_currency": t})]


def reminder(rng, tasks, times, held=False):
    x = rng.choice(tasks)
    s, w = rng.choice(times)
    asks = REM_ASK + (HELD_ASK["reminder"] if held else [])
    return rng.choice(asks).format(x=x, s=s), [call("set_reminder", {"text": x, "time": w})]


def contact(rng, people, held=False):
    n = rng.choice(people)
    asks = CONTACT_ASK + (HELD_ASK["contact"] if held else [])
    return rng.choice(asks).format(n=n), [call("lookup_contact", {"name": n})]


def parallel(rng, cities, pairs, people):
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.sample(cities, 2)
        q = rng.choice(["What's the weather in {a} and in {b}?", "Compare the weather in {a} and {b}.",
                        "weather in {a} and {b}"]).format(a=a, b=b)
        return q, [call("get_weather", {"city": a}), call("get_weather", {"city": b})]
    if kind == 1:
        c = rng.choice(cities)
        f, t = rng.choice(pairs)
        q = f"What's the weather in {c}, and how much is 100 {f} in {t}?"
        return q, [call("get_weather", {"city": c}),
                   call("convert_currency", {"amount": 100, "from_currency": f, "to_currency": t})]
    a, b = rng.sample(people, 2)
    q = rng.choice(["Find {a} and {b} in my contacts.", "I need the numbers of {a} and {b}."]).format(a=a, b=b)
    return q, [call("lookup_contact", {"name": a}), call("lookup_contact", {"name": b})]


def fake_result(c):
    a = c["arguments"]
    if c["name"] == "get_weather":
        return {"city": a["city"], "temperature": 18, "unit": a.get("unit", "celsius"), "sky": "cloudy"}
    if c["name"] == "convert_currency":
        return {"amount": round(a["amount"] * 1.1, 2), "currency": a["to_currency"]}
    if c["name"] == "set_reminder":
        return {"ok": True, "time": a["time"]}
    return {"name": a["name"], "phone": "+1 555 0100", "email": a["name"].split()[0].lower() + "@example.com"}


def summary(calls):
    parts = []
    for c in calls:
        r = fake_result(c)
        if c["name"] == "get_weather":
            deg = "°C" if r["unit"] == "celsius" else "°F"
            parts.append(f"It is {r['temperature']}{deg} and cloudy in {r['city']}.")
        elif c["name"] == "convert_currency":
            parts.append(f"That is {r['amount']} {r['currency']}.")
        elif c["name"] == "set_reminder":
            parts.append(f"Done: I'll remind you at {r['time']}.")
        else:
            parts.append(f"{r['name']}: {r['phone']}, {r['email']}.")
    return " ".join(parts)


def wire_calls(calls, k):
    return [{"id": f"call_{k}_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
            for i, c in enumerate(calls)]


def train_line(q, calls, k, with_result):
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
    if not calls:
        raise ValueError("use no_call_line")
    wire = wire_calls(calls, k)
    msgs.append({"role": "assistant", "content": None, "tool_calls": wire})
    if with_result:
        for w, c in zip(wire, calls):
            msgs.append({"role": "tool", "tool_call_id": w["id"], "content": json.dumps(fake_result(c))})
        msgs.append({"role": "assistant", "content": summary(calls)})
    return {"messages": msgs, "tools": TOOLS}


def no_call_line(q, a):
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                         {"role": "assistant", "content": a}], "tools": TOOLS}


def make_train(rng):
    lines = []
    makers = [lambda: weather(rng, TRAIN_CITIES), lambda: currency(rng, TRAIN_CUR),
              lambda: reminder(rng, TRAIN_TASKS, TRAIN_TIMES), lambda: contact(rng, TRAIN_PEOPLE)]
    seen = set()
    for k in range(80):
        while True:
            if k < 60:
                q, calls = makers[k % 4]()
            else:
                q, calls = parallel(rng, TRAIN_CITIES, TRAIN_CUR, TRAIN_PEOPLE)
            if q.lower() not in seen:
                break
        seen.add(q.lower())
        lines.append(train_line(q, calls, k, with_result=(k % 3 == 0)))
    for q, a in NO_CALL:
        lines.append(no_call_line(q, a))
    rng.shuffle(lines)
    return lines


def make_heldout(rng):
    cases = []
    makers = [lambda: weather(rng, HELD_CITIES, True), lambda: currency(rng, HELD_CUR, True),
              lambda: reminder(rng, HELD_TASKS, HELD_TIMES, True), lambda: contact(rng, HELD_PEOPLE, True)]
    seen = set()
    while len(cases) < 20:
        q, calls = makers[len(cases) % 4]()
        if q in seen:
            continue
        seen.add(q)
        cases.append((q, calls))
    while len(cases) < 25:
        q, calls = parallel(rng, HELD_CITIES, HELD_CUR, HELD_PEOPLE)
        if q in seen:
            continue
        seen.add(q)
        cases.append((q, calls))
    cases += [(q, []) for q in HELD_NO_CALL]
    out = []
    for i, (q, calls) in enumerate(cases):
        out.append({"id": f"tools-{i + 1:02}",
                    "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                    "tools": TOOLS, "expected_tool_calls": calls})
    return out


def strict(case):
    c = json.loads(json.dumps(case))
    for t in c["tools"]:
        t["function"]["strict"] = True
    return c


def required(case):
    c = json.loads(json.dumps(case))
    c["tool_choice"] = "required"
    return c


def write(name, rows):
    with open(HERE / name, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


EXTRACT_SYSTEM = "Extract the person's name, age and city from the text. Answer with JSON only."
EXTRACT_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"], "additionalProperties": False}
EXTRACT_SAY = ["{n} is {a} years old and lives in {c}.", "Meet {n}, a {a}-year-old from {c}.",
               "{c} resident {n} turned {a} last week.", "I'm {n}; I'm {a} and I live in {c}.",
               "After years abroad, {n} ({a}) settled in {c}.",
               "Our new colleague {n} is {a}. She commutes from {c}.",
               "{n}, aged {a}, was born and raised in {c}."]
EXTRACT_TRAIN_NAMES = ["Maria Lopez", "Kenji Sato", "Olga Petrova", "Samuel Adeyemi", "Lena Fischer",
                       "Rahul Mehta", "Chloe Dubois", "Mateo Rossi", "Aisha Bello", "Noah Williams",
                       "Sofia Andersson", "Yuki Tanaka"]
EXTRACT_HELD_NAMES = ["Fatima Zahra", "Lucas Martin", "Ingrid Holm", "Diego Herrera", "Mei Lin"]
EXTRACT_TRAIN_CITIES = ["Porto", "Osaka", "Kyiv", "Lagos", "Munich", "Pune", "Lyon", "Turin",
                        "Accra", "Leeds", "Malmo", "Sapporo"]
EXTRACT_HELD_CITIES = ["Bergen", "Cordoba", "Gdansk", "Tbilisi", "Perth"]


def extraction(rng, names, cities, n, say):
    rows = []
    seen = set()
    while len(rows) < n:
        name, city, age = rng.choice(names), rng.choice(cities), rng.randrange(19, 80)
        text = rng.choice(say).format(n=name, a=age, c=city)
        if text in seen:
            continue
        seen.add(text)
        rows.append((text, {"name": name, "age": age, "city": city}))
    return rows


def make_extraction(rng):
    train = [{"messages": [{"role": "system", "content": EXTRACT_SYSTEM},
                           {"role": "user", "content": t},
                           {"role": "assistant", "content": json.dumps(want)}]}
             for t, want in extraction(rng, EXTRACT_TRAIN_NAMES, EXTRACT_TRAIN_CITIES, 60, EXTRACT_SAY[:5])]
    held = [{"id": f"extract-{i + 1:02}",
             "messages": [{"role": "system", "content": EXTRACT_SYSTEM}, {"role": "user", "content": t}],
             "expected_schema": EXTRACT_SCHEMA, "expected_json": want}
            for i, (t, want) in enumerate(
                extraction(rng, EXTRACT_HELD_NAMES, EXTRACT_HELD_CITIES, 20, EXTRACT_SAY))]
    return train, held


def main():
    rng = random.Random(7)
    train = make_train(rng)
    held = make_heldout(rng)
    write("train.jsonl", train)
    write("heldout.jsonl", held)
    write("heldout_strict.jsonl", [strict(c) for c in held])
    write("heldout_required.jsonl", [required(c) for c in held])
    sdk = [l for l in train if any(m.get("tool_calls") for m in l["messages"])][:10]
    write("tools_sdk.jsonl", sdk)
    ex_train, ex_held = make_extraction(random.Random(11))
    write("extract_train.jsonl", ex_train)
    write("extract_heldout.jsonl", ex_held)


if __name__ == "__main__":
    main()
