//! What an OIP `infer` request carries: its JSON header (inputs, outputs, parameters), the
//! tensor data read straight into `f32`s, and the split between the JSON header and the
//! binary tensor data that may follow it; checked against the model being asked.

use super::outputs::{Parameters, RequestedOutput};
use super::*;

/// One input tensor of an inference request.
#[derive(Debug, Deserialize)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub data: Option<FlatF32>,
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Parameters>,
    pub inputs: Vec<InputTensor>,
    #[serde(default, deserialize_with = "super::outputs::at_most_listed")]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// Tensor `data`, flat or nested, read straight into `f32`s (no intermediate `Value` tree,
/// so a large tensor costs 4 bytes per element).
#[derive(Debug, Default)]
pub struct FlatF32(pub Vec<f32>);

impl<'de> Deserialize<'de> for FlatF32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(&'a mut Vec<f32>);
        impl<'de> serde::de::Visitor<'de> for Visitor<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("numbers, or arrays of numbers nested to any depth")
            }
            fn visit_f64<E>(self, v: f64) -> Result<(), E> {
                self.0.push(v as f32);
                Ok(())
            }
            fn visit_i64<E>(self, v: i64) -> Result<(), E> {
                self.0.push(v as f32);
                Ok(())
            }
            fn visit_u64<E>(self, v: u64) -> Result<(), E> {
                self.0.push(v as f32);
                Ok(())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while seq.next_element_seed(Seed(&mut *self.0))?.is_some() {}
                Ok(())
            }
        }
        struct Seed<'a>(&'a mut Vec<f32>);
        impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_> {
            type Value = ();
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(Visitor(self.0))
            }
        }
        let mut out = Vec::new();
        d.deserialize_any(Visitor(&mut out))?;
        Ok(FlatF32(out))
    }
}

/// Splits a body into its JSON header and the binary tensor data that follows it.
pub fn split_body<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), AppError> {
    match headers.get(HEADER_LENGTH) {
        None => Ok((body, &[])),
        Some(value) => {
            let n: usize = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| {
                    AppError::bad_request(format!("{HEADER_LENGTH} must be a byte count"))
                })?;
            if n > body.len() {
                return Err(AppError::bad_request(format!(
                    "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                    body.len()
                )));
            }
            Ok(body.split_at(n))
        }
    }
}

/// Validates the request's one input against the model and returns `(rows, values)`.
pub fn read_input(
    request: &InferRequest,
    binary: &[u8],
    input_name: &str,
    expected: &[i64],
    max_rows: usize,
) -> Result<(usize, Vec<f32>), AppError> {
    let [input] = request.inputs.as_slice() else {
        return Err(AppError::bad_request(format!(
            "expected exactly one input tensor ({input_name:?}), got {}",
            request.inputs.len()
        )));
    };
    if input.name != input_name {
        return Err(AppError::bad_request(format!(
            "unknown input {:?}; the model's input is {input_name:?}",
            input.name
        )));
    }
    if input.datatype != "FP32" {
        return Err(AppError::bad_request(format!(
            "input datatype must be FP32, got {:?}",
            input.datatype
        )));
    }
    // Every dimension at least 1 (a dynamic one included: no empty or negative tensors).
    let shape_ok = input.shape.len() == expected.len()
        && input.shape.iter().all(|d| *d >= 1)
        && input.shape[1..]
            .iter()
            .zip(&expected[1..])
            .all(|(got, want)| *want < 0 || got == want);
    if !shape_ok {
        let mut want = expected.to_vec();
        want[0] = -1;
        return Err(AppError::bad_request(format!(
            "input shape must be {want:?} (batch first), got {:?}",
            input.shape
        )));
    }
    let rows = input.shape[0] as usize;
    if rows > max_rows {
        return Err(AppError::bad_request(format!(
            "batch of {rows} exceeds the maximum batch size {max_rows}"
        )));
    }
    let count = input
        .shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d as usize));
    let count = count.ok_or_else(|| AppError::bad_request("input shape is too large"))?;
    let binary_size = input.parameters.as_ref().and_then(|p| p.binary_data_size);
    let values = match (&input.data, binary_size) {
        (Some(data), None) => data.0.clone(),
        (None, Some(size)) => {
            // `count * 4` may overflow for shapes with huge dynamic dimensions.
            if size as usize != binary.len() || count.checked_mul(4) != Some(binary.len()) {
                return Err(AppError::bad_request(format!(
                    "binary_data_size is {size} and {} bytes follow the header; shape {:?} of FP32 needs {}",
                    binary.len(),
                    input.shape,
                    count.saturating_mul(4)
                )));
            }
            binary
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        (Some(_), Some(_)) => {
            return Err(AppError::bad_request(
                "input has both data and binary_data_size",
            ));
        }
        (None, None) => return Err(AppError::bad_request("input has no data")),
    };
    if values.len() != count {
        return Err(AppError::bad_request(format!(
            "input shape {:?} needs {count} values, data has {}",
            input.shape,
            values.len()
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(AppError::bad_request(
            "input data contains NaN or infinite values",
        ));
    }
    Ok((rows, values))
}
