//! The load command's invariants, on a smaller run: the three split services under mixed
//! load at concurrency 32 answer every request 2xx, and reading the store back finds
//! exactly one record per acknowledged pipeline image (re-sent images included) and every
//! acknowledged upload intact. No timing is asserted; `make load` prints the figures.

use sightline_e2e::load::{self, LoadOptions, Targets};
use sightline_e2e::split::Split;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_on_the_split_services_loses_and_doubles_nothing() {
    let Some(split) = Split::start(None) else {
        return;
    };
    let pid = |p: &sightline_e2e::process::ServerProcess| {
        (p.role.clone(), p.pid().expect("the process runs"))
    };
    let targets = Targets {
        upload: split.upload.url(""),
        recognize: split.recognize.url(""),
        store: split.store.url(""),
        processes: vec![pid(&split.upload), pid(&split.recognize), pid(&split.store)],
    };
    let options = LoadOptions {
        requests: 400,
        concurrency: 32,
        warmup: 40,
    };
    let report = load::run(&targets, options).await.expect("the load runs");
    eprintln!("{}", report.markdown());
    let violations = report.violations();
    assert!(violations.is_empty(), "{violations:#?}\n{}", split.logs());
    // 160 pipelines, of which 9 re-send an earlier image; 80 uploads.
    assert_eq!(report.pipeline_images, 151);
    assert_eq!(report.pipeline_acknowledged, 151);
    assert_eq!(report.records, 151);
    assert_eq!(report.uploads_acknowledged, 80);
    assert!(report.rss.iter().all(|s| s.at_end_kib.is_some()));
}
