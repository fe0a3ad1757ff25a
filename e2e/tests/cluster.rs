//! Opt-in: the operator against a real Kubernetes cluster (kind, k3d, …). Runs only when
//! `SIGHTLINE_CLUSTER_TESTS=1` and `KUBECONFIG` names a reachable cluster; otherwise it says
//! it skipped. It installs the CRDs, runs the locally built `sightline-operator run` against
//! the cluster, and checks in a fresh namespace: a pipeline without its model reports
//! `ModelNotFound`; once the model exists every child appears, owned, applied by the
//! operator's field manager, with statuses that track the generation; deleting the pipeline
//! lets garbage collection take its children. (Pods are not expected to start: the images
//! are not published, and that is not what this checks.) See README, "On Kubernetes".

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sightline_e2e::repo_root;

fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new("kubectl");
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().expect("run kubectl");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write to kubectl");
    }
    child.wait_with_output().expect("kubectl output")
}

fn ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `what` until it returns `Some`, for up to `secs` seconds.
fn eventually<T>(secs: u64, description: &str, mut what: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = what() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {description}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn jsonpath(ns: &str, object: &str, path: &str) -> Option<String> {
    let out = kubectl(
        &["-n", ns, "get", object, "-o", &format!("jsonpath={path}")],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

struct Cleanup {
    ns: String,
    operator: Child,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.operator.kill();
        let _ = self.operator.wait();
        let _ = kubectl(&["delete", "namespace", &self.ns, "--wait=false"], None);
    }
}

fn sample(name: &str, ns: &str) -> String {
    let text =
        std::fs::read_to_string(repo_root().join("manifests/samples").join(name)).expect("sample");
    text.replace("namespace: sightline-demo", &format!("namespace: {ns}"))
}

#[test]
fn the_operator_reconciles_on_a_real_cluster() {
    if std::env::var_os("SIGHTLINE_CLUSTER_TESTS").is_none()
        || std::env::var_os("KUBECONFIG").is_none()
    {
        eprintln!(
            "\n*** SKIPPED: the real-cluster suite runs with SIGHTLINE_CLUSTER_TESTS=1 and \
             KUBECONFIG pointing at a kind or k3d cluster (README, \"On Kubernetes\") ***\n"
        );
        return;
    }
    ok(&["version", "--request-timeout=10s"], None);
    let operator_bin = sightline_e2e::process::operator_binary()
        .expect("no sightline-operator next to the tests: `make test` builds it");

    ok(
        &[
            "apply",
            "--server-side",
            "-k",
            &repo_root().join("crds").display().to_string(),
        ],
        None,
    );
    for crd in [
        "imagemodels.sightline.io",
        "recognitionpipelines.sightline.io",
    ] {
        ok(
            &[
                "wait",
                "--for=condition=Established",
                &format!("crd/{crd}"),
                "--timeout=60s",
            ],
            None,
        );
    }
    let ns = format!("sightline-e2e-{}", std::process::id());
    ok(&["create", "namespace", &ns], None);
    let port = sightline_e2e::process::free_port().expect("port");
    let operator = Command::new(operator_bin)
        .args(["run", "--metrics-listen", &format!("127.0.0.1:{port}")])
        .env("POD_NAMESPACE", &ns)
        .env("POD_NAME", "e2e")
        .spawn()
        .expect("start the operator");
    let _cleanup = Cleanup {
        ns: ns.clone(),
        operator,
    };

    ok(
        &["apply", "-f", "-"],
        Some(&sample("recognitionpipeline.yaml", &ns)),
    );
    let reason = eventually(60, "ModelNotFound on the pipeline", || {
        jsonpath(
            &ns,
            "recognitionpipeline/photos",
            "{.status.conditions[?(@.type==\"Ready\")].reason}",
        )
        .filter(|r| r == "ModelNotFound")
    });
    assert_eq!(reason, "ModelNotFound");

    ok(
        &["apply", "-f", "-"],
        Some(&sample("imagemodel-cpu.yaml", &ns)),
    );
    for object in [
        "deployment/efficientnet-lite0-recognize",
        "service/efficientnet-lite0-recognize",
        "deployment/photos-upload",
        "deployment/photos-store",
        "service/photos-upload",
        "service/photos-store",
        "configmap/photos-config",
    ] {
        let owner = eventually(90, object, || {
            jsonpath(&ns, object, "{.metadata.ownerReferences[0].kind}")
        });
        assert!(
            ["ImageModel", "RecognitionPipeline"].contains(&owner.as_str()),
            "{object}: {owner}"
        );
        let managers =
            jsonpath(&ns, object, "{.metadata.managedFields[*].manager}").unwrap_or_default();
        assert!(
            managers.contains("sightline-operator"),
            "{object} managers: {managers}"
        );
    }
    eventually(60, "the pipeline's model condition", || {
        jsonpath(
            &ns,
            "recognitionpipeline/photos",
            "{.status.conditions[?(@.type==\"ModelReady\")].reason}",
        )
        .filter(|r| r != "ModelNotFound")
    });
    let generation = jsonpath(
        &ns,
        "imagemodel/efficientnet-lite0",
        "{.metadata.generation}",
    );
    let observed = eventually(60, "the model's observedGeneration", || {
        jsonpath(
            &ns,
            "imagemodel/efficientnet-lite0",
            "{.status.observedGeneration}",
        )
        .filter(|o| Some(o) == generation.as_ref())
    });
    assert_eq!(Some(observed), generation);

    ok(
        &[
            "-n",
            &ns,
            "delete",
            "recognitionpipeline",
            "photos",
            "--wait=true",
        ],
        None,
    );
    eventually(120, "garbage collection of the pipeline's children", || {
        let out = kubectl(&["-n", &ns, "get", "deployment", "photos-upload"], None);
        (!out.status.success()).then_some(())
    });
}
