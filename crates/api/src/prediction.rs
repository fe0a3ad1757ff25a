//! One ranked class of an answer.

use serde::{Deserialize, Serialize};

/// One ranked class. Field names and order are the seed's wire format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub label: String,
    pub probability: f32,
}
