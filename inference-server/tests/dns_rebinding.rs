//! Fetching by URL compares resolved addresses, not host names (issue 18, finding 15): an
//! allowed name that answered a public address when the server started and answers
//! loopback now is refused and nothing is connected to; a name whose addresses are internal
//! is fetched from exactly the address checked; a name answering the metadata service's
//! link-local address is refused.
//!
//! The DNS answers come from [`ScriptedDns`], a small stand-in for a DNS server under an
//! attacker's control: it answers each query with the next address of a script and a zero
//! TTL, which is how a rebinding attack works (see "Protecting Browsers from DNS
//! Rebinding Attacks", Jackson et al., CCS 2007). Everything else is real: the allowlist,
//! the HTTP client and its connections, and an image server on loopback.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use sightline_server::image_source::{ImageSource, SourceError};
use sightline_server::pinned_dns::{Lookup, Refused};

/// Answers each query for a name with the next address of its script (the last one
/// repeats); an empty script answers an error, as a name that does not exist does.
struct ScriptedDns {
    scripts: Mutex<HashMap<String, Vec<&'static str>>>,
}

impl ScriptedDns {
    fn new(scripts: &[(&str, &[&'static str])]) -> Arc<ScriptedDns> {
        Arc::new(ScriptedDns {
            scripts: Mutex::new(
                scripts
                    .iter()
                    .map(|(name, answers)| (name.to_string(), answers.to_vec()))
                    .collect(),
            ),
        })
    }
}

impl Lookup for ScriptedDns {
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        let mut scripts = self.scripts.lock().expect("lock");
        let answer = scripts.get_mut(host).and_then(|script| {
            let next = *script.first()?;
            if script.len() > 1 {
                script.remove(0);
            }
            Some(next)
        });
        let result = match answer {
            Some("") | None => Err(io::Error::new(io::ErrorKind::NotFound, "no such name")),
            Some(ip) => Ok(vec![ip.parse().expect("an address")]),
        };
        Box::pin(async move { result })
    }
}

/// An image server on loopback counting the requests it gets; its port.
async fn image_server() -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/images/{name}",
        get(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                b"image bytes".to_vec()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, hits)
}

fn source(host: &str, port: u16, dns: Arc<ScriptedDns>) -> ImageSource {
    ImageSource::with_lookup(
        &[format!("http://{host}:{port}/images")],
        1024,
        Duration::from_secs(5),
        dns,
    )
    .expect("an allowlist")
}

#[tokio::test]
async fn a_name_rebound_from_public_to_loopback_is_refused_and_never_connected() {
    let (port, hits) = image_server().await;
    let dns = ScriptedDns::new(&[("images.example.com", &["93.184.216.34", "127.0.0.1"])]);
    let images = source("images.example.com", port, dns);
    images.learn().await;
    let url = format!("http://images.example.com:{port}/images/a.png");
    let err = images.fetch(&url).await.expect_err("refused");
    assert!(
        matches!(err, SourceError::Address(Refused::Rebound)),
        "{err:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached loopback");
}

#[tokio::test]
async fn an_internal_name_is_fetched_from_exactly_the_checked_address() {
    let (port, hits) = image_server().await;
    // Not a name the machine's resolver knows: only the checked address can be reached.
    let dns = ScriptedDns::new(&[("upload.sightline.internal", &["127.0.0.1"])]);
    let images = source("upload.sightline.internal", port, dns);
    images.learn().await;
    let url = format!("http://upload.sightline.internal:{port}/images/a.png");
    let bytes = images.fetch(&url).await.expect("fetched");
    assert_eq!(&bytes[..], b"image bytes");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn metadata_addresses_and_names_learned_late_follow_the_same_rules() {
    let (port, hits) = image_server().await;
    let dns = ScriptedDns::new(&[
        ("meta.example.com", &["169.254.169.254"]),
        // No answer at start-up: its first use fixes its network (internal here).
        ("late.example.com", &["", "127.0.0.1"]),
    ]);
    let images = ImageSource::with_lookup(
        &[
            format!("http://meta.example.com:{port}/images"),
            format!("http://late.example.com:{port}/images"),
        ],
        1024,
        Duration::from_secs(5),
        dns,
    )
    .expect("an allowlist");
    images.learn().await;
    let err = images
        .fetch(&format!("http://meta.example.com:{port}/images/a.png"))
        .await
        .expect_err("refused");
    assert!(matches!(err, SourceError::Address(_)), "{err:?}");
    let bytes = images
        .fetch(&format!("http://late.example.com:{port}/images/a.png"))
        .await
        .expect("learned at first use");
    assert_eq!(&bytes[..], b"image bytes");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
