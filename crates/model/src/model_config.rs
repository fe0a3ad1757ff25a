//! How a model wants its input: size, layout, resize policy, scaling and normalisation.
//!
//! A model ships a JSON sidecar (`<model>.json`, written by `models/build.py`) with these
//! fields; command-line flags override single fields. Everything here is plain data plus
//! validation, so it is cheap to test.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Memory layout of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    /// `[batch, channels, height, width]` (PyTorch, most ONNX exports).
    #[cfg_attr(feature = "clap", value(name = "nchw"))]
    Nchw,
    /// `[batch, height, width, channels]` (TensorFlow exports).
    #[cfg_attr(feature = "clap", value(name = "nhwc"))]
    Nhwc,
}

/// How an image of any shape becomes `size × size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ResizePolicy {
    /// Scale the shorter side to `size / crop_fraction`, then take the centred `size × size`
    /// square (the ImageNet evaluation convention).
    ShorterSideCrop,
    /// Scale both sides to `size`, ignoring the aspect ratio.
    Stretch,
}

/// Channel order the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "UPPERCASE")]
pub enum Channels {
    #[cfg_attr(feature = "clap", value(name = "rgb"))]
    Rgb,
    #[cfg_attr(feature = "clap", value(name = "bgr"))]
    Bgr,
}

/// What the model's output row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    /// Decide at warm-up: rows that are already probability distributions are used as they
    /// are, anything else gets a softmax.
    #[default]
    Auto,
    /// Unnormalised scores: apply softmax.
    Logits,
    /// Already probabilities (the graph ends in Softmax).
    Probabilities,
}

/// The preprocessing contract of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Preprocess {
    /// Side of the square input, in pixels.
    pub size: u32,
    pub layout: Layout,
    pub resize: ResizePolicy,
    /// For `shorter-side-crop`: the share of the shorter side kept by the centre crop.
    pub crop_fraction: f32,
    pub channels: Channels,
    /// Multiplies each 8-bit sample before normalisation (1/255 maps to 0..1).
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Preprocess {
    /// ImageNet conventions: 224, NCHW, resize 256 + centre crop, RGB, 0..1, ImageNet mean/std.
    fn default() -> Self {
        Preprocess {
            size: 224,
            layout: Layout::Nchw,
            resize: ResizePolicy::ShorterSideCrop,
            crop_fraction: 0.875,
            channels: Channels::Rgb,
            scale: 1.0 / 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

/// The sidecar file next to a model: its preprocessing plus tensor names and output kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ModelSidecar {
    pub name: Option<String>,
    /// Input tensor name; the model's only input when absent.
    pub input: Option<String>,
    /// Output tensor name; the model's first output when absent.
    pub output: Option<String>,
    pub output_kind: Option<OutputKind>,
    /// Legacy spelling of `output_kind`: `true` = probabilities, `false` = logits.
    pub softmax: Option<bool>,
    #[serde(flatten)]
    pub preprocess: Preprocess,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read model config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("model config {path} is not valid JSON for a model sidecar: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("invalid preprocessing: {0}")]
    Invalid(String),
}

impl ModelSidecar {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let sidecar: ModelSidecar =
            serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.display().to_string(),
                source,
            })?;
        sidecar.preprocess.validate()?;
        Ok(sidecar)
    }

    pub fn output_kind(&self) -> OutputKind {
        match (self.output_kind, self.softmax) {
            (Some(kind), _) => kind,
            (None, Some(true)) => OutputKind::Probabilities,
            (None, Some(false)) => OutputKind::Logits,
            (None, None) => OutputKind::Auto,
        }
    }
}

/// Changes whenever the same settings would turn the same bytes into another tensor (the
/// reduced-scale JPEG decode is part of how an image becomes a tensor).
const DIGEST_VERSION: &[u8] = b"sightline-preprocess-v1 jpeg-dct-scaling\0";

