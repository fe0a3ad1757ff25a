//! Mirroring: what a shadow request may cost, and how its answer is compared.
//!
//! A mirrored request is sent to the candidate after stable has answered, from a task of
//! its own, so the caller never waits for it. At most [`MAX_IN_FLIGHT`] shadows holding at
//! most [`MAX_BYTES_IN_FLIGHT`] of request bodies run at once (more are dropped and
//! counted), each within [`TIMEOUT`]. The answers are compared on their top-1 and never
//! returned or stored.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a shadow request may take.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Shadow requests at once.
pub const MAX_IN_FLIGHT: usize = 32;
/// Request bodies held by shadow requests at once.
pub const MAX_BYTES_IN_FLIGHT: usize = 32 * 1024 * 1024;
/// Largest shadow answer read (a recognition is a few hundred bytes, a batch of scores
/// a few hundred kilobytes).
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Budget unit: a kibibyte of request body.
const UNIT: usize = 1024;

/// The bound on shadows in flight.
#[derive(Debug, Clone)]
pub struct Budget {
    slots: Arc<Semaphore>,
    kib: Arc<Semaphore>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(MAX_IN_FLIGHT, MAX_BYTES_IN_FLIGHT)
    }
}

/// A shadow's place in the budget, given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    _kib: OwnedSemaphorePermit,
}

impl Budget {
    pub fn new(slots: usize, bytes: usize) -> Budget {
        Budget {
            slots: Arc::new(Semaphore::new(slots)),
            kib: Arc::new(Semaphore::new(bytes.div_ceil(UNIT))),
        }
    }

    /// A place for a shadow with a `body_len`-byte body, or `None` when the budget is spent.
    pub fn admit(&self, body_len: usize) -> Option<Admitted> {
        let kib = u32::try_from(body_len.div_ceil(UNIT).max(1)).ok()?;
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let kib = self.kib.clone().try_acquire_many_owned(kib).ok()?;
        Some(Admitted {
            _slot: slot,
            _kib: kib,
        })
    }
}

/// How an answer's top-1 is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// A recognition: `{"predictions": [{"label", …}, …], …}` or the seed's list
    /// `[{"label", …}, …]`; the first label.
    Labels,
    /// An Open Inference Protocol answer in JSON: the first output's top class per row —
    /// the argmax of `FP32` scores, or the class index of a `classification` output's first
    /// entry. Binary outputs are not compared (the request is not mirrored).
    Oip,
    /// Not a recognition: never mirrored.
    Never,
}

/// The top-1 of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Top1 {
    Label(String),
    /// One class index per row.
    Classes(Vec<usize>),
}

impl Compare {
    /// The top-1 in an answer's body, `None` when it has none this can read.
    pub fn top1(self, body: &[u8]) -> Option<Top1> {
        match self {
            Compare::Labels => labels_top1(body),
            Compare::Oip => oip_top1(body),
            Compare::Never => None,
        }
    }
}

#[derive(Deserialize)]
struct Label {
    label: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Labelled {
    Recognition { predictions: Vec<Label> },
    Seed(Vec<Label>),
}

fn labels_top1(body: &[u8]) -> Option<Top1> {
    let predictions = match serde_json::from_slice::<Labelled>(body).ok()? {
        Labelled::Recognition { predictions } | Labelled::Seed(predictions) => predictions,
    };
    predictions.into_iter().next().map(|p| Top1::Label(p.label))
}

/// An Open Inference Protocol answer, read for its first output only: the other outputs
/// are passed over as they are parsed (nothing of them is kept), and the first one's `data`
/// goes straight into numbers or strings, never into a `serde_json::Value` tree.
#[derive(Deserialize)]
struct OipAnswer {
    outputs: FirstOutput,
}

struct FirstOutput(Option<OipOutput>);

impl<'de> Deserialize<'de> for FirstOutput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = FirstOutput;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of output tensors")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<FirstOutput, A::Error> {
                let first = seq.next_element::<OipOutput>()?;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(FirstOutput(first))
            }
        }
        d.deserialize_seq(Visitor)
    }
}

#[derive(Deserialize)]
struct OipOutput {
    datatype: String,
    shape: Vec<u64>,
    data: Option<Data>,
}

/// A tensor's flat `data`: numbers or strings.
enum Data {
    Numbers(Vec<f64>),
    Strings(Vec<String>),
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// One element: a number or a string.
        enum Item {
            Number(f64),
            Text(String),
        }
        impl<'de> Deserialize<'de> for Item {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = Item;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a number or a string")
                    }
                    fn visit_f64<E>(self, v: f64) -> Result<Item, E> {
                        Ok(Item::Number(v))
                    }
                    fn visit_i64<E>(self, v: i64) -> Result<Item, E> {
                        Ok(Item::Number(v as f64))
                    }
                    fn visit_u64<E>(self, v: u64) -> Result<Item, E> {
                        Ok(Item::Number(v as f64))
                    }
                    fn visit_str<E>(self, v: &str) -> Result<Item, E> {
                        Ok(Item::Text(v.to_string()))
                    }
                }
                d.deserialize_any(V)
            }
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Data;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a flat list of numbers or of strings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Data, A::Error> {
                let mut data = Data::Numbers(Vec::new());
                let mut first = true;
                while let Some(item) = seq.next_element::<Item>()? {
                    match (&mut data, item) {
                        (Data::Numbers(v), Item::Number(n)) => v.push(n),
                        (Data::Strings(v), Item::Text(t)) => v.push(t),
                        (_, Item::Text(t)) if first => data = Data::Strings(vec![t]),
                        _ => return Err(serde::de::Error::custom("mixed numbers and strings")),
                    }
                    first = false;
                }
                Ok(data)
            }
        }
        d.deserialize_seq(Visitor)
    }
}

