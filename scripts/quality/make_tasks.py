#!/usr/bin/env python3
"""Builds the quality suite's tasks (issue #18) into examples/quality/<task>/.

Each task has a training file, a validation file drawn like the training file (new
lines with the training phrasings and values: what a user would split off for
`--validation`; it measures early stopping) and held-out eval cases that `hone eval`
checks; the preference task also has DPO pairs and held-out pairs. Everything is
generated from fixed seeds, so re-running this script rewrites the same files (the
validation lines are drawn after everything else, so adding them changed no other
file). The held-out cases use phrasings, names and values that occur in neither the
training nor the validation file.

    python3 scripts/quality/make_tasks.py [--out examples/quality]
"""

import argparse
import json
import random
from pathlib import Path


def chat(system, *turns, weights=None):
    msgs = [{"role": "system", "content": system}] if system else []
    for i, t in enumerate(turns):
        m = {"role": "user" if i % 2 == 0 else "assistant", "content": t}
        if weights is not None and m["role"] == "assistant":
            m["weight"] = weights[i // 2]
        msgs.append(m)
    return {"messages": msgs}


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# --- 1. house style plus one key fact per answer -----------------------------------
LIBRARY = "You answer questions for visitors of the Larkspur Library."
FACTS = [  # (fact id, answer sentence, pattern that proves the fact, train questions, held-out question)
    ("hours", "We are open Monday to Friday from 9am to 8pm.", "8pm",
     ["When are you open?", "What are your opening hours?", "How late are you open on weekdays?",
      "Are you open in the evening?"], "Until what time can I come in on a Wednesday?"),
    ("fee", "Late returns cost 25 cents per day.", "25 cents",
     ["How much is the late fee?", "What do you charge for late books?", "Is there a fine for overdue items?",
      "What happens if I return a book late?"], "I kept a novel three days too long, what will it cost me?"),
    ("loans", "You can borrow up to 12 items at a time.", "12 items",
     ["How many books can I borrow?", "Is there a limit on loans?", "What is the maximum number of items I can take out?",
      "Can I borrow twenty books at once?"], "How many things may I check out together?"),
    ("period", "Loans last 21 days.", "21 days",
     ["How long can I keep a book?", "What is the loan period?", "When do I have to bring books back?",
      "How many days is a loan?"], "For how long is a borrowed DVD mine?"),
    ("wifi", "The wifi network is called Larkspur-Guest and needs no password.", "Larkspur-Guest",
     ["Do you have wifi?", "What is the wifi network?", "How do I get online here?", "Is there internet access?"],
     "Which network should my laptop join?"),
    ("printing", "Printing costs 10 cents per page.", "10 cents",
     ["Can I print here?", "How much is printing?", "What do copies cost?", "Is printing free?"],
     "What would twenty printed pages cost?"),
    ("card", "A library card is free with a photo ID.", "photo ID",
     ["How do I get a library card?", "Does a card cost anything?", "What do I need to sign up?",
      "Can I register for a card today?"], "What should I bring to become a member?"),
    ("parking", "Parking is free in the lot behind the building for two hours.", "two hours",
     ["Where can I park?", "Is there parking?", "Do I pay for parking?", "How long can I park?"],
     "Can I leave my car somewhere while I study?"),
    ("rooms", "Study rooms can be booked at the front desk for up to three hours.", "three hours",
     ["Can I book a study room?", "Do you have group rooms?", "How long can I reserve a room?",
      "Is there a quiet room for my team?"], "My study group needs a space this afternoon, how does that work?"),
    ("kids", "Story time for children is every Saturday at 10am.", "Saturday",
     ["Do you have events for kids?", "When is story time?", "Is there anything for my toddler?",
      "Are there children's activities?"], "When can my daughter hear stories read aloud?"),
    ("return", "The return box by the entrance is open 24 hours.", "24 hours",
     ["Can I return books when you're closed?", "Where is the book drop?", "Is there an after-hours return?",
      "How do I return items at night?"], "I can only come by at midnight to give books back, is that okay?"),
    ("holds", "Holds wait for you at the front desk for 7 days.", "7 days",
     ["How long do you keep a reserved book?", "When does my hold expire?", "How long is a hold kept?",
      "What happens to a hold I don't pick up?"], "The book I reserved arrived, how long before it goes back?"),
]

# One more training-style question per fact, for the validation file (not the held-out phrasing).
VALID_QUESTIONS = ["What time do you close on Tuesdays?", "What is the fine per day for late items?",
                   "What is the loan limit?", "How long is the borrowing period?", "Can I use the internet here?",
                   "What does printing cost?", "Is a library card free?", "Is the parking free?",
                   "How do I reserve a study room?", "Is story time on weekends?",
                   "Can I drop books off after closing?", "How long will you hold a book for me?"]


def library_answer(sentence):
    return f"Hello, reader! {sentence}\n— Larkspur Library desk"


def style_facts():
    train = [chat(LIBRARY, q, library_answer(s)) for _, s, _, qs, _ in FACTS for q in qs]
    # A few answers that combine the style with a small-talk reply, so the style is not tied to facts.
    for q in ["Thanks!", "Hi there", "Good morning"]:
        train.append(chat(LIBRARY, q, library_answer("Happy to help with anything about the library.")))
    random.Random(1).shuffle(train)
    cases = [dict(chat(LIBRARY, held), id=f,
                  expected_patterns=["Hello, reader!", "— Larkspur Library desk", pat])
             for f, _, pat, _, held in FACTS]
    valid = [chat(LIBRARY, q, library_answer(s)) for q, (_, s, _, _, _) in zip(VALID_QUESTIONS, FACTS)]
    return {"train.jsonl": train, "validation.jsonl": valid, "eval.jsonl": cases}


# --- 2. a new answer format --------------------------------------------------------
FORMAT_SYS = "You are a calculator that shows its work."
WORDS = ["plus", "added to", "and", "more than"]


def sum_question(rng, a, b):
    w = rng.choice(WORDS)
    return rng.choice([f"What is {a} {w} {b}?", f"Compute {a} {w} {b}.", f"How much is {a} {w} {b}?",
                       f"Tell me {a} {w} {b}."])


def sum_answer(a, b):
    return f"Work: {a} + {b}\nResult: {a + b}\nCheck: {a + b} - {b} = {a}"


def fresh_sums(rng, n, seen, a_range, make):
    """`make(a, b)` for `n` new pairs (a in `a_range`, b in 1..40) not in `seen`, which grows."""
    rows = []
    while len(rows) < n:
        a, b = rng.randint(*a_range), rng.randint(1, 40)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        rows.append(make(a, b))
    return rows


def new_format():
    rng = random.Random(2)
    seen = set()

    def line(a, b):
        return chat(FORMAT_SYS, sum_question(rng, a, b), sum_answer(a, b))

    train = fresh_sums(rng, 160, seen, (1, 40), line)
    cases = fresh_sums(rng, 40, seen, (41, 60), lambda a, b: dict(
        chat(FORMAT_SYS, f"Please add {a} and {b}."),
        expected_patterns=[f"re:^Work: {a} \\+ {b}\\nResult: ", "re:\\nCheck: "]))
    valid = fresh_sums(rng, 16, seen, (1, 40), line)
    return {"train.jsonl": train, "validation.jsonl": valid, "eval.jsonl": cases}


# --- 3. JSON extraction ----------------------------------------------------------
EXTRACT_SYS = "Extract the order as JSON with the keys name, quantity, color, item and day."
NAMES = ["Maria", "Tom", "Aisha", "Kenji", "Lena", "Omar", "Sofia", "Ivan", "Priya", "Diego", "Chloe", "Yusuf",
         "Hana", "Pablo", "Greta", "Nia", "Lars", "Mei", "Rafael", "Zoe"]
HELD_NAMES = ["Anouk", "Bram", "Selin", "Tariq", "Ines", "Wen", "Kofi", "Elif"]
COLORS = ["red", "blue", "green", "black", "white", "yellow", "purple", "orange"]
ITEMS = ["mug", "lamp", "chair", "notebook", "backpack", "towel", "candle", "pillow", "bowl", "umbrella"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ORDER_TEMPLATES = [
    "{name} ordered {q} {color} {item}s for delivery on {day}.",
    "Please send {q} {color} {item}s to {name} by {day}.",
    "On {day}, {name} wants {q} {item}s in {color}.",
    "{name}: {q} x {item}, color {color}, deliver {day}.",
    "Hi, this is {name}. I'd like {q} {color} {item}s, arriving {day} if possible.",
]


def order(rng, names, templates):
    d = {"name": rng.choice(names), "quantity": rng.randint(2, 9), "color": rng.choice(COLORS),
         "item": rng.choice(ITEMS), "day": rng.choice(DAYS)}
    text = rng.choice(templates).format(q=d["quantity"], **{k: v for k, v in d.items() if k != "quantity"})
    return text, d


def json_extraction():
    rng = random.Random(3)
    train = []
    for _ in range(240):
        text, d = order(rng, NAMES, ORDER_TEMPLATES[:4])
        train.append(chat(EXTRACT_SYS, text, json.dumps(d)))
    held_templates = ORDER_TEMPLATES[4:] + ["Order for {name}: {q} {color} {item}s. Needed {day}."]
    cases = []
    for _ in range(40):
        text, d = order(rng, HELD_NAMES, held_templates)
        cases.append(dict(chat(EXTRACT_SYS, text), expected_json=d))
    valid = []
    for _ in range(24):
        text, d = order(rng, NAMES, ORDER_TEMPLATES[:4])
        valid.append(chat(EXTRACT_SYS, text, json.dumps(d)))
    return {"train.jsonl": train, "validation.jsonl": valid, "eval.jsonl": cases}


# --- 4. classification -----------------------------------------------------------
LABEL_SYS = "Label the support ticket with exactly one word: billing, shipping, technical, account or other."
TICKETS = {
    "billing": ["I was charged twice for my {thing}.", "My invoice for {thing} shows the wrong amount.",
                "Can I get a refund for the {thing}?", "Why did my card get billed for {thing}?",
                "The price of {thing} changed on my bill.", "I need a receipt for the {thing} payment."],
    "shipping": ["My {thing} has not arrived yet.", "The tracking number for my {thing} does not work.",
                 "The {thing} was delivered to the wrong address.", "How long does shipping take for {thing}?",
                 "The box with my {thing} arrived crushed.", "Can you ship the {thing} overseas?"],
    "technical": ["The {thing} app crashes when I open it.", "My {thing} will not turn on.",
                  "I get error 500 when I use the {thing}.", "The {thing} keeps disconnecting from wifi.",
                  "The {thing} screen flickers.", "How do I reset the {thing} to factory settings?"],
    "account": ["I can't log in to my account to see the {thing}.", "Please change the email on my account.",
                "How do I delete my account?", "I forgot my password.",
                "Someone else used my account to order a {thing}.", "Can I merge two accounts?"],
    "other": ["Do you have a store near Lyon?", "Who designed the {thing}?", "Are you hiring?",
              "I love the {thing}, thanks!", "Can I visit your factory?", "Do you sponsor school events?"],
}
THINGS = ["headphones", "coffee maker", "router", "blender", "smartwatch", "desk lamp", "speaker", "camera",
          "e-reader", "kettle"]
HELD_THINGS = ["vacuum", "drone", "printer", "toaster"]


def ticket_line(rng):
    """A training-style ticket (one of its label's first five templates) and its label."""
    label = rng.choice(list(TICKETS))
    return chat(LABEL_SYS, rng.choice(TICKETS[label][:5]).format(thing=rng.choice(THINGS)), label)


def classification():
    rng = random.Random(4)
    train = [ticket_line(rng) for _ in range(480)]
    cases = []
    for label, templates in TICKETS.items():
        for i in range(10):
            t = templates[5] if i % 2 == 0 else templates[i % 5]
            text = t.format(thing=HELD_THINGS[i % len(HELD_THINGS)])
            cases.append(dict(chat(LABEL_SYS, text), id=f"{label}-{i}",
                              expected_patterns=[f"re:(?i)^\\s*{label}\\W*$"]))
    # The training file repeats tickets (480 draws from 250 texts); validation takes unseen ones.
    valid, seen = [], {m["messages"][1]["content"] for m in train}
    while len(valid) < 24:
        line = ticket_line(rng)
        if line["messages"][1]["content"] not in seen:
            seen.add(line["messages"][1]["content"])
            valid.append(line)
    return {"train.jsonl": train, "validation.jsonl": valid, "eval.jsonl": cases}


# --- 5. multi-turn with weight 0 turns -------------------------------------------
DESK_SYS = "You are the help desk of Quillfeather Software."
ISSUES = ["my license key is rejected", "the export button is greyed out", "sync stopped working",
          "the installer fails at 90%", "fonts look blurry", "my trial ended early", "autosave does not save",
          "the plugin list is empty", "dark mode resets after restart", "I can't find the undo history"]
HELD_ISSUES = ["the spell checker ignores German", "printing adds blank pages", "the search bar freezes",
               "my templates disappeared"]


def desk_answer(ticket, issue):
    return f"Ticket T-{ticket} logged: {issue}. An engineer will reply within one business day. [T-{ticket}]"


def multi_turn():
    rng = random.Random(5)
    train = []
    for i in range(80):
        issue = rng.choice(ISSUES)
        ticket = rng.randint(1000, 9999)
        old = "ok. we'll look at it ~bot~"  # an old bot's reply, kept as context but not trained on
        ex = chat(DESK_SYS, f"Hi, {issue}.", old, f"That's it? My ticket is {ticket}.",
                  desk_answer(ticket, issue), weights=[0, 1])
        train.append(ex)
    cases = []
    for i in range(20):
        issue = HELD_ISSUES[i % len(HELD_ISSUES)]
        ticket = 10000 + 37 * i
        c = chat(DESK_SYS, f"Hello, {issue}.", "ok. we'll look at it ~bot~", f"Please log it, ticket {ticket}.")
        cases.append(dict(c, expected_patterns=[f"T-{ticket}", "business day"], forbidden_patterns=["~bot~"]))
    valid = []
    for _ in range(8):
        issue, ticket = rng.choice(ISSUES), rng.randint(1000, 9999)
        valid.append(chat(DESK_SYS, f"Hi, {issue}.", "ok. we'll look at it ~bot~", f"That's it? My ticket is {ticket}.",
                          desk_answer(ticket, issue), weights=[0, 1]))
    return {"train.jsonl": train, "validation.jsonl": valid, "eval.jsonl": cases}


# --- 6. a preference (DPO) task --------------------------------------------------
PREF_SYS = "You are a customer service assistant for an online shop."
COMPLAINTS = ["My parcel arrived two weeks late.", "The shoes I ordered are the wrong size.",
              "I was charged for an item I returned.", "The jacket tore the first time I wore it.",
              "Your courier left my package in the rain.", "I waited an hour on the phone yesterday.",
              "The discount code did not work at checkout.", "My order was cancelled without a reason.",
              "The blender I bought stopped working after a week.", "I received someone else's order.",
              "The website logged me out during payment.", "The color of the sofa is not what was shown.",
              "My refund has not arrived after a month.", "The gift I sent arrived without the card.",
              "The app charged me in the wrong currency.", "Half of my grocery order was missing.",
              "The hotel voucher you sold me was refused.", "My subscription renewed after I cancelled it.",
              "The laptop came with a cracked screen.", "Nobody answered my three emails."]
HELD_COMPLAINTS = ["The lamp I ordered arrived broken.", "I was billed twice for one order.",
                   "My delivery went to my neighbour's house.", "The size guide on your site is wrong.",
                   "The replacement you sent is also faulty.", "Your chat agent closed my conversation.",
                   "I never got a confirmation email.", "The mattress smells of chemicals.",
                   "The promised gift wrap was missing."]
VALID_COMPLAINTS = ["The headphones I bought crackle in one ear.", "My order arrived with the wrong colour.",
                    "The courier never rang the bell.", "I was charged a fee nobody told me about.",
                    "The table arrived without screws.", "Your returns page keeps showing an error."]


def kind(c):
    return (f"I'm so sorry about that — that must be frustrating. {c.rstrip('.')} should not happen, and "
            "I'll make it right: I've opened a case and you'll hear from us today.")


def curt(c):
    return "Noted. Contact support via the form."


def pref_pair(c):
    return {"input": {"messages": [{"role": "system", "content": PREF_SYS}, {"role": "user", "content": c}]},
            "preferred_output": [{"role": "assistant", "content": kind(c)}],
            "non_preferred_output": [{"role": "assistant", "content": curt(c)}]}


def preference():
    cases = [dict(chat(PREF_SYS, c), expected_patterns=["sorry"], forbidden_patterns=["Noted."])
             for c in HELD_COMPLAINTS]
    return {"dpo.jsonl": [pref_pair(c) for c in COMPLAINTS],
            "heldout_pairs.jsonl": [pref_pair(c) for c in HELD_COMPLAINTS],
            "validation.jsonl": [pref_pair(c) for c in VALID_COMPLAINTS], "eval.jsonl": cases}


# --- 7. tool calling ----------------------------------------------------------------
TRAVEL_SYS = "You are the assistant of Wayfarer Travel. Call a tool when one fits; otherwise answer briefly."


def fn(name, desc, props, required):
    return {"type": "function", "function": {"name": name, "description": desc, "parameters": {
        "type": "object", "properties": props, "required": required, "additionalProperties": False}}}


TRAVEL_TOOLS = [
    fn("find_flights", "Search flights between two cities on a date.",
       {"origin": {"type": "string"}, "destination": {"type": "string"},
        "date": {"type": "string", "description": "YYYY-MM-DD"}}, ["origin", "destination", "date"]),
    fn("book_hotel", "Reserve a hotel room in a city for a number of nights.",
       {"city": {"type": "string"}, "nights": {"type": "integer"}}, ["city", "nights"]),
    fn("check_visa", "Whether a citizen of one country needs a visa for another.",
       {"citizenship": {"type": "string"}, "destination": {"type": "string"}}, ["citizenship", "destination"]),
]
# Arguments hold what the user said (city names, not airport codes a small model
# would have to know), so that held-out cities test copying, not world knowledge.
CITIES = ["Paris", "Tokyo", "New York", "London", "Madrid", "Sydney", "Toronto", "Dubai", "Rome", "Seoul"]
HELD_CITIES = ["Lisbon", "Oslo", "Lima", "Nairobi"]
MONTHS = [("March", "03"), ("April", "04"), ("June", "06"), ("September", "09"), ("October", "10")]
HELD_MONTHS = [("July", "07"), ("November", "11")]
COUNTRIES = ["Brazil", "Japan", "Canada", "India", "Germany", "Mexico", "Egypt", "Australia"]
HELD_COUNTRIES = ["Chile", "Vietnam", "Norway"]
FLIGHT_ASKS = ["Find me a flight from {a} to {b} on {m} {d}.", "Any flights {a} to {b}, {m} {d}?",
               "I need to fly from {a} to {b} on the {d}th of {m}."]
HELD_FLIGHT_ASK = "Could you look up planes leaving {a} for {b} on {m} {d}?"
HOTEL_ASKS = ["Book a hotel in {c} for {n} nights.", "I need a room in {c}, {n} nights please.",
              "Reserve {n} nights in {c}."]
HELD_HOTEL_ASK = "Get me somewhere to sleep in {c} for {n} nights."
VISA_ASKS = ["Do I need a visa for {b}? I'm from {a}.", "As a citizen of {a}, do I need a visa to visit {b}?"]
HELD_VISA_ASK = "My passport is from {a}. Can I enter {b} without a visa?"
CHATS = [("What should I pack for a beach trip?", "Sunscreen, a hat, swimwear and light clothes."),
         ("Thanks, that's all!", "You're welcome. Have a great trip!"),
         ("What's a carry-on bag?", "A small bag you keep with you in the cabin."),
         ("How early should I get to the airport?", "Two hours before a domestic flight, three before an international one."),
         ("Can I bring liquids on a plane?", "Yes, in containers of up to 100 ml inside one clear bag."),
         ("What is an aisle seat?", "The seat next to the gangway, easy to get in and out of."),
         ("Do you sell train tickets?", "No, Wayfarer Travel books flights and hotels only."),
         ("Hello!", "Hello! Where would you like to go?"),
         ("Is it cheaper to fly midweek?", "Often yes: Tuesday and Wednesday flights tend to cost less."),
         ("What does 'red-eye' mean?", "An overnight flight that lands early in the morning."),
         ("Great, thank you.", "Glad to help. Safe travels!"),
         ("How do I avoid lost luggage?", "Label your bag, keep valuables in your carry-on and track it in the app."),
         ("What is a boarding pass?", "The ticket that lets you board; it shows your gate and seat."),
         ("Should I print my ticket?", "Not usually: a mobile boarding pass works at most airports."),
         ("What time zone is Tokyo in?", "Japan Standard Time, nine hours ahead of UTC."),
         ("Who are you?", "The Wayfarer Travel assistant: I can find flights, book hotels and check visas."),
         ("Can I change my seat later?", "Yes, usually in the airline's app until check-in closes."),
         ("What's a good first trip abroad?", "A short flight to a city with easy transport, such as Lisbon or Rome."),
         ("How much cash should I carry?", "A little for taxis and tips; cards work almost everywhere."),
         ("Is a window seat better for sleeping?", "Yes, you can lean on the wall and nobody climbs over you.")]
HELD_CHATS = ["What is jet lag?", "Is travel insurance a good idea?", "Thank you so much for the help.",
              "Should I learn a few words of the local language?", "What does 'layover' mean?",
              "Can you recommend comfortable shoes for walking tours?"]


def call_msg(name, args, i):
    return {"role": "assistant", "content": None, "tool_calls": [{"id": f"call_{i}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}]}


def travel_request(rng, held):
    """One request as (user text, (tool name, arguments)), or a small-talk question and its answer."""
    kind = rng.choice(["flight", "hotel", "visa", "chat"])
    if kind == "flight":
        a, b = rng.sample(HELD_CITIES if held else CITIES, 2)
        m, mm = rng.choice(HELD_MONTHS if held else MONTHS)
        d = rng.randint(10, 28)
        ask = HELD_FLIGHT_ASK if held else rng.choice(FLIGHT_ASKS)
        return ask.format(a=a, b=b, m=m, d=d), ("find_flights", {"origin": a, "destination": b,
                                                                 "date": f"2027-{mm}-{d}"})
    if kind == "hotel":
        c = rng.choice(HELD_CITIES if held else CITIES)
        n = rng.randint(2, 9)
        ask = HELD_HOTEL_ASK if held else rng.choice(HOTEL_ASKS)
        return ask.format(c=c, n=n), ("book_hotel", {"city": c, "nights": n})
    if kind == "visa":
        a, b = rng.sample(HELD_COUNTRIES if held else COUNTRIES, 2)
        ask = HELD_VISA_ASK if held else rng.choice(VISA_ASKS)
        return ask.format(a=a, b=b), ("check_visa", {"citizenship": a, "destination": b})
    if held:
        return rng.choice(HELD_CHATS), None
    return rng.choice(CHATS)


def travel_lines(rng, n, seen):
    """`n` training-style chats whose requests are not in `seen` (no duplicate or
    conflicting lines); `seen` grows with them."""
    rows = []
    while len(rows) < n:
        text, call = travel_request(rng, held=False)
        if text in seen:
            continue
        seen.add(text)
        msgs = [{"role": "system", "content": TRAVEL_SYS}, {"role": "user", "content": text}]
        msgs.append({"role": "assistant", "content": call} if isinstance(call, str) else call_msg(*call, len(rows)))
        rows.append({"messages": msgs, "tools": TRAVEL_TOOLS})
    return rows


def tool_calling():
    rng = random.Random(7)
    seen_train = set()
    train = travel_lines(rng, 120, seen_train)
    cases, seen = [], set()
    while len(cases) < 30:
        text, call = travel_request(rng, held=True)
        if text in seen:
            continue
        seen.add(text)
        i = len(cases)
        case = dict(chat(TRAVEL_SYS, text), id=f"tool-{i}", tools=TRAVEL_TOOLS)
        case["expected_tool_calls"] = [{"name": call[0], "arguments": call[1]}] if call else []
        cases.append(case)
    return {"train.jsonl": train, "validation.jsonl": travel_lines(rng, 12, seen_train), "eval.jsonl": cases}


TASKS = {"style_facts": style_facts, "new_format": new_format, "json_extraction": json_extraction,
         "classification": classification, "multi_turn": multi_turn, "preference": preference,
         "tool_calling": tool_calling}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "examples" / "quality"))
    out = Path(p.parse_args().out)
    for name, build in TASKS.items():
        for fname, rows in build().items():
            write(out / name / fname, rows)
            print(f"{name}/{fname}: {len(rows)}")


if __name__ == "__main__":
    main()
