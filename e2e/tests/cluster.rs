//! Opt-in: the operator against a real Kubernetes cluster (kind, k3d, …). Runs only when
//! `SIGHTLINE_CLUSTER_TESTS=1` and `KUBECONFIG` names a reachable cluster; otherwise it says
//! it skipped. It installs the CRDs, runs the locally built `sightline-operator run` against
//! the cluster, and checks in a fresh namespace: a pipeline without its model reports
//! `ModelNotFound`; once the model exists every child appears, owned, applied by the
//! operator's field manager, with statuses that track the generation; deleting the pipeline
//! lets garbage collection take its children. (Pods are not expected to start: the images
//! are not published, and that is not what this checks.) See README, "On Kubernetes".
//!
//! Then the "status that never lies" scenarios any cluster can show without published
//! images, each in its own namespace (docs/status.md): an image that cannot be pulled is
//! named on `Ready`; a GPU model with no node offering the resource is `Unschedulable` in
//! the scheduler's words; a ResourceQuota refusal is `ApplyFailed` with the API server's
//! message; a user's Service of a child's name is `ConflictingObject` and left alone; an
//! unchanged resource is not rewritten (resourceVersions stay put across requeues, after
//! the real API server's normalisation); a config-only change rolls the pods. The serving
//! scenarios (a good rollout, a bad digest on revision 2, an invalid model, a bad
//! evaluation dataset) need a published server image and a model the cluster can fetch;
//! `operator/tests/status.rs` covers them against the simulated cluster.

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
            "{.status.conditions[?(@.type==\"ModelAvailable\")].reason}",
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

    status_scenarios();
}

/// A fresh namespace for one scenario (deleted when dropped).
struct Scenario(String);

impl Scenario {
    fn new(name: &str) -> Scenario {
        let ns = format!("sightline-e2e-{}-{name}", std::process::id());
        ok(&["create", "namespace", &ns], None);
        Scenario(ns)
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"], None);
    }
}

fn ready(ns: &str, object: &str, field: &str) -> Option<String> {
    jsonpath(
        ns,
        object,
        &format!("{{.status.conditions[?(@.type==\"Ready\")].{field}}}"),
    )
}

