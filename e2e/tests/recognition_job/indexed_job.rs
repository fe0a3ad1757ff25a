//! SIMULATION of the Job controller and the kubelet for one Indexed Job, small and named
//! as such, running each pod as a real process on this machine. The rules it models
//! (kubernetes.io/docs/concepts/workloads/controllers/job, unless said otherwise):
//!
//! - "Completion mode": one pod per index, at most `parallelism` at a time, lowest index
//!   first; each pod carries its index in the `batch.kubernetes.io/job-completion-index`
//!   annotation and label and in the `JOB_COMPLETION_INDEX` environment variable; the Job
//!   succeeds when every index has a succeeded pod ([`IndexedJob::step`]).
//! - "Backoff limit per index" and "Pod failure policy": a failed pod is matched against
//!   the rules in order — `FailIndex` fails its index at once, `Ignore` does not count,
//!   `Count` (and no match) counts against `backoffLimitPerIndex`; an index out of
//!   retries is failed, and the Job fails (`FailedIndexes`) once every index has finished
//!   ([`IndexedJob::failed`]).
//! - "Pod replacement policy" `Failed`: a replacement is created only once the failed pod
//!   has terminated.
//! - The kubelet: `$(VAR)` in `args` is expanded from the container's environment
//!   (kubernetes.io/docs/tasks/inject-data-application/define-command-argument-container,
//!   "Use environment variables to define arguments"); volumes are mounted at their
//!   `mountPath` (here: a container path is rewritten to the host folder standing for the
//!   claim); the container's `terminationMessagePath` is a file whose content (at most
//!   4096 bytes) becomes `state.terminated.message`
//!   (kubernetes.io/docs/tasks/debug/debug-application/determine-reason-pod-failure); a
//!   process killed by a signal exits `128 + signal` (137 for SIGKILL).
//!   An `emptyDir` volume is a folder of the pod's own, empty when the pod starts and gone
//!   with it (kubernetes.io/docs/concepts/storage/volumes/#emptydir): a replacement pod
//!   gets a new one. An environment variable from `valueFrom.secretKeyRef` is the
//!   Secret's value as stored (`data`, which the API server makes of `stringData`); a
//!   missing one would hold the container in `CreateContainerConfigError`, which this
//!   simulation does not model (it stops the test).
//! - Each pod has its own network namespace: its `--metrics-listen 0.0.0.0:8080` is given a
//!   loopback port of its own here, which `pods/proxy` reaches ([`LoopbackPods`]).
//! - Cluster DNS: a Service is reached by `<service>.<namespace>.svc`
//!   (kubernetes.io/docs/concepts/services-networking/dns-pod-service); here a URL of a
//!   Service registered with [`IndexedJob::serve`] is rewritten to the real process
//!   standing for it.
//! - The garbage collector: deleting the Job deletes its pods; their processes get
//!   SIGKILL at once (the kubelet's SIGTERM then SIGKILL after the grace period, with no
//!   grace: the harsher case).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::loopback::LoopbackPods;

const INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// One pod's process.
struct Running {
    pod: String,
    index: i32,
    child: Child,
    termination_log: PathBuf,
}

/// One Indexed Job as the Job controller and the kubelets run it here.
pub struct IndexedJob {
    admin: Client,
    ns: String,
    name: String,
    binary: PathBuf,
    /// Container path prefix → host path (the claims, and the image's own files).
    mounts: Vec<(String, PathBuf)>,
    /// Per-pod folders (termination logs, process output).
    scratch: PathBuf,
    pods: Arc<LoopbackPods>,
    /// The uid of the Job this state belongs to.
    uid: Option<String>,
    running: Vec<Running>,
    succeeded: BTreeMap<i32, String>,
    failed_indexes: BTreeMap<i32, String>,
    /// Failures counted against `backoffLimitPerIndex`, per index.
    counted: BTreeMap<i32, i32>,
    /// Pods created, per index (over every Job of this name).
    pub attempts: BTreeMap<i32, u32>,
    created: u32,
    /// In-cluster Service URL (`http://name.ns.svc:port`) → the process standing for it.
    services: Vec<(String, String)>,
}

