//! `GET /metrics`: the counters and histograms move on real requests over
//! the tiny model, the text parses as the Prometheus format (with the
//! independent `prometheus-parse` crate and a line check), and the route is
//! admin keys only unless `--public-metrics`.

use axum::body::Body;
use axum::http::Request;
use prometheus_parse::{Scrape, Value as Metric};
use serde_json::json;

use crate::chat::{ask, chat, chat_app, sse_frames};
use hone_serve::auth::create_key;

use crate::common::{TestApp, BASE};

/// Parses the answer of `GET /metrics`, checking its content type and
/// that every sample line is `name{labels} value`.
async fn scrape(t: &TestApp) -> Scrape {
    let r = t.get("/metrics").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = String::from_utf8(r.body).unwrap();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        check_sample_line(line);
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// `name{k="v",...} value`, with a metric name as Prometheus allows and a
/// float (or ±Inf) value.
fn check_sample_line(line: &str) {
    let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
    let ok_value = value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value);
    assert!(ok_value, "bad value in {line:?}");
    let name = series.split('{').next().unwrap();
    let ok_name = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    assert!(ok_name, "bad name in {line:?}");
    if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
        assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
    }
}

/// The value of the sample `metric` whose labels include all of `labels`.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
            Metric::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            Metric::Summary(_) => panic!("no summaries here"),
        })
}

#[tokio::test]
async fn counters_and_histograms_move_on_real_requests() {
    let a = chat_app(2);
    let before = scrape(&a.t).await;
    assert_eq!(value(&before, "hone_requests_total", &[]), None);
    assert_eq!(value(&before, "hone_requests_capacity", &[]), Some(4.0));
    assert_eq!(
        value(&before, "hone_fine_tuning_jobs", &[("state", "queued")]),
        Some(0.0)
    );

    let plain = chat(&a.t, ask(BASE, json!({"max_tokens": 6}))).await;
    assert_eq!(plain.status, 200);
    let plain_usage = plain.json()["usage"].clone();
    let streamed = chat(
        &a.t,
        ask(
            BASE,
            json!({"max_tokens": 6, "stream": true, "stream_options": {"include_usage": true}}),
        ),
    )
    .await;
    assert_eq!(streamed.status, 200);
    let (frames, done) = sse_frames(&streamed.body);
    assert!(done);
    let stream_usage = frames.last().unwrap()["usage"].clone();
    let missing = chat(&a.t, ask("no-such-model", json!({}))).await;
    assert_eq!(missing.status, 404);

    let s = scrape(&a.t).await;
    let ok = [("model", BASE), ("status", "200")];
    assert_eq!(value(&s, "hone_requests_total", &ok), Some(2.0));
    let unknown = [("model", "other"), ("status", "404")];
    assert_eq!(value(&s, "hone_requests_total", &unknown), Some(1.0));
    let tokens =
        |k: &str| (plain_usage[k].as_u64().unwrap() + stream_usage[k].as_u64().unwrap()) as f64;
    let model = [("model", BASE)];
    assert_eq!(
        value(&s, "hone_prompt_tokens_total", &model),
        Some(tokens("prompt_tokens"))
    );
    assert_eq!(
        value(&s, "hone_generation_tokens_total", &model),
        Some(tokens("completion_tokens"))
    );
    // One first token per request that wrote text; a duration per request.
    let ttft = value(&s, "hone_time_to_first_token_seconds_count", &model).unwrap();
    assert!((1.0..=2.0).contains(&ttft), "{ttft}");
    assert_eq!(
        value(&s, "hone_request_duration_seconds_count", &model),
        Some(2.0)
    );
    assert_eq!(value(&s, "hone_requests_running", &[]), Some(0.0));
    assert_eq!(value(&s, "hone_requests_waiting", &[]), Some(0.0));
}

fn with_key(key: &str) -> Request<Body> {
    Request::get("/metrics")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn metrics_need_an_admin_key_unless_public() {
    let keyed = TestApp::with(|c| c.api_keys = vec!["sk-metrics".into()]);
    let store = keyed.state.store.blocking().clone();
    let (_, admin) = create_key(store.as_ref(), "ops", true).unwrap();
    let (_, project) = create_key(store.as_ref(), "alpha", false).unwrap();
    assert_eq!(keyed.get("/metrics").await.status, 401);
    assert_eq!(keyed.send(with_key(&admin)).await.status, 200);
    assert_eq!(keyed.send(with_key("sk-wrong")).await.status, 401);
    // A project's key (stored, or `--api-key`'s default project) may use
    // the API but not read every project's metrics.
    for key in [project.as_str(), "sk-metrics"] {
        let r = keyed.send(with_key(key)).await;
        assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains("admin key"), "{msg}");
        let models = Request::get("/v1/models")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(keyed.send(models).await.status, 200);
    }

    let public = TestApp::with(|c| {
        c.api_keys = vec!["sk-metrics".into()];
        c.public_metrics = true;
    });
    let s = scrape(&public).await;
    assert_eq!(
        value(&s, "hone_fine_tuning_jobs", &[("state", "running")]),
        Some(0.0)
    );
    // The rest of the API stays behind the key.
    assert_eq!(public.get("/v1/models").await.status, 401);
}