impl Preprocess {
    /// SHA-256 (hex) of these settings and of how an image becomes a tensor. With the
    /// model's digest it says whether a kept answer is this model's answer for the same
    /// bytes: the result cache's keys, the store's records and a batch run's lines carry it.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(DIGEST_VERSION);
        // Every field, floats in their shortest exact form: equal settings, equal text.
        hasher.update(format!("{self:?}").as_bytes());
        hex::encode(hasher.finalize())
    }

    /// Rejects values that would make preprocessing meaningless or unbounded.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !(1..=4096).contains(&self.size) {
            return invalid("size must be between 1 and 4096 pixels");
        }
        if !(self.crop_fraction > 0.0 && self.crop_fraction <= 1.0) {
            return invalid("crop_fraction must be in (0, 1]");
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return invalid("scale must be a finite, non-zero number");
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return invalid("mean must be finite");
        }
        if self.std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return invalid("std must be finite and positive");
        }
        Ok(())
    }

    /// Number of `f32` values in one preprocessed image.
    pub fn tensor_len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }

    /// Shape of a batch of `n` images in this layout.
    pub fn batch_shape(&self, n: usize) -> [usize; 4] {
        let s = self.size as usize;
        match self.layout {
            Layout::Nchw => [n, 3, s, s],
            Layout::Nhwc => [n, s, s, 3],
        }
    }
}

/// Parses `a,b,c` into three floats (for `--mean` and `--std`).
pub fn parse_triple(text: &str) -> Result<[f32; 3], String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.len() != 3 {
        return Err(format!(
            "expected three comma-separated numbers, got {text:?}"
        ));
    }
    let mut out = [0.0; 3];
    for (slot, part) in out.iter_mut().zip(parts) {
        *slot = part
            .parse()
            .map_err(|_| format!("{part:?} is not a number"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_imagenet() {
        let p = Preprocess::default();
        assert_eq!(p.size, 224);
        assert_eq!(p.batch_shape(2), [2, 3, 224, 224]);
        assert!(p.validate().is_ok());
    }

    #[test]
    fn sidecar_parses_the_models_json() {
        let json = r#"{"name":"t","input":"input","output":"probabilities","size":32,
            "resize":"stretch","crop_fraction":1.0,"layout":"NHWC","channels":"BGR",
            "scale":0.5,"mean":[0,0,0],"std":[1,1,1],"softmax":true}"#;
        let s: ModelSidecar = serde_json::from_str(json).expect("parses");
        assert_eq!(s.preprocess.size, 32);
        assert_eq!(s.preprocess.layout, Layout::Nhwc);
        assert_eq!(s.preprocess.channels, Channels::Bgr);
        assert_eq!(s.preprocess.resize, ResizePolicy::Stretch);
        assert_eq!(s.output_kind(), OutputKind::Probabilities);
        assert_eq!(s.preprocess.batch_shape(1), [1, 32, 32, 3]);
    }

    #[test]
    fn invalid_values_are_rejected() {
        let mut p = Preprocess {
            std: [1.0, 0.0, 1.0],
            ..Preprocess::default()
        };
        assert!(p.validate().is_err());
        p = Preprocess {
            size: 0,
            ..Preprocess::default()
        };
        assert!(p.validate().is_err());
        p = Preprocess {
            crop_fraction: 1.5,
            ..Preprocess::default()
        };
        assert!(p.validate().is_err());
    }

    #[test]
    fn the_digest_changes_with_every_setting_and_only_with_them() {
        let p = Preprocess::default();
        assert_eq!(p.digest(), Preprocess::default().digest());
        assert_eq!(p.digest().len(), 64);
        let others = [
            Preprocess {
                size: 225,
                ..p.clone()
            },
            Preprocess {
                layout: Layout::Nhwc,
                ..p.clone()
            },
            Preprocess {
                resize: ResizePolicy::Stretch,
                ..p.clone()
            },
            Preprocess {
                crop_fraction: 0.9,
                ..p.clone()
            },
            Preprocess {
                channels: Channels::Bgr,
                ..p.clone()
            },
            Preprocess {
                scale: 1.0,
                ..p.clone()
            },
            Preprocess {
                mean: [0.5, 0.456, 0.406],
                ..p.clone()
            },
            Preprocess {
                std: [0.229, 0.224, 0.226],
                ..p.clone()
            },
        ];
        let mut seen = std::collections::HashSet::from([p.digest()]);
        for other in others {
            assert!(seen.insert(other.digest()), "{other:?}");
        }
    }

    #[test]
    fn triples_parse_and_reject() {
        assert_eq!(parse_triple("0.5, 0.25,1").expect("ok"), [0.5, 0.25, 1.0]);
        assert!(parse_triple("1,2").is_err());
        assert!(parse_triple("a,b,c").is_err());
    }
}
