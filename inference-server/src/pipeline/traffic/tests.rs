use super::*;

fn traffic(file: Option<PathBuf>) -> Traffic {
    let fallback = Downstream::new(
        "recognize",
        "http://recognize:8080",
        CallPolicy::default(),
        crate::metrics::Metrics::new("").pipeline,
    )
    .expect("a downstream");
    // The hosts these tests' files name (a front door's --traffic-hosts).
    let hosts = ["recognize", "canary", "c", "other-stable"].map(String::from);
    Traffic {
        file,
        hosts: AllowedHosts::parse(&hosts).expect("hosts"),
        ..Traffic::fixed(Arc::new(fallback), FrontDoorMetrics::unregistered())
    }
}

fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).expect("write the traffic file");
}

#[tokio::test]
async fn the_file_applies_changes_keeps_the_last_good_one_and_falls_back_when_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("traffic.json");
    let t = traffic(Some(path.clone()));

    t.reload().await;
    assert_eq!(t.config(), TrafficConfig::stable_only(), "absent");
    assert_eq!(t.stable().base(), "http://recognize:8080");

    write(
        &path,
        r#"{"model":"m","stable":"http://recognize:8080","candidate":"http://canary:8080",
                "candidateWeight":20,"mirrorPercent":10,"revision":"r1"}"#,
    );
    t.reload().await;
    let c = t.config();
    assert_eq!(c.candidate_weight.percent(), 20.0);
    assert!(
        Arc::ptr_eq(&t.stable(), &t.fallback),
        "the same service keeps its client and breaker"
    );
    let canary = t.active().candidate.clone().expect("a candidate");
    assert_eq!(canary.base(), "http://canary:8080");
    assert_eq!(canary.policy().retries, 0);

    // A malformed file changes nothing.
    write(&path, r#"{"model":"m","candidateWeight":"#);
    t.reload().await;
    assert_eq!(t.config(), c);

    // Weights move live; the candidate's service is kept.
    write(
        &path,
        r#"{"model":"m","stable":"http://other-stable:8080","candidate":"http://canary:8080",
                "candidateWeight":150,"mirrorPercent":0}"#,
    );
    t.reload().await;
    assert_eq!(t.config().candidate_weight.percent(), 100.0, "clamped");
    assert_eq!(t.stable().base(), "http://other-stable:8080");
    let same = t.active().candidate.clone().expect("a candidate");
    assert!(Arc::ptr_eq(&same, &canary));

    std::fs::remove_file(&path).expect("remove");
    t.reload().await;
    assert_eq!(t.config(), TrafficConfig::stable_only());
    assert!(Arc::ptr_eq(&t.stable(), &t.fallback));
}

#[test]
fn a_mirror_counts_stables_answer_in_its_budget() {
    let t = traffic(None);
    let answer = Expected::In(Bytes::from(vec![b' '; mirror::MAX_BYTES_IN_FLIGHT]));
    assert_eq!(answer.held_bytes(), mirror::MAX_BYTES_IN_FLIGHT);
    // A 1 KiB body with a 32 MiB answer from stable is over the 32 MiB budget.
    assert!(t.mirrors.admit(1024 + answer.held_bytes()).is_none());
    let known = Expected::Known(Top1::Label("red".into()));
    assert!(t.mirrors.admit(1024 + known.held_bytes()).is_some());
}

#[tokio::test]
async fn a_file_naming_another_host_is_refused_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("traffic.json");
    let t = traffic(Some(path.clone()));
    write(
        &path,
        r#"{"model":"m","candidate":"http://canary:8080","candidateWeight":20}"#,
    );
    t.reload().await;
    let good = t.config();
    write(
        &path,
        r#"{"model":"m","candidate":"http://attacker.example:8080","candidateWeight":100}"#,
    );
    t.reload().await;
    assert_eq!(t.config(), good, "the last good file stays");
    write(&path, r#"{"model":"m","stable":"http://attacker.example"}"#);
    t.reload().await;
    assert_eq!(t.config(), good);
}

#[tokio::test]
async fn a_malformed_file_at_start_means_stable_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("traffic.json");
    write(&path, r#"{"candidateWeight": 50}"#);
    let t = traffic(Some(path));
    t.reload().await;
    assert_eq!(t.config(), TrafficConfig::stable_only());
    assert_eq!(t.route(&t.active()), Route::Stable { mirror: false });
}

#[tokio::test]
async fn a_symlink_swap_is_seen() {
    // What the kubelet does to a mounted ConfigMap: the file is a link through `..data`,
    // which is replaced by a rename.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let version = |name: &str, weight: u32| {
        let d = root.join(name);
        std::fs::create_dir(&d).expect("mkdir");
        write(
            &d.join("traffic.json"),
            &format!(r#"{{"candidate":"http://c:1","candidateWeight":{weight}}}"#),
        );
    };
    version("..v1", 10);
    std::os::unix::fs::symlink("..v1", root.join("..data")).expect("link");
    std::os::unix::fs::symlink("..data/traffic.json", root.join("traffic.json")).expect("link");
    let t = traffic(Some(root.join("traffic.json")));
    t.reload().await;
    assert_eq!(t.config().candidate_weight.percent(), 10.0);
    version("..v2", 30);
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).expect("link");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
    std::fs::remove_dir_all(root.join("..v1")).expect("remove the old version");
    t.reload().await;
    assert_eq!(t.config().candidate_weight.percent(), 30.0);
}
