//! The servers the bench measures: their names, the path and request body each takes (the
//! JPEG its own natural way), and how the top-1 class is read from each one's answer.

use anyhow::Context;
use bytes::Bytes;

/// A server the bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Sightline,
    KServe,
    BentoMl,
    LitServe,
    PyTriton,
}

impl Server {
    /// The four Python servers, in the order they run.
    pub const PEERS: [Server; 4] = [
        Server::KServe,
        Server::BentoMl,
        Server::LitServe,
        Server::PyTriton,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Server::Sightline => "sightline",
            Server::KServe => "kserve",
            Server::BentoMl => "bentoml",
            Server::LitServe => "litserve",
            Server::PyTriton => "pytriton",
        }
    }

    /// A name as `--peers-list` spells it.
    pub fn parse(name: &str) -> anyhow::Result<Server> {
        Self::PEERS
            .into_iter()
            .find(|s| s.name() == name.trim().to_ascii_lowercase())
            .with_context(|| {
                format!("unknown peer {name:?} (kserve, bentoml, litserve or pytriton)")
            })
    }

    /// Where the server takes a photo.
    pub(super) fn path(self) -> &'static str {
        match self {
            Server::Sightline => "/api/v1/recognize?top_k=5",
            Server::KServe => "/v1/models/efficientnet-lite0:predict",
            Server::BentoMl => "/classify",
            Server::LitServe => "/predict",
            Server::PyTriton => "/v2/models/efficientnet-lite0/infer",
        }
    }

    /// The request for `jpeg`, in this server's own format.
    pub(super) fn request(self, jpeg: &[u8]) -> Request {
        let json = |value: serde_json::Value| Request {
            content_type: "application/json".into(),
            headers: Vec::new(),
            body: Bytes::from(value.to_string()),
        };
        match self {
            Server::Sightline => Request {
                content_type: "image/jpeg".into(),
                headers: Vec::new(),
                body: Bytes::copy_from_slice(jpeg),
            },
            Server::KServe => json(serde_json::json!({
                "instances": [{"image_bytes": {"b64": base64(jpeg)}}]
            })),
            Server::LitServe => json(serde_json::json!({ "image": base64(jpeg) })),
            Server::BentoMl => {
                let boundary = "sightline-bench-peers-boundary";
                let mut body = format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; \
                     filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
                )
                .into_bytes();
                body.extend_from_slice(jpeg);
                body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
                Request {
                    content_type: format!("multipart/form-data; boundary={boundary}"),
                    headers: Vec::new(),
                    body: body.into(),
                }
            }
            Server::PyTriton => {
                let header = serde_json::json!({
                    "inputs": [{
                        "name": "image", "shape": [1, 1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": jpeg.len() + 4}
                    }],
                    "outputs": [
                        {"name": "labels", "parameters": {"binary_data": false}},
                        {"name": "probabilities", "parameters": {"binary_data": false}}
                    ]
                })
                .to_string();
                let mut body = header.clone().into_bytes();
                body.extend_from_slice(&(jpeg.len() as u32).to_le_bytes());
                body.extend_from_slice(jpeg);
                Request {
                    content_type: "application/octet-stream".into(),
                    headers: vec![(
                        "inference-header-content-length".into(),
                        header.len().to_string(),
                    )],
                    body: body.into(),
                }
            }
        }
    }

    /// The top-1 label in one of this server's answers.
    pub fn top1(self, answer: &[u8]) -> anyhow::Result<String> {
        let v: serde_json::Value = serde_json::from_slice(answer).with_context(|| {
            format!(
                "{} answered no JSON: {}",
                self.name(),
                String::from_utf8_lossy(&answer[..answer.len().min(300)])
            )
        })?;
        let label = match self {
            Server::Sightline | Server::LitServe => &v["predictions"][0]["label"],
            Server::KServe => &v["predictions"][0][0]["label"],
            Server::BentoMl => &v[0][0]["label"],
            Server::PyTriton => v["outputs"]
                .as_array()
                .and_then(|outputs| outputs.iter().find(|o| o["name"] == "labels"))
                .map_or(&serde_json::Value::Null, |o| &o["data"][0]),
        };
        label.as_str().map(str::to_string).with_context(|| {
            format!(
                "no top-1 label in {}'s answer: {}",
                self.name(),
                String::from_utf8_lossy(&answer[..answer.len().min(300)])
            )
        })
    }
}

/// One prepared HTTP request body (made once, cloned cheaply per call).
#[derive(Debug, Clone)]
pub(super) struct Request {
    pub(super) content_type: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Bytes,
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
