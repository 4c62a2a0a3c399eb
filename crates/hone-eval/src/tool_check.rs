//! Function-calling cases: a case's `expected_tool_calls` (the calls the
//! answer must make, or `[]` for none), read from the output as serving
//! reads it (`hone_text::parse_tool_calls`), and the rates over a run:
//! right function, exact arguments, arguments as a subset, malformed calls.
//! (The grammar a case is decoded with is [`crate::case_grammar`]'s.)

use hone_text::{parse_tool_calls, ParsedToolCall};
use serde::Serialize;
use serde_json::{Map, Value};

/// How a case compares arguments: `exact` (the default: equal as JSON,
/// numbers by value) or `subset` (the expected fields are there with these
/// values; the answer may add others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArgumentsMatch {
    #[default]
    Exact,
    Subset,
}

/// One expected call.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedCall {
    pub name: String,
    pub arguments: Map<String, Value>,
}

/// A case's `expected_tool_calls` and `tool_arguments`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedToolCalls {
    /// In any order (parallel calls need not come in the listed order);
    /// empty: the answer must make no call.
    pub calls: Vec<ExpectedCall>,
    pub arguments: ArgumentsMatch,
}

impl ExpectedToolCalls {
    /// Reads `expected_tool_calls` (`[{"name": ..., "arguments": {...}}]`,
    /// arguments as an object or a JSON string of one, as OpenAI writes
    /// them; absent is `{}`) and `tool_arguments` (`"exact"`/`"subset"`).
    pub fn parse(calls: Value, mode: Option<Value>) -> Result<Self, String> {
        let arguments = match mode.as_ref().map(|m| m.as_str()) {
            None | Some(Some("exact")) => ArgumentsMatch::Exact,
            Some(Some("subset")) => ArgumentsMatch::Subset,
            Some(_) => {
                return Err("`tool_arguments` must be \"exact\" or \"subset\"".into());
            }
        };
        let Value::Array(items) = calls else {
            return Err(format!(
                "`expected_tool_calls` must be a list of {{\"name\", \"arguments\"}} (empty: no call), got {calls}"
            ));
        };
        let calls = items
            .into_iter()
            .enumerate()
            .map(|(i, c)| expected_call(c).map_err(|e| format!("`expected_tool_calls`[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExpectedToolCalls { calls, arguments })
    }

    /// The expectation as shown in reports.
    pub fn describe(&self) -> String {
        if self.calls.is_empty() {
            return "tool calls: none".into();
        }
        let calls: Vec<String> = self
            .calls
            .iter()
            .map(|c| format!("{}({})", c.name, Value::Object(c.arguments.clone())))
            .collect();
        let mode = match self.arguments {
            ArgumentsMatch::Exact => "",
            ArgumentsMatch::Subset => " (arguments: subset)",
        };
        format!("tool calls: {}{mode}", calls.join(", "))
    }
}

fn expected_call(v: Value) -> Result<ExpectedCall, String> {
    let Value::Object(mut o) = v else {
        return Err("each call must be an object with `name` and `arguments`".into());
    };
    let name = match o.remove("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => n,
        _ => return Err("`name` must be a non-empty string".into()),
    };
    let arguments = match o.remove("arguments") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(Value::String(s)) => match serde_json::from_str(&s) {
            Ok(Value::Object(m)) => m,
            _ => return Err("`arguments` as a string must hold a JSON object".into()),
        },
        Some(other) => return Err(format!("`arguments` must be an object, got {other}")),
    };
    if let Some(k) = o.keys().next() {
        return Err(format!(
            "unknown key `{k}` (a call has `name` and `arguments`)"
        ));
    }
    Ok(ExpectedCall { name, arguments })
}

/// What the answer's calls were against the expected ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ToolCallOutcome {
    /// The functions called are the expected ones (as a multiset; no call
    /// when none is expected).
    pub right_function: bool,
    /// Each expected call is matched by its own call with the same name and
    /// equal arguments, and there are no other calls.
    pub exact_arguments: bool,
    /// As `exact_arguments`, but each call's arguments need only contain
    /// the expected fields.
    pub subset_arguments: bool,
    /// The answer opened a call the parser refused (it then reads as text,
    /// as serving answers it).
    pub malformed: bool,
}

/// Checks `output`'s calls against `expected`; the failed-check lines for
/// the report come with it.
pub fn check_tool_calls(
    expected: &ExpectedToolCalls,
    output: &str,
) -> (ToolCallOutcome, Vec<String>) {
    let parsed = parse_tool_calls(output);
    let got = &parsed.calls;
    let want = &expected.calls;
    let outcome = ToolCallOutcome {
        right_function: same_names(want, got),
        exact_arguments: one_to_one(want, got, ArgumentsMatch::Exact),
        subset_arguments: one_to_one(want, got, ArgumentsMatch::Subset),
        malformed: parsed.malformed,
    };
    let mut failed = Vec::new();
    if outcome.malformed {
        failed.push("malformed tool call (read as text)".into());
    }
    let shown = || -> String {
        let calls: Vec<String> = got
            .iter()
            .map(|c| format!("{}({})", c.name, c.arguments))
            .collect();
        if calls.is_empty() {
            "no call".into()
        } else {
            calls.join(", ")
        }
    };
    let args_ok = match expected.arguments {
        ArgumentsMatch::Exact => outcome.exact_arguments,
        ArgumentsMatch::Subset => outcome.subset_arguments,
    };
    if !outcome.right_function {
        failed.push(format!(
            "tool calls: expected {}, got {}",
            names(want),
            shown()
        ));
    } else if !args_ok {
        failed.push(format!("tool call arguments differ: got {}", shown()));
    }
    (outcome, failed)
}

fn names(calls: &[ExpectedCall]) -> String {
    if calls.is_empty() {
        return "no call".into();
    }
    let n: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
    n.join(", ")
}

fn same_names(want: &[ExpectedCall], got: &[ParsedToolCall]) -> bool {
    let mut a: Vec<&str> = want.iter().map(|c| c.name.as_str()).collect();
    let mut b: Vec<&str> = got.iter().map(|c| c.name.as_str()).collect();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// Whether the calls pair up one to one, each expected call with a call of
/// its name whose arguments match. A small search: calls are few.
fn one_to_one(want: &[ExpectedCall], got: &[ParsedToolCall], mode: ArgumentsMatch) -> bool {
    fn search(
        want: &[ExpectedCall],
        got: &[ParsedToolCall],
        used: &mut Vec<bool>,
        mode: ArgumentsMatch,
    ) -> bool {
        let Some((w, rest)) = want.split_first() else {
            return true;
        };
        for (i, g) in got.iter().enumerate() {
            if used[i] || g.name != w.name || !arguments_match(&w.arguments, &g.arguments, mode) {
                continue;
            }
            used[i] = true;
            if search(rest, got, used, mode) {
                return true;
            }
            used[i] = false;
        }
        false
    }
    want.len() == got.len() && search(want, got, &mut vec![false; got.len()], mode)
}

fn arguments_match(want: &Map<String, Value>, got: &Value, mode: ArgumentsMatch) -> bool {
    let Value::Object(got) = got else {
        return false;
    };
    match mode {
        ArgumentsMatch::Exact => json_eq(&Value::Object(want.clone()), &Value::Object(got.clone())),
        ArgumentsMatch::Subset => want
            .iter()
            .all(|(k, v)| got.get(k).is_some_and(|g| json_eq(v, g))),
    }
}

/// The function-calling rates of one run, over the cases with
/// `expected_tool_calls`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ToolCallSummary {
    pub cases: usize,
    pub right_function: usize,
    pub exact_arguments: usize,
    pub subset_arguments: usize,
    pub malformed: usize,
    pub right_function_rate: f64,
    pub exact_arguments_rate: f64,
    pub subset_arguments_rate: f64,
}

impl ToolCallSummary {
    /// Over the cases' outcomes (`None` for cases without
    /// `expected_tool_calls`); `None` when no case has one.
    pub fn of<'a>(cases: impl IntoIterator<Item = Option<&'a ToolCallOutcome>>) -> Option<Self> {
        let outcomes: Vec<&ToolCallOutcome> = cases.into_iter().flatten().collect();
        if outcomes.is_empty() {
            return None;
        }
        let count = |f: &dyn Fn(&ToolCallOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
        let cases = outcomes.len();
        let right_function = count(&|o| o.right_function);
        let exact_arguments = count(&|o| o.exact_arguments);
        let subset_arguments = count(&|o| o.subset_arguments);
        Some(ToolCallSummary {
            cases,
            right_function,
            exact_arguments,
            subset_arguments,
            malformed: count(&|o| o.malformed),
            right_function_rate: ratio(right_function, cases),
            exact_arguments_rate: ratio(exact_arguments, cases),
            subset_arguments_rate: ratio(subset_arguments, cases),
        })
    }

    /// The table and HTML rows: (label, cell).
    pub fn rows(s: Option<&Self>) -> [(&'static str, String); 3] {
        let cell = |n: usize, of: usize| match s {
            Some(_) => format!("{:.1}% ({n}/{of})", ratio(n, of) * 100.0),
            None => "-".into(),
        };
        let s0 = s.copied();
        let (c, f, e, m) = s0
            .map(|s| (s.cases, s.right_function, s.exact_arguments, s.malformed))
            .unwrap_or_default();
        [
            ("right function", cell(f, c)),
            ("exact arguments", cell(e, c)),
            (
                "malformed calls",
                s0.map(|_| format!("{m}/{c}")).unwrap_or_else(|| "-".into()),
            ),
        ]
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Structural equality where numbers compare by value (`1` equals `1.0`).
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
#[path = "tool_check_tests.rs"]
mod tests;
