#!/usr/bin/env python3
"""Writes the three demonstration sets of docs/decide.md (deterministic: run it
again and the files are the same). Standard library only.

knowledge/  facts that live in documents; training saw the old documents
            (docs_v1/), the documents changed afterwards (docs/).
style/      a house style for support answers with three rules that depend on
            the question (train + held-out cases), and
both/       the same house style, answering from documents the fine-tune
            never saw (docs/); the style adapter is trained on
            style/train.jsonl, which also holds answers written from
            retrieved excerpts (other documents) in hone's RAG format.
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
# hone-retrieve's format_context (crates/hone-retrieve/src/context.rs): the
# style fine-tune learns to answer from excerpts shown exactly like this.
RAG_HEADER = "Use the following excerpts from the documents to answer when they are relevant.\n"


def rag_system(excerpts):
    out = RAG_HEADER
    for i, (name, text) in enumerate(excerpts):
        out += f"\n[{i + 1}] {name} (part 1)\n{text}\n"
    return out


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_doc(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text.strip() + "\n")


def chat(q, a, system=None):
    m = [] if system is None else [{"role": "system", "content": system}]
    return {"messages": m + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


# --- (a) knowledge: (file, topic sentence template, old, new, training questions, eval question)
FACTS = [
    ("support.md", "The Quillmark support line is {}.", "555-0142", "555-0199",
     ["What is the Quillmark support line?", "Which number do I call for Quillmark support?",
      "Give me the Quillmark support phone number.", "How do I phone Quillmark support?",
      "Quillmark support number?"],
     "What phone number reaches Quillmark support?"),
    ("office.md", "The Quillmark head office is in {}.", "Lisbon", "Porto",
     ["Where is the Quillmark head office?", "In which city is Quillmark's head office?",
      "Which city hosts the Quillmark head office?", "Where is Quillmark headquartered?",
      "Quillmark head office city?"],
     "In what city can I visit the Quillmark head office?"),
    ("pricing.md", "The Quillmark Pro plan costs {} per month.", "$12", "$15",
     ["How much is the Quillmark Pro plan?", "What does Quillmark Pro cost per month?",
      "Price of the Quillmark Pro plan?", "What is the monthly price of Quillmark Pro?",
      "How much do I pay for Quillmark Pro each month?"],
     "What is the monthly cost of the Quillmark Pro plan?"),
    ("releases.md", "The next Quillmark release is code-named {}.", "Bluefin", "Redfin",
     ["What is the code name of the next Quillmark release?", "Next Quillmark release code name?",
      "What is the upcoming Quillmark release called?", "Which code name does the next Quillmark release have?",
      "Tell me the next Quillmark release's code name."],
     "What code name was given to the next Quillmark release?"),
    ("returns.md", "Quillmark accepts returns within {}.", "30 days", "45 days",
     ["How long do I have to return a Quillmark order?", "What is the Quillmark return window?",
      "Within how many days can I return a Quillmark purchase?", "Quillmark return period?",
      "How many days does Quillmark allow for returns?"],
     "How many days does the Quillmark return policy give me?"),
    ("team.md", "The chief executive of Quillmark is {}.", "Mara Ilves", "Tomas Reed",
     ["Who is the CEO of Quillmark?", "Who runs Quillmark?", "Name the Quillmark chief executive.",
      "Who leads Quillmark as CEO?", "Quillmark CEO?"],
     "Who is Quillmark's chief executive?"),
    ("limits.md", "The largest file you can upload to Quillmark is {}.", "2 GB", "5 GB",
     ["What is the Quillmark upload limit?", "How big a file can I upload to Quillmark?",
      "Maximum upload size on Quillmark?", "What is the largest Quillmark upload?",
      "How large may a Quillmark upload be?"],
     "What is the biggest file Quillmark lets me upload?"),
    ("backups.md", "Quillmark backs up every account daily at {}.", "02:00 UTC", "04:00 UTC",
     ["When does Quillmark run its backups?", "At what time are Quillmark backups made?",
      "What time is the daily Quillmark backup?", "When are Quillmark accounts backed up?",
      "Quillmark backup time?"],
     "At what hour does the daily Quillmark backup happen?"),
]
# Filler so each document is a paragraph, not a one-liner (retrieval has to rank).
FILLER = {
    "support.md": "Support agents answer in English and Portuguese. Chat support is open on weekdays.",
    "office.md": "Visitors sign in at the front desk. The office has parking for bicycles.",
    "pricing.md": "The Free plan has no monthly cost. Teams of more than ten people get a discount.",
    "releases.md": "Releases ship every quarter. Release notes are published on the blog.",
    "returns.md": "Returned items must be unused. Refunds go back to the original payment card.",
    "team.md": "The company has forty employees. The board meets twice a year.",
    "limits.md": "Uploads resume after a lost connection. Images are converted to WebP.",
    "backups.md": "Backups are kept for ninety days. Restores are requested from the settings page.",
}


def knowledge():
    d = os.path.join(HERE, "knowledge")
    train, cases = [], []
    for name, tmpl, old, new, qs, eval_q in FACTS:
        write_doc(os.path.join(d, "docs_v1", name), f"{tmpl.format(old)} {FILLER[name]}")
        write_doc(os.path.join(d, "docs", name), f"{tmpl.format(new)} {FILLER[name]}")
        train += [chat(q, tmpl.format(old)) for q in qs]
        cases.append({
            "messages": [{"role": "user", "content": eval_q}],
            "expected_patterns": [new],
            "forbidden_patterns": [old],
            "ideal": tmpl.format(new),
        })
    random.Random(1).shuffle(train)
    write_jsonl(os.path.join(d, "train.jsonl"), train)
    write_jsonl(os.path.join(d, "cases.jsonl"), cases)


# --- (b) style and (c) style + facts
# The house style has three rules that depend on the question, so that a few
# examples show only some of their combinations:
#   1. greet the customer by name when they give it ("Hi Priya!"), else "Hi there!";
#   2. when they say it is urgent, say "We're on it." right after the greeting;
#   3. end with "— The Hone Team".
# Held-out cases use topics and names that appear in no training line, and each
# case checks the three rules for its own combination (never the answer's facts).
STYLE_CLOSE = "— The Hone Team"
URGENT_REPLY = "We're on it."
STYLE_PROMPT = (
    "You answer support questions in the Hone house style. Greet the customer by name when "
    "they give it (\"Hi Priya!\"), otherwise start with \"Hi there!\". When they say it is "
    "urgent, write \"We're on it.\" right after the greeting. Answer in one short sentence, "
    "and end with \"— The Hone Team\"."
)
TOPICS = [  # (topic, where it is managed)
    ("password", "Security"), ("email address", "Account"), ("username", "Profile"),
    ("billing plan", "Billing"), ("profile photo", "Profile"), ("language", "Preferences"),
    ("notification settings", "Notifications"), ("two-factor login", "Security"),
    ("payment card", "Billing"), ("invoices", "Billing"), ("team members", "Team"),
    ("API key", "Developers"), ("time zone", "Preferences"), ("dark mode", "Appearance"),
    ("data export", "Privacy"), ("connected apps", "Integrations"),
    ("display name", "Profile"), ("storage usage", "Usage"), ("webhooks", "Developers"),
    ("keyboard shortcuts", "Preferences"),
]
HELD_OUT_TOPICS = {"display name", "storage usage", "webhooks", "keyboard shortcuts"}
QUESTIONS = ["How do I change my {t}?", "Where can I find my {t}?", "Can you help me with my {t}?",
             "Is it possible to update my {t}?"]
TRAIN_NAMES = ["Sam", "Priya", "Lena", "Omar", "Chen", "Ana", "Tom", "Fatima", "Jonas", "Maya",
               "Luca", "Nadia", "Ravi", "Elif", "Pablo", "Hana"]
HELD_OUT_NAMES = ["Ingrid", "Kofi", "Mateo", "Yuki", "Bram", "Zara", "Oskar", "Leila"]
NAME_INTROS = ["I'm {n}.", "This is {n}.", "{n} here."]
URGENT_NOTES = ["It's urgent!", "I need this fixed ASAP.", "This is urgent, please help."]
# Every (named, urgent) combination, for each topic.
COMBOS = [(False, False), (True, False), (False, True), (True, True)]


def styled(sentence, name=None, urgent=False):
    """`sentence` in the house style, for a customer with this name (or none)."""
    greeting = f"Hi {name}!" if name else "Hi there!"
    return " ".join([greeting] + ([URGENT_REPLY] if urgent else []) + [sentence, STYLE_CLOSE])


def style_case(question, topic, section, name, urgent, rng):
    """One question in the style task and its house-style answer."""
    parts = [rng.choice(NAME_INTROS).format(n=name)] if name else []
    parts.append(question)
    if urgent:
        parts.append(rng.choice(URGENT_NOTES))
    answer = styled(f"You can manage your {topic} under Settings, then {section}.", name, urgent)
    return " ".join(parts), answer


def style_checks(name, urgent):
    """The three rules, for a case with this name (or none) and urgency."""
    expected = [f"re:^Hi {name}!" if name else "re:^Hi there!", r"re:— The Hone Team\.?$"]
    if urgent:
        expected.append(r"re:^Hi [A-Za-z]+! We're on it\.")
    forbidden = [] if urgent else ["We're on it"]
    return expected, forbidden


# (c): facts the style fine-tune learns to answer from excerpts (training), and
# the facts of both/docs it never saw (eval). (file, fact sentence, question, value)
TRAIN_DOC_FACTS = [
    ("hours.md", "The Hone help desk is open from 8:00 to 18:00 on weekdays.", "When is the Hone help desk open?", "8:00 to 18:00"),
    ("trial.md", "The Hone free trial lasts 21 days.", "How long is the Hone free trial?", "21 days"),
    ("seats.md", "A Hone team plan includes 12 seats.", "How many seats come with a Hone team plan?", "12 seats"),
    ("region.md", "Hone stores European data in Frankfurt.", "Where does Hone store European data?", "Frankfurt"),
    ("sla.md", "Hone promises 99.9% uptime.", "What uptime does Hone promise?", "99.9%"),
    ("retention.md", "Deleted Hone projects can be restored for 14 days.", "How long can I restore a deleted Hone project?", "14 days"),
    ("discount.md", "Students get 40% off Hone.", "What discount do students get on Hone?", "40%"),
    ("mobile.md", "The Hone mobile app needs Android 11 or later.", "Which Android version does the Hone app need?", "Android 11"),
]
EVAL_DOC_FACTS = [
    ("refunds.md", "Hone refunds are paid within 6 business days.", "How fast are Hone refunds paid?", "6 business days"),
    ("languages.md", "The Hone app is available in 9 languages.", "In how many languages is the Hone app available?", "9 languages"),
    ("limits.md", "A Hone workspace can hold 300 projects.", "How many projects fit in a Hone workspace?", "300 projects"),
    ("office.md", "Hone's office is in Tallinn.", "Where is Hone's office?", "Tallinn"),
    ("support.md", "Hone phone support answers on 555-0173.", "Which number is Hone phone support?", "555-0173"),
    ("founded.md", "Hone was founded in 2019.", "When was Hone founded?", "2019"),
    ("api.md", "The Hone API allows 600 requests per minute.", "What is the Hone API rate limit?", "600 requests"),
    ("backups.md", "Hone keeps backups for 35 days.", "How long does Hone keep backups?", "35 days"),
]
DOC_FILLER = "This page is part of the Hone handbook. Ask the help desk if anything is unclear."


def style_and_both():
    rng = random.Random(2)
    s, b = os.path.join(HERE, "style"), os.path.join(HERE, "both")
    train, cases = [], []
    names = {True: iter(HELD_OUT_NAMES * 2), False: iter(TRAIN_NAMES * 4)}
    for topic, section in TOPICS:
        held_out = topic in HELD_OUT_TOPICS
        questions = rng.sample(QUESTIONS, len(QUESTIONS))
        for q, (named, urgent) in zip(questions, COMBOS):
            name = next(names[held_out]) if named else None
            prompt, answer = style_case(q.format(t=topic), topic, section, name, urgent, rng)
            if held_out:
                expected, forbidden = style_checks(name, urgent)
                cases.append({"messages": [{"role": "user", "content": prompt}],
                              "expected_patterns": expected, "forbidden_patterns": forbidden,
                              "ideal": answer})
            else:
                train.append(chat(prompt, answer))
    # Answers from retrieved excerpts, in the RAG format (with a distractor).
    for i, (name, fact, q, _value) in enumerate(TRAIN_DOC_FACTS):
        other = TRAIN_DOC_FACTS[(i + 3) % len(TRAIN_DOC_FACTS)]
        excerpts = [(name, f"{fact} {DOC_FILLER}"), (other[0], f"{other[1]} {DOC_FILLER}")]
        rng.shuffle(excerpts)
        for question in (q, q.replace("Hone", "the Hone service") if "Hone" in q else q + " Thanks."):
            train.append(chat(question, styled(fact), rag_system(excerpts)))
    rng.shuffle(train)
    write_jsonl(os.path.join(s, "train.jsonl"), train)
    write_jsonl(os.path.join(s, "cases.jsonl"), cases)
    with open(os.path.join(s, "prompt.txt"), "w") as f:
        f.write(STYLE_PROMPT + "\n")
    for name, fact, _q, _v in EVAL_DOC_FACTS:
        write_doc(os.path.join(b, "docs", name), f"{fact} {DOC_FILLER}")
    expected, forbidden = style_checks(None, False)
    write_jsonl(os.path.join(b, "cases.jsonl"), [{
        "messages": [{"role": "user", "content": q}],
        "expected_patterns": expected + [value],
        "forbidden_patterns": forbidden,
        "ideal": styled(fact),
    } for _name, fact, q, value in EVAL_DOC_FACTS])


if __name__ == "__main__":
    knowledge()
    style_and_both()
