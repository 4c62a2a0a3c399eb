#!/usr/bin/env python3
"""Writes the prompts of docs/distill.md's demo: short code snippets in ten
languages, each asking "which language is this?". Deterministic: the same
files every run. train_prompts.txt (the teacher answers them and the student
learns from the answers) and heldout_prompts.txt (never trained on)."""
import json
import random
import sys
from pathlib import Path

NAMES = ["total", "count", "items", "user", "price", "score", "name", "limit", "rows", "path",
         "value", "index", "result", "buffer", "config", "token", "cache", "queue"]

SNIPPETS = {
    "python": ["def {f}({a}):\n    return {a} * 2", "for {a} in range(10):\n    print({a})",
               "{a} = [x for x in {b} if x > 0]", "with open('{a}.txt') as f:\n    {b} = f.read()",
               "class {F}:\n    def __init__(self):\n        self.{a} = None"],
    "javascript": ["function {f}({a}) {{\n  return {a} * 2;\n}}", "const {a} = {b}.map(x => x + 1);",
                   "for (let i = 0; i < {a}.length; i++) {{\n  console.log({a}[i]);\n}}",
                   "document.getElementById('{a}').addEventListener('click', () => {{}});",
                   "export const {f} = async ({a}) => await fetch({a});"],
    "rust": ["fn {f}({a}: i32) -> i32 {{\n    {a} * 2\n}}", "let mut {a}: Vec<u32> = Vec::new();",
             "impl {F} {{\n    pub fn new() -> Self {{ Self {{ {a}: 0 }} }}\n}}",
             "match {a} {{\n    Some(x) => x,\n    None => 0,\n}}", "let {a} = {b}.iter().filter(|x| **x > 0).count();"],
    "go": ["func {f}({a} int) int {{\n\treturn {a} * 2\n}}", "{a} := make(map[string]int)",
           "for i := 0; i < len({a}); i++ {{\n\tfmt.Println({a}[i])\n}}",
           "if err != nil {{\n\treturn nil, err\n}}", "type {F} struct {{\n\t{A} string\n}}"],
    "java": ["public int {f}(int {a}) {{\n    return {a} * 2;\n}}",
             "List<String> {a} = new ArrayList<>();", "System.out.println({a});",
             "public class {F} {{\n    private int {a};\n}}",
             "for (String s : {a}) {{\n    System.out.println(s);\n}}"],
    "c": ["int {f}(int {a}) {{\n    return {a} * 2;\n}}", "#include <stdio.h>\nint main(void) {{ printf(\"%d\", {a}); }}",
          "char *{a} = malloc(64 * sizeof(char));", "for (int i = 0; i < n; i++) {{\n    {a}[i] = 0;\n}}",
          "struct {F} {{\n    int {a};\n}};"],
    "sql": ["SELECT {a} FROM {b} WHERE {a} > 10;", "UPDATE {b} SET {a} = 0 WHERE id = 3;",
            "CREATE TABLE {b} (id INTEGER PRIMARY KEY, {a} TEXT);",
            "SELECT COUNT(*) FROM {b} GROUP BY {a};", "DELETE FROM {b} WHERE {a} IS NULL;"],
    "bash": ["for f in *.txt; do\n  echo \"${a}\"\ndone", "if [ -f \"${a}\" ]; then\n  cat \"${a}\"\nfi",
             "{a}=$(ls | wc -l)", "grep -r \"{a}\" . | sort | uniq -c", "export {A}=\"/usr/local/{a}\""],
    "ruby": ["def {f}({a})\n  {a} * 2\nend", "{a}.each do |x|\n  puts x\nend",
             "class {F}\n  attr_reader :{a}\nend", "{a} = {b}.select {{ |x| x > 0 }}",
             "puts \"#{{{a}}} items\""],
    "haskell": ["{f} :: Int -> Int\n{f} {a} = {a} * 2", "main = putStrLn \"{a}\"",
                "{f} xs = map (+1) xs", "data {F} = {F} {{ {a} :: Int }}",
                "{f} [] = 0\n{f} (x:xs) = x + {f} xs"],
}


def render(t: str, rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    f = rng.choice(["compute", "handle", "build", "load", "update", "parse", "scale"]) + "_" + rng.choice(NAMES)
    return t.format(a=a, b=b, f=f, F=f.title().replace("_", ""), A=a.upper())


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    n_train = int(sys.argv[2]) if len(sys.argv) > 2 else 10  # per language
    n_held = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    rng = random.Random(23)
    train, held = [], []
    for lang, templates in SNIPPETS.items():
        seen = set()
        rows = []
        while len(rows) < n_train + n_held:
            s = render(rng.choice(templates), rng)
            if s not in seen:
                seen.add(s)
                rows.append(s)
        train += rows[:n_train]
        held += rows[n_train:]
    rng.shuffle(train)
    rng.shuffle(held)
    ask = "Which programming language is this code written in?\n\n```\n{}\n```"
    for name, rows in [("train_prompts.txt", train), ("heldout_prompts.txt", held)]:
        with open(out / name, "w") as f:
            for s in rows:
                f.write(json.dumps(ask.format(s)) + "\n")
    print(f"{len(train)} training prompts, {len(held)} held-out prompts in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
