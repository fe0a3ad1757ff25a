//! The results database's families (`sightline_db_*`): query latency and errors by
//! operation. Registered under the process's `sightline` prefix by whoever composes it.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use prometheus_client::registry::Registry;
use sightline_telemetry::{HistogramFamily, latency_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationReasonLabels {
    pub operation: String,
    pub reason: String,
}

/// The results database: query latency and errors by operation.
#[derive(Clone)]
pub struct StoreMetrics {
    duration: HistogramFamily<OperationLabels>,
    errors: Family<OperationReasonLabels, Counter>,
}

impl StoreMetrics {
    /// The operations [`crate::ResultStore`] runs (label values).
    pub const OPERATIONS: [&'static str; 11] = [
        "insert",
        "get",
        "list",
        "ping",
        "evaluation_put",
        "evaluation_get",
        "feedback_put",
        "feedback_history",
        "quality",
        "quality_all",
        "feedback_purge",
    ];

    fn families() -> StoreMetrics {
        StoreMetrics {
            duration: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
        }
    }

    /// The families, registered in `registry` (the process's `sightline` sub-registry).
    pub fn register(registry: &mut Registry) -> StoreMetrics {
        let m = Self::families();
        registry.register(
            "db_query_duration_seconds",
            "Time of one results-database operation (insert, get, list, ping, evaluation_put, evaluation_get, feedback_put, feedback_history, quality, quality_all, feedback_purge), errors included",
            m.duration.clone(),
        );
        registry.register(
            "db_errors",
            "Results-database operations that failed, by operation and reason (unavailable, query, corrupt)",
            m.errors.clone(),
        );
        // Zero series for every operation, so error ratios have data before the first error.
        for operation in Self::OPERATIONS {
            for reason in ["unavailable", "query"] {
                m.errors
                    .get_or_create(&OperationReasonLabels {
                        operation: operation.to_string(),
                        reason: reason.to_string(),
                    })
                    .inc_by(0);
            }
        }
        m
    }

    /// Families that belong to no registry (stores opened outside a server).
    pub fn unregistered() -> StoreMetrics {
        Self::families()
    }

    pub fn observe(&self, operation: &'static str, elapsed: Duration, error: Option<&'static str>) {
        let labels = OperationLabels {
            operation: operation.to_string(),
        };
        self.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if let Some(reason) = error {
            self.errors
                .get_or_create(&OperationReasonLabels {
                    operation: labels.operation,
                    reason: reason.to_string(),
                })
                .inc();
        }
    }
}