fn warning_events(ns: &str) -> String {
    ok(
        &[
            "-n",
            ns,
            "get",
            "events",
            "--field-selector",
            "type=Warning",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        None,
    )
}

/// The CPU sample without its evaluation, in `ns`, with `edit` applied to its YAML text.
fn model(ns: &str, edit: impl Fn(String) -> String) -> String {
    let text = sample("imagemodel-cpu.yaml", ns);
    let cut = text
        .find("  # Evaluated once it serves")
        .unwrap_or(text.len());
    edit(text[..cut].to_string())
}

fn status_scenarios() {
    const MODEL: &str = "imagemodel/efficientnet-lite0";
    let with_image = std::env::var_os("SIGHTLINE_SERVER_IMAGE").is_some();

    // An image the kubelet cannot pull: named on Ready, with a Warning event.
    if !with_image {
        let s = Scenario::new("pull");
        ok(&["apply", "-f", "-"], Some(&model(&s.0, |t| t)));
        let reason = eventually(180, "an image pull failure on Ready", || {
            ready(&s.0, MODEL, "reason")
                .filter(|r| ["ErrImagePull", "ImagePullBackOff"].contains(&r.as_str()))
        });
        let message = ready(&s.0, MODEL, "message").unwrap_or_default();
        assert!(message.contains("sightline-server"), "{reason}: {message}");
        eventually(60, "a Warning event", || {
            let reasons = warning_events(&s.0);
            reasons.contains("Image").then_some(reasons)
        });
    }

    // A GPU model and no node with the resource: the scheduler's words.
    {
        let s = Scenario::new("gpu");
        let gpu = model(&s.0, |t| {
            t.replace(
                "device: cpu",
                "device: gpu\n    gpuResource: example.com/no-such-gpu",
            )
        });
        ok(&["apply", "-f", "-"], Some(&gpu));
        let reason = eventually(180, "Unschedulable on Ready", || {
            ready(&s.0, MODEL, "reason").filter(|r| r == "Unschedulable")
        });
        let message = ready(&s.0, MODEL, "message").unwrap_or_default();
        assert!(
            message.contains("example.com/no-such-gpu"),
            "{reason}: {message}"
        );
    }

    // A quota that refuses every Deployment: ApplyFailed with the API server's message.
    {
        let s = Scenario::new("quota");
        ok(
            &[
                "-n",
                &s.0,
                "create",
                "quota",
                "none",
                "--hard=count/deployments.apps=0",
            ],
            None,
        );
        ok(&["apply", "-f", "-"], Some(&model(&s.0, |t| t)));
        eventually(120, "ApplyFailed on Ready", || {
            ready(&s.0, MODEL, "reason").filter(|r| r == "ApplyFailed")
        });
        let message = ready(&s.0, MODEL, "message").unwrap_or_default();
        assert!(message.contains("exceeded quota"), "{message}");
    }

    // A user's Service with a child's name: reported, never adopted.
    {
        let s = Scenario::new("conflict");
        ok(
            &[
                "-n",
                &s.0,
                "create",
                "service",
                "clusterip",
                "efficientnet-lite0-recognize",
                "--tcp=80:80",
            ],
            None,
        );
        ok(&["apply", "-f", "-"], Some(&model(&s.0, |t| t)));
        eventually(120, "ConflictingObject on Ready", || {
            ready(&s.0, MODEL, "reason").filter(|r| r == "ConflictingObject")
        });
        let owners = jsonpath(
            &s.0,
            "service/efficientnet-lite0-recognize",
            "{.metadata.ownerReferences}",
        );
        assert_eq!(owners, None, "the user's Service was adopted");
    }

    // An unchanged resource is not rewritten across requeues (every 15 s while pending),
    // and a config-only change rolls the pods.
    {
        let s = Scenario::new("noop");
        ok(&["apply", "-f", "-"], Some(&model(&s.0, |t| t)));
        ok(
            &["apply", "-f", "-"],
            Some(&sample("recognitionpipeline.yaml", &s.0)),
        );
        let objects = [
            "deployment/efficientnet-lite0-recognize",
            "networkpolicy/efficientnet-lite0-recognize",
            "deployment/photos-upload",
            "networkpolicy/photos-default-deny",
        ];
        // What a write of ours would move: a Deployment's generation (its status is the
        // deployment controller's to write), every other object's resourceVersion.
        let snapshot = || -> Vec<Option<String>> {
            objects
                .iter()
                .map(|o| {
                    let field = if o.starts_with("deployment/") {
                        "{.metadata.generation}"
                    } else {
                        "{.metadata.resourceVersion}"
                    };
                    jsonpath(&s.0, o, field)
                })
                .collect()
        };
        eventually(120, "every child", || {
            snapshot().iter().all(Option::is_some).then_some(())
        });
        // Let the first writes settle, then watch two requeue periods and more.
        std::thread::sleep(Duration::from_secs(20));
        let before = snapshot();
        std::thread::sleep(Duration::from_secs(40));
        assert_eq!(
            before,
            snapshot(),
            "an unchanged resource was rewritten: {objects:?}"
        );

        let template = |_: ()| {
            jsonpath(
                &s.0,
                "deployment/photos-upload",
                "{.spec.template.metadata.annotations.sightline\\.io/inputs-digest}",
            )
        };
        let digest = template(()).expect("inputs digest on the pod template");
        ok(
            &[
                "-n",
                &s.0,
                "patch",
                "recognitionpipeline",
                "photos",
                "--type=merge",
                "-p",
                r#"{"spec":{"gateway":{"rateLimit":{"requestsPerSecond":5}}}}"#,
            ],
            None,
        );
        eventually(60, "a new pod template after a config-only change", || {
            template(()).filter(|d| d != &digest)
        });
    }
}
