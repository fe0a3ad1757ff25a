//! Readers for the counters the canary tests check: a process's `/metrics` text, sums of a
//! metric's series selected by labels.

use anyhow::Context;

/// `GET {base}/metrics`.
pub async fn scrape(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .context("GET /metrics")?
        .text()
        .await
        .context("read /metrics")
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.rsplit_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(k, v)| set.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Requests a recognize process answered on its recognition routes (whatever the status).
pub fn recognitions_served(text: &str) -> f64 {
    sum(
        text,
        "sightline_http_requests_total",
        &[("route", "/api/v1/recognize")],
    ) + sum(
        text,
        "sightline_http_requests_total",
        &[("route", "/v2/models/{name}/infer")],
    )
}