fn claim_dir(claims: &Path, claim: &str) -> PathBuf {
    claims.join(claim)
}

impl IndexedJob {
    /// `claims/<claimName>` stands for each claim; `image` maps the server image's paths
    /// to this machine's files.
    pub fn new(
        admin: Client,
        ns: &str,
        name: &str,
        binary: PathBuf,
        image: Vec<(String, PathBuf)>,
        scratch: PathBuf,
        pods: Arc<LoopbackPods>,
    ) -> IndexedJob {
        IndexedJob {
            admin,
            ns: ns.into(),
            name: name.into(),
            binary,
            mounts: image,
            scratch,
            pods,
            uid: None,
            running: Vec::new(),
            succeeded: BTreeMap::new(),
            failed_indexes: BTreeMap::new(),
            counted: BTreeMap::new(),
            attempts: BTreeMap::new(),
            created: 0,
            services: Vec::new(),
        }
    }

    /// The Service whose in-cluster URL is `cluster_url` is served by `real_url`.
    pub fn serve(&mut self, cluster_url: &str, real_url: &str) {
        self.services
            .push((cluster_url.to_string(), real_url.to_string()));
    }

    /// The folder of the pod running index `index` now (its `emptyDir` volumes are under
    /// `volumes/<name>`).
    pub fn pod_dir(&self, index: i32) -> Option<PathBuf> {
        let r = self.running.iter().find(|r| r.index == index)?;
        Some(self.scratch.join(&r.pod))
    }

    fn pod_api(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn job_api(&self) -> Api<Job> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// SIGKILL to the process of index `index` (a crash, as a lost node or a kernel kill
    /// leaves it): it is seen as failed at the next [`IndexedJob::step`].
    pub fn kill(&mut self, index: i32) -> bool {
        match self.running.iter_mut().find(|r| r.index == index) {
            Some(r) => r.child.kill().is_ok(),
            None => false,
        }
    }

    /// One pass of the Job controller and the kubelets over the Job as stored now.
    pub async fn step(&mut self, claims: &Path) {
        let job = self
            .job_api()
            .get_opt(&self.name)
            .await
            .expect("get the Job");
        let uid = job.as_ref().and_then(|j| j.uid());
        if uid != self.uid {
            self.collect_garbage().await;
            self.uid = uid;
        }
        let Some(job) = job else { return };
        let spec = serde_json::to_value(job.spec.as_ref().expect("spec")).expect("json");
        self.reap(&spec).await;
        let completions = spec["completions"].as_i64().expect("completions") as i32;
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1) as usize;
        for index in 0..completions {
            if self.running.len() >= parallelism {
                break;
            }
            let busy = self.running.iter().any(|r| r.index == index);
            if busy
                || self.succeeded.contains_key(&index)
                || self.failed_indexes.contains_key(&index)
            {
                continue;
            }
            self.start(&job, &spec, index, claims).await;
        }
        self.write_status(completions).await;
    }

