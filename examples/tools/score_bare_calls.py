#!/usr/bin/env python3
"""Reads every JSON object with a "name" in an answer (tags, fences or bare) as a call,
and scores it against the case's expected_tool_calls (order-free): how docs/tools.md's
'read outside hone' columns are counted.

Usage: score_bare_calls.py CASES.jsonl REPORT.json  (REPORT from `hone eval --json`, first run)
"""
import json, sys

def objects(text):
    dec = json.JSONDecoder(); i = 0; out = []
    while True:
        j = text.find('{', i)
        if j < 0: return out
        try:
            obj, end = dec.raw_decode(text, j)
        except ValueError:
            i = j + 1; continue
        if isinstance(obj, dict) and 'name' in obj: out.append(obj)
        i = end

cases = [json.loads(l) for l in open(sys.argv[1])]
res = json.load(open(sys.argv[2]))['runs'][0]['results']
right = exact = calls_cases = 0
for case, r in zip(cases, res):
    exp = case.get('expected_tool_calls') or []
    if not exp: continue
    calls_cases += 1
    got = objects(r['output'])
    key = lambda c: c.get('name')
    if sorted(map(key, got)) == sorted(map(key, exp)):
        right += 1
        norm = lambda cs: sorted(json.dumps([c['name'], c.get('arguments')], sort_keys=True) for c in cs)
        exact += norm(got) == norm(exp)
print(f"{sys.argv[2]}: call cases {calls_cases}: right functions {right}, exact arguments {exact}")
