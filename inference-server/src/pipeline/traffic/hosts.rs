//! What the traffic file may point the front door at, and what it sends there.
//!
//! The traffic file is a ConfigMap: whoever may edit it could name any host as `stable`
//! or `candidate` and receive every image — and, before, every caller's API key. So:
//!
//! - its hosts are confined ([`AllowedHosts`]): by default to the namespace of
//!   `--recognize-url` when that is a cluster Service name (`<service>.<namespace>.svc…`,
//!   as the operator writes both), else to `--recognize-url`'s own host (any port: the
//!   loopback canaries of the tests); `--traffic-hosts` replaces the default with a list
//!   of hosts, each exact or `*.<domain>` (one label in place of the `*`). A file naming
//!   another host is refused whole, like a malformed one (the last good one stays);
//! - the caller's credentials (`Authorization`, `X-API-Key`) go to stable only — which
//!   may check them, as a recognize role given keys does — and never to the candidate,
//!   split or mirrored ([`without_credentials`]). In a cluster the model's pods check no
//!   keys (the front door does), so the candidate needs none; a candidate that does, and
//!   so refuses the call (401/403), is counted as failing and stable answers.

use axum::http::{HeaderMap, header};

/// The hosts a traffic file may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts(Vec<Pattern>);

/// An exact host, or `*.<suffix>`: any single label followed by the suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    AnyLabelOf(String),
}

fn normal(host: &str) -> String {
    host.trim()
        .trim_end_matches('.')
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

impl AllowedHosts {
    /// The default for a front door whose stable revision is `recognize_url`: its
    /// namespace's Services when it names one (`<service>.<namespace>.svc[.<domain>]`),
    /// else its host alone.
    pub fn default_for(recognize_url: &str) -> AllowedHosts {
        let host = url::Url::parse(recognize_url)
            .ok()
            .and_then(|u| u.host_str().map(normal))
            .unwrap_or_default();
        let labels: Vec<&str> = host.split('.').collect();
        let pattern = match labels.as_slice() {
            [_, namespace, "svc", ..] if !namespace.is_empty() => {
                Pattern::AnyLabelOf(labels[1..].join("."))
            }
            _ => Pattern::Exact(host),
        };
        AllowedHosts(vec![pattern])
    }

    /// `--traffic-hosts`: hosts, each exact or `*.<domain>`; empty entries skipped.
    pub fn parse(list: &[String]) -> Result<AllowedHosts, String> {
        let mut patterns = Vec::new();
        for entry in list.iter().map(|e| normal(e)).filter(|e| !e.is_empty()) {
            let pattern = match entry.strip_prefix("*.") {
                Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                    Pattern::AnyLabelOf(suffix.to_string())
                }
                None if !entry.contains('*') && !entry.contains('/') && !entry.contains(':')
                    || entry.parse::<std::net::Ipv6Addr>().is_ok() =>
                {
                    Pattern::Exact(entry)
                }
                _ => {
                    return Err(format!(
                        "{entry:?} is not a host or *.domain (no scheme, port or path)"
                    ));
                }
            };
            patterns.push(pattern);
        }
        if patterns.is_empty() {
            return Err("no host given".into());
        }
        Ok(AllowedHosts(patterns))
    }

    /// True when `url`'s host is allowed.
    pub fn allows(&self, url: &str) -> bool {
        let Some(host) = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(normal))
        else {
            return false;
        };
        self.0.iter().any(|p| match p {
            Pattern::Exact(exact) => *exact == host,
            Pattern::AnyLabelOf(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|label| label.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        })
    }
}

/// `headers` without the caller's credentials (for the candidate and mirrors).
pub fn without_credentials(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    headers.remove(header::AUTHORIZATION);
    headers.remove("x-api-key");
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_the_namespace_of_the_stable_service_or_its_host() {
        let cluster = AllowedHosts::default_for("http://lite0-recognize.shop.svc:8080");
        for ok in [
            "http://lite0-recognize-canary.shop.svc:8080",
            "http://LITE0-recognize.shop.svc.:9000/",
        ] {
            assert!(cluster.allows(ok), "{ok}");
        }
        for refused in [
            "http://evil.example:8080",
            "http://x.other.svc:8080",
            "http://a.b.shop.svc:8080",
            "http://shop.svc:8080",
            "http://x.shop.svc.cluster.local:8080",
            "http://127.0.0.1:8080",
        ] {
            assert!(!cluster.allows(refused), "{refused}");
        }
        let long = AllowedHosts::default_for("http://m-recognize.shop.svc.cluster.local");
        assert!(long.allows("http://m-canary.shop.svc.cluster.local:8080"));
        assert!(!long.allows("http://m-canary.shop.svc:8080"));
        let loopback = AllowedHosts::default_for("http://127.0.0.1:40001");
        assert!(loopback.allows("http://127.0.0.1:40002"));
        assert!(!loopback.allows("http://localhost:40002"));
        assert!(!loopback.allows("http://127.0.0.2:40002"));
    }

    #[test]
    fn the_setting_lists_hosts_and_domains() {
        let hosts =
            AllowedHosts::parse(&["localhost".into(), "*.canary.example".into(), " ".into()])
                .expect("hosts");
        assert!(hosts.allows("http://localhost:1"));
        assert!(hosts.allows("https://a.canary.example"));
        assert!(!hosts.allows("https://a.b.canary.example"));
        assert!(!hosts.allows("https://canary.example"));
        for bad in ["http://x", "x:80", "*", "a.*.b"] {
            assert!(AllowedHosts::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(AllowedHosts::parse(&[]).is_err());
        assert!(
            AllowedHosts::parse(&["[::1]".into()])
                .expect("v6")
                .allows("http://[::1]:8")
        );
    }

    #[test]
    fn credentials_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer k".parse().expect("value"));
        h.insert("x-api-key", "k".parse().expect("value"));
        h.insert("x-request-id", "r".parse().expect("value"));
        let out = without_credentials(&h);
        assert_eq!(out.len(), 1);
        assert!(out.contains_key("x-request-id"));
    }
}