    /// The garbage collector after the Job is deleted: its pods go, their processes die.
    async fn collect_garbage(&mut self) {
        for mut r in self.running.drain(..) {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        let pods = self
            .pod_api()
            .list(
                &ListParams::default()
                    .labels(&format!("batch.kubernetes.io/job-name={}", self.name)),
            )
            .await
            .expect("pods");
        for p in pods.items {
            let _ = self
                .pod_api()
                .delete(&p.name_any(), &DeleteParams::default())
                .await;
        }
        self.pods.pods.lock().expect("pods").clear();
        self.succeeded.clear();
        self.failed_indexes.clear();
        self.counted.clear();
    }

    /// A container path as the host sees it.
    fn host_path(&self, arg: &str, pod_mounts: &[(String, PathBuf)]) -> String {
        for (prefix, host) in pod_mounts.iter().chain(&self.mounts) {
            if let Some(rest) = arg.strip_prefix(prefix.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{}{rest}", host.display());
            }
        }
        arg.to_string()
    }

    /// The container's `env`: plain values, and Secrets' values as the kubelet reads them.
    async fn container_env(&self, container: &Value) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().expect("env name").to_string();
            if let Some(value) = var["value"].as_str() {
                env.insert(name, value.to_string());
                continue;
            }
            let from = &var["valueFrom"]["secretKeyRef"];
            let (Some(secret), Some(key)) = (from["name"].as_str(), from["key"].as_str()) else {
                panic!("this simulation reads env values and Secret keys only: {var}");
            };
            let stored = Api::<Secret>::namespaced(self.admin.clone(), &self.ns)
                .get(secret)
                .await
                .unwrap_or_else(|e| panic!("Secret {secret} (CreateContainerConfigError): {e}"));
            let value = stored
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .unwrap_or_else(|| panic!("Secret {secret} has no data key {key}"));
            env.insert(name, String::from_utf8_lossy(&value.0).into_owned());
        }
        env
    }

    async fn start(&mut self, job: &Job, spec: &Value, index: i32, claims: &Path) {
        let template = &spec["template"];
        assert!(
            template["spec"]["initContainers"].is_null(),
            "this simulation runs no init containers: give the model from a claim"
        );
        let container = &template["spec"]["containers"][0];
        self.created += 1;
        *self.attempts.entry(index).or_insert(0) += 1;
        let pod_name = format!("{}-{index}-{:05}", self.name, self.created);
        let dir = self.scratch.join(&pod_name);
        std::fs::create_dir_all(&dir).expect("pod dir");
        let termination_log = dir.join("termination-log");
        std::fs::write(&termination_log, b"").expect("termination log");
        // The pod's volumes, by name: a claim's folder, or a new empty one of this pod.
        let volumes: BTreeMap<String, PathBuf> = template["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let name = v["name"].as_str()?.to_string();
                if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                    return Some((name, claim_dir(claims, claim)));
                }
                v["emptyDir"].is_object().then(|| {
                    let empty = dir.join("volumes").join(&name);
                    std::fs::create_dir_all(&empty).expect("emptyDir");
                    (name, empty)
                })
            })
            .collect();
        let mut pod_mounts: Vec<(String, PathBuf)> = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let host = volumes.get(m["name"].as_str()?)?;
                Some((m["mountPath"].as_str()?.to_string(), host.clone()))
            })
            .collect();
        let message_path = container["terminationMessagePath"]
            .as_str()
            .unwrap_or("/dev/termination-log");
        pod_mounts.push((message_path.to_string(), termination_log.clone()));
        let port = sightline_e2e::process::free_port().expect("a port");
        let mut env = self.container_env(container).await;
        env.insert("JOB_COMPLETION_INDEX".to_string(), index.to_string());
        let args: Vec<String> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| {
                let mut a = a.as_str().expect("arg").to_string();
                for (k, v) in &env {
                    a = a.replace(&format!("$({k})"), v);
                }
                if a == "0.0.0.0:8080" {
                    a = format!("127.0.0.1:{port}");
                }
                for (cluster_url, real_url) in &self.services {
                    if let Some(rest) = a.strip_prefix(cluster_url.as_str()) {
                        a = format!("{real_url}{rest}");
                    }
                }
                self.host_path(&a, &pod_mounts)
            })
            .collect();
        let log = std::fs::File::create(dir.join("output.log")).expect("log");
        let child = Command::new(&self.binary)
            .args(&args)
            .envs(&env)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the shard process");
        self.pods
            .pods
            .lock()
            .expect("pods")
            .insert(pod_name.clone(), format!("http://127.0.0.1:{port}"));
        let mut labels = template["metadata"]["labels"].clone();
        labels["batch.kubernetes.io/job-name"] = json!(self.name);
        labels["batch.kubernetes.io/controller-uid"] = json!(job.uid());
        labels[INDEX] = json!(index.to_string());
        let now = Timestamp::now().to_string();
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": self.ns, "labels": labels,
                "annotations": {INDEX: index.to_string()},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                    "name": self.name, "uid": job.uid(), "controller": true}]},
            "spec": template["spec"].clone(),
            "status": {"phase": "Running", "startTime": now,
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": container["name"], "ready": false,
                    "restartCount": 0, "image": container["image"], "imageID": "",
                    "state": {"running": {"startedAt": now}}}]},
        }))
        .expect("pod");
        self.pod_api()
            .create(&PostParams::default(), &pod)
            .await
            .expect("create the pod");
        self.running.push(Running {
            pod: pod_name,
            index,
            child,
            termination_log,
        });
    }

    /// The kubelet reports each exited process; the Job controller applies the failure
    /// policy to the failed ones.
    async fn reap(&mut self, spec: &Value) {
        let mut still = Vec::new();
        for mut r in std::mem::take(&mut self.running) {
            let Some(status) = r.child.try_wait().expect("wait") else {
                still.push(r);
                continue;
            };
            let code = status.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + status.signal().unwrap_or(9)
            });
            let mut message = std::fs::read(&r.termination_log).unwrap_or_default();
            message.truncate(4096);
            let message = String::from_utf8_lossy(&message).into_owned();
            let phase = if code == 0 { "Succeeded" } else { "Failed" };
            self.pod_api()
                .patch_status(
                    &r.pod,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"phase": phase, "containerStatuses": [
                        {"name": "batch", "ready": false, "restartCount": 0, "image": "",
                         "imageID": "", "state": {"terminated": {"exitCode": code,
                         "reason": if code == 0 { "Completed" } else { "Error" },
                         "message": message}}}]}})),
                )
                .await
                .expect("pod status");
            self.pods.pods.lock().expect("pods").remove(&r.pod);
            if code == 0 {
                self.succeeded.insert(r.index, r.pod.clone());
            } else {
                self.failed(spec, r.index, code);
            }
        }
        self.running = still;
    }

    /// The pod failure policy and `backoffLimitPerIndex` on a failed pod of `index`.
    fn failed(&mut self, spec: &Value, index: i32, code: i32) {
        let rules = spec["podFailurePolicy"]["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let action = rules
            .iter()
            .find(|rule| {
                rule["onExitCodes"]["operator"] == "In"
                    && rule["onExitCodes"]["values"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|c| c.as_i64() == Some(code as i64)))
            })
            .and_then(|rule| rule["action"].as_str())
            .unwrap_or("Count");
        let limit = spec["backoffLimitPerIndex"].as_i64().unwrap_or(6) as i32;
        match action {
            "FailIndex" => {
                self.failed_indexes
                    .insert(index, format!("exit code {code}: FailIndex"));
            }
            "Ignore" => {}
            _ => {
                let n = self.counted.entry(index).or_insert(0);
                *n += 1;
                if *n > limit {
                    self.failed_indexes.insert(index, format!("{n} failures"));
                }
            }
        }
    }

    /// The Job's status as the Job controller writes it.
    async fn write_status(&self, completions: i32) {
        let list = |set: Vec<i32>| set.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        let finished = self.succeeded.len() + self.failed_indexes.len() == completions as usize;
        let mut conditions = Vec::new();
        if finished && self.failed_indexes.is_empty() {
            conditions.push(json!({"type": "SuccessCriteriaMet", "status": "True"}));
            conditions.push(json!({"type": "Complete", "status": "True"}));
        } else if finished {
            conditions.push(json!({"type": "FailureTarget", "status": "True",
                "reason": "FailedIndexes", "message": "Job has failed indexes"}));
            conditions.push(json!({"type": "Failed", "status": "True",
                "reason": "FailedIndexes", "message": "Job has failed indexes"}));
        }
        self.job_api()
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "active": self.running.len(),
                    "succeeded": self.succeeded.len(),
                    "failed": self.counted.values().sum::<i32>(),
                    "completedIndexes": list(self.succeeded.keys().copied().collect()),
                    "failedIndexes": list(self.failed_indexes.keys().copied().collect()),
                    "conditions": conditions,
                }})),
            )
            .await
            .expect("job status");
    }
}

impl Drop for IndexedJob {
    fn drop(&mut self) {
        for r in &mut self.running {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}
