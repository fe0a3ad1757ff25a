//! A step's window in a canary reconcile: opened once every front door applies the step's
//! traffic (on a whole reading of every pod), then judged on each reconcile from every
//! pod's `/metrics`, taken per pod ([`crate::canary::window`]).

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::super::{Error, quality};
use super::clock::{now_text, parse_time};
use super::{Run, read};
use crate::build::canary as build;
use crate::build::model as model_build;
use crate::canary::{self, Counters, Decision, Mirrored, PodRead, Scope, Tally, Window};
use crate::crd::{Baseline, RolloutStatus};

/// This reconcile's reading of every running pod the window counts.
struct Reads {
    stable: Vec<PodRead<Counters>>,
    candidate: Vec<PodRead<Counters>>,
    mirrored: Vec<PodRead<Mirrored>>,
    doors: Vec<Pod>,
}

impl Run<'_> {
    async fn read(&self) -> Result<Reads, Error> {
        let (ctx, ns, m) = (self.ctx, self.ns, self.m);
        let stable_pods = read::revision_pods(ctx, ns, m, model_build::COMPONENT).await?;
        let candidate_pods = read::revision_pods(ctx, ns, m, build::COMPONENT).await?;
        let doors = read::front_doors(ctx, ns, m).await?;
        let name = m.name_any();
        Ok(Reads {
            stable: read::metrics(ctx, ns, &stable_pods, canary::parse_counters).await,
            candidate: read::metrics(ctx, ns, &candidate_pods, canary::parse_counters).await,
            mirrored: read::metrics(ctx, ns, &doors, |t| canary::parse_mirrored(t, &name)).await,
            doors,
        })
    }

    /// Opens the step's window when every front door applies its traffic generation and
    /// every serving pod could be read; holds (or, past the deadline, rolls back)
    /// otherwise.
    pub(super) async fn open_window(&self, status: &mut RolloutStatus) -> Result<Decision, Error> {
        let reads = self.read().await?;
        let mut missing = Vec::new();
        if let Some(generation) = status.pending_generation {
            let lagging = read::lagging(self.ctx, self.ns, self.m, &reads.doors, generation).await;
            if !lagging.is_empty() {
                missing.push(format!(
                    "front doors have not applied traffic generation {generation}: {}",
                    lagging.join(", ")
                ));
            }
        }
        let opened = Tally::open(&reads.stable).zip(Tally::open(&reads.candidate));
        match opened.zip(Tally::open(&reads.mirrored)) {
            Some(((stable, candidate), mirrored)) if missing.is_empty() => {
                status.baseline = Some(Baseline {
                    stable,
                    candidate,
                    mirrored,
                });
                status.step_started_at = Some(now_text(self.ctx));
                status.pending_generation = None;
                status.checks.clear();
                return Ok(Decision::Hold("the window opened".into()));
            }
            Some(_) => {}
            None => missing.push(incomplete(&reads)),
        }
        Ok(canary::wait(
            &self.settings.plan,
            &self.position(status),
            missing,
        ))
    }

    /// Takes this reconcile's readings into the window `base` and decides.
    pub(super) async fn judge(
        &self,
        status: &mut RolloutStatus,
        mut base: Baseline,
        candidate_pods: &[Pod],
    ) -> Result<Decision, Error> {
        let reads = self.read().await?;
        let opened =
            parse_time(status.step_started_at.as_deref()).map_or(0.0, |t| t.as_second() as f64);
        let unread = [
            base.stable.update(&reads.stable, opened),
            base.candidate.update(&reads.candidate, opened),
            base.mirrored.update(&reads.mirrored, opened),
        ]
        .concat();
        let position = self.position(status);
        let evaluating = self.m.spec.evaluation.is_some();
        let stable_serves = self.settings.weight(position.step) < 100;
        let stable_window = base.stable.total();
        let window = Window {
            stable: if stable_serves {
                stable_window.clone()
            } else {
                status.reference.clone().unwrap_or_default()
            },
            candidate: base.candidate.total(),
            mirrored: base.mirrored.total(),
            stable_top1: self
                .m
                .status
                .as_ref()
                .and_then(|s| s.evaluation.as_ref())
                .map(|e| e.accuracy),
            candidate_top1: if evaluating {
                read::candidate_top1(self.ctx, self.ns, candidate_pods).await
            } else {
                None
            },
            feedback: if self.settings.thresholds.live() {
                let live = quality::canary_feedback(self.ctx, self.ns, self.m, candidate_pods);
                Some(live.await?)
            } else {
                None
            },
        };
        let scope = Scope {
            min_requests: self.settings.plan.min_requests,
            mirroring: self.settings.mirror > 0,
            evaluating,
            stable_serves,
        };
        let checks = canary::checks(&self.settings.thresholds, &window, &scope);
        let decision = canary::decide(
            &self.settings.plan,
            &position,
            &checks,
            window.candidate.requests,
            &unread,
        );
        status.checks = checks;
        status.baseline = Some(base);
        if matches!(decision, Decision::Advance(_))
            && stable_serves
            && stable_window.observations() >= canary::MIN_STABLE_RECOGNITIONS
        {
            // What a later step that sends stable nothing compares the candidate with.
            status.reference = Some(stable_window);
        }
        Ok(decision)
    }
}

fn incomplete(reads: &Reads) -> String {
    let unread = [
        canary::window::unread(&reads.stable),
        canary::window::unread(&reads.candidate),
        canary::window::unread(&reads.mirrored),
    ]
    .concat();
    format!("incomplete: /metrics unread from {}", unread.join(", "))
}
