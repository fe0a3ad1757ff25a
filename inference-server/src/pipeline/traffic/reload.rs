//! Reading the traffic file: every [`POLL_INTERVAL`] while the [`Traffic`] lives, acting
//! on changes only; applying a checked file (the services it names, its generation); and
//! what `/readyz` reports about the file applied.

use super::*;

impl Traffic {
    /// Reads the file and applies what changed since the last read.
    pub async fn reload(&self) {
        let Some(path) = &self.file else {
            return;
        };
        let now = match file::read(path).await {
            Ok(None) => Seen::Absent,
            Ok(Some(bytes)) => Seen::Contents(bytes),
            Err(e) => Seen::Unreadable(e.to_string()),
        };
        // One reload at a time, each change acted on (and logged) once.
        let mut seen = self.seen.lock().await;
        if seen.as_ref() == Some(&now) {
            return;
        }
        let shown = path.display().to_string();
        match &now {
            Seen::Absent => {
                self.metrics.reload("absent");
                tracing::info!(file = %shown, "no traffic file: every recognition goes to --recognize-url");
                self.install(TrafficConfig::stable_only(), None);
            }
            Seen::Unreadable(error) => {
                self.metrics.reload("invalid");
                tracing::warn!(file = %shown, %error, "cannot read the traffic file; keeping the last good one");
            }
            Seen::Contents(bytes) => {
                match TrafficConfig::parse(bytes).and_then(|config| self.apply(config)) {
                    Ok(()) => {
                        self.metrics.reload("applied");
                        let c = self.config();
                        tracing::info!(
                            file = %shown,
                            model = %c.model,
                            stable = c.stable.as_deref().unwrap_or(self.fallback.base()),
                            candidate = c.candidate.as_deref().unwrap_or("none"),
                            revision = c.revision.as_deref().unwrap_or("none"),
                            candidate_weight = c.candidate_weight.percent(),
                            mirror_percent = c.mirror_percent.percent(),
                            "traffic file applied"
                        );
                    }
                    Err(error) => {
                        self.metrics.reload("invalid");
                        tracing::warn!(file = %shown, %error, "malformed traffic file; keeping the last good one");
                    }
                }
            }
        }
        *seen = Some(now);
    }

    /// Applies a checked traffic file: the services it names (those already known are
    /// kept, with their circuit breakers), then the weights.
    pub fn apply(&self, config: TrafficConfig) -> Result<(), TrafficFileError> {
        for (field, url) in [("stable", &config.stable), ("candidate", &config.candidate)] {
            if let Some(url) = url
                && !self.hosts.allows(url)
            {
                return Err(TrafficFileError::HostNotAllowed {
                    field,
                    value: url.chars().take(200).collect(),
                });
            }
        }
        let current = self.active();
        let reuse = |url: &str, known: &[Option<&Arc<Downstream>>]| {
            known
                .iter()
                .flatten()
                .find(|d| d.base() == url)
                .map(|d| Arc::clone(d))
        };
        let stable = match &config.stable {
            None => self.fallback.clone(),
            Some(url) => match reuse(url, &[Some(&self.fallback), Some(&current.stable)]) {
                Some(known) => known,
                None => self.downstream("recognize", url, self.policy)?,
            },
        };
        let candidate = match &config.candidate {
            None => None,
            Some(url) => Some(match reuse(url, &[current.candidate.as_ref()]) {
                Some(known) => known,
                None => self.downstream("recognize-canary", url, candidate_policy(self.policy))?,
            }),
        };
        self.install(config, Some((stable, candidate)));
        Ok(())
    }

    fn downstream(
        &self,
        component: &'static str,
        url: &str,
        policy: CallPolicy,
    ) -> Result<Arc<Downstream>, TrafficFileError> {
        Downstream::new(component, url, policy, self.pipeline_metrics.clone())
            .map(Arc::new)
            .map_err(|e| match e {
                DownstreamConfigError::Url(_) | DownstreamConfigError::Client(_) => {
                    TrafficFileError::Url {
                        field: if component == "recognize" {
                            "stable"
                        } else {
                            "candidate"
                        },
                        value: format!("{url} ({e})"),
                    }
                }
            })
    }

    /// Makes `config` the one applied; `services` are its stable and candidate (`None`:
    /// the fallback alone).
    fn install(
        &self,
        config: TrafficConfig,
        services: Option<(Arc<Downstream>, Option<Arc<Downstream>>)>,
    ) {
        let (stable, candidate) = services.unwrap_or_else(|| (self.fallback.clone(), None));
        self.metrics.generation(&config.model, config.generation);
        self.metrics.weights(
            &config.model,
            config.candidate_weight.percent(),
            config.mirror_percent.percent(),
        );
        let active = Arc::new(Active {
            config,
            stable,
            candidate,
        });
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = active;
    }
}

impl Traffic {
    /// The traffic file applied now, for `/readyz`.
    pub fn applied(&self) -> AppliedTraffic {
        let c = self.config();
        AppliedTraffic {
            model: c.model,
            generation: c.generation,
            candidate_weight: Percent(c.candidate_weight.percent()),
            mirror_percent: Percent(c.mirror_percent.percent()),
            revision: c.revision,
        }
    }
}

/// Reads the file every [`POLL_INTERVAL`] while the [`Traffic`] lives.
pub(super) async fn watch(traffic: Weak<Traffic>) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(traffic) = traffic.upgrade() else {
            return;
        };
        traffic.reload().await;
    }
}