fn oip_top1(body: &[u8]) -> Option<Top1> {
    let answer: OipAnswer = serde_json::from_slice(body).ok()?;
    let output = answer.outputs.0?;
    let data = output.data?;
    // `[rows, columns]`, or `[columns]` for one row.
    let (rows, columns) = match output.shape.as_slice() {
        [columns] => (1, *columns),
        [rows, columns] => (*rows, *columns),
        _ => return None,
    };
    let (rows, columns) = (usize::try_from(rows).ok()?, usize::try_from(columns).ok()?);
    if rows == 0 || columns == 0 {
        return None;
    }
    let classes = match (output.datatype.as_str(), data) {
        ("FP32" | "FP64", Data::Numbers(scores)) => {
            if scores.len() != rows.checked_mul(columns)? {
                return None;
            }
            scores
                .chunks_exact(columns)
                .map(|row| {
                    row.iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                        .map(|(i, _)| i)
                })
                .collect::<Option<Vec<usize>>>()?
        }
        // `classification`: "score:index:label", the best first in each row.
        ("BYTES", Data::Strings(entries)) => {
            if entries.len() != rows.checked_mul(columns)? {
                return None;
            }
            entries
                .chunks_exact(columns)
                .map(|row| row.first()?.split(':').nth(1)?.parse().ok())
                .collect::<Option<Vec<usize>>>()?
        }
        _ => return None,
    };
    Some(Top1::Classes(classes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognitions_and_seed_lists_give_their_first_label() {
        let recognition = br#"{"model":{"name":"m","sha256":"x"},"predictions":[
            {"label":"tabby","probability":0.6},{"label":"tiger cat","probability":0.3}],
            "latency_ms":3.0}"#;
        assert_eq!(
            Compare::Labels.top1(recognition),
            Some(Top1::Label("tabby".into()))
        );
        let seed = br#"[{"label":"red","probability":0.9}]"#;
        assert_eq!(Compare::Labels.top1(seed), Some(Top1::Label("red".into())));
        for none in [
            &br#"{"predictions":[]}"#[..],
            b"[]",
            b"oops",
            br#"{"error":"x"}"#,
        ] {
            assert_eq!(Compare::Labels.top1(none), None);
        }
        assert_eq!(Compare::Never.top1(seed), None);
    }

    #[test]
    fn oip_answers_give_each_rows_top_class() {
        let scores = br#"{"model_name":"m","outputs":[
            {"name":"p","datatype":"FP32","shape":[2,3],"data":[0.1,0.7,0.2, 0.5,0.5,-1]}]}"#;
        assert_eq!(
            Compare::Oip.top1(scores),
            Some(Top1::Classes(vec![1, 0])),
            "ties go to the first class"
        );
        let classification = br#"{"outputs":[{"name":"p","datatype":"BYTES","shape":[1,2],
            "data":["0.9:2:blue","0.1:0:red"]}]}"#;
        assert_eq!(
            Compare::Oip.top1(classification),
            Some(Top1::Classes(vec![2]))
        );
        // Only the first output is read: what follows it is passed over, whatever it holds.
        let more =
            br#"{"outputs":[{"name":"p","datatype":"FP32","shape":[1,3],"data":[0.1,0.7,0.2]},
            {"name":"q","datatype":"BYTES","shape":"not a shape","data":[[1,[2,{"x":3}]]]}]}"#;
        assert_eq!(Compare::Oip.top1(more), Some(Top1::Classes(vec![1])));
        for none in [
            // binary outputs carry no data in the JSON part
            &br#"{"outputs":[{"name":"p","datatype":"FP32","shape":[1,3],"parameters":{"binary_data_size":12}}]}"#[..],
            br#"{"outputs":[{"name":"p","datatype":"FP32","shape":[1,3],"data":[1,2]}]}"#,
            br#"{"outputs":[{"name":"p","datatype":"FP32","shape":[1,1,3],"data":[1,2,3]}]}"#,
            br#"{"outputs":[{"name":"p","datatype":"INT8","shape":[3],"data":[1,2,3]}]}"#,
            br#"{"outputs":[]}"#,
            b"\x00binary",
        ] {
            assert_eq!(Compare::Oip.top1(none), None);
        }
    }

    #[test]
    fn the_budget_bounds_shadows_by_count_and_bytes() {
        let budget = Budget::new(2, 10 * 1024);
        let a = budget.admit(100).expect("room");
        let b = budget.admit(4 * 1024).expect("room");
        assert!(budget.admit(1).is_none(), "no slot left");
        drop(a);
        assert!(budget.admit(7 * 1024).is_none(), "not enough bytes left");
        let c = budget.admit(5 * 1024).expect("room");
        drop((b, c));
        assert!(
            budget.admit(11 * 1024).is_none(),
            "never larger than the whole budget"
        );
        assert!(budget.admit(10 * 1024).is_some());
    }
}
