//! SIMULATION of a network plugin that enforces NetworkPolicy, small and explicit, so a
//! connectivity matrix can be computed from the objects the operator renders. It follows
//! the Kubernetes documentation, "Network Policies"
//! (kubernetes.io/docs/concepts/services-networking/network-policies), rule by rule:
//!
//! - A pod is isolated for ingress (egress) when some policy in its namespace selects it
//!   with `Ingress` (`Egress`) among its `policyTypes`; `policyTypes` left out means
//!   `Ingress`, plus `Egress` when the policy has egress rules.
//! - A non-isolated direction allows everything; an isolated one allows exactly the union
//!   of the rules of every policy that selects the pod ("policies are additive"); a policy
//!   with no rules for a direction (default deny) allows nothing.
//! - A connection is allowed when the source's egress **and** the destination's ingress
//!   allow it (an address outside the cluster has no policy of its own).
//! - A rule with no `from`/`to` admits every peer; with no `ports`, every port.
//! - A peer's `podSelector` alone selects pods in the policy's namespace; a
//!   `namespaceSelector` alone, every pod of the namespaces it selects; both together,
//!   the pods that match both; an empty selector selects everything.
//! - `ipBlock` selects addresses in `cidr` and in none of `except`. The docs leave open
//!   whether a pod's own address matches an `ipBlock` ("cluster ingress and egress
//!   mechanisms often require rewriting the source or destination IP"), so here it matches
//!   only addresses outside the cluster: a policy that relies on it for a pod would be
//!   non-portable and fails the matrix.
//! - A port is a number or a name (the destination pod's container port name), with an
//!   optional `endPort`; the protocol defaults to TCP.
//! - Label selectors: `matchLabels` and `matchExpressions` (`In`, `NotIn`, `Exists`,
//!   `DoesNotExist`), all of them ANDed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub type Labels = BTreeMap<String, String>;

/// A port an endpoint listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: Option<String>,
    pub number: i32,
    pub protocol: &'static str,
}

pub fn tcp(number: i32) -> Port {
    Port {
        name: None,
        number,
        protocol: "TCP",
    }
}

/// Something that connects or is connected to.
#[derive(Debug, Clone)]
pub enum Where {
    /// A pod: its namespace (with the namespace's labels) and its own labels.
    Pod {
        namespace: String,
        namespace_labels: Labels,
        labels: Labels,
    },
    /// An address outside the cluster's pod network (a node, a managed control plane,
    /// the internet).
    Address(IpAddr),
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub at: Where,
    pub ports: Vec<Port>,
}

impl Endpoint {
    /// A pod in namespace `namespace` (labelled `kubernetes.io/metadata.name`, as the API
    /// server labels every namespace).
    pub fn pod(name: &str, namespace: &str, labels: Labels, ports: Vec<Port>) -> Endpoint {
        Endpoint {
            name: name.into(),
            at: Where::Pod {
                namespace: namespace.into(),
                namespace_labels: Labels::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    namespace.to_string(),
                )]),
                labels,
            },
            ports,
        }
    }

    pub fn address(name: &str, ip: &str, ports: Vec<Port>) -> Endpoint {
        Endpoint {
            name: name.into(),
            at: Where::Address(ip.parse().expect("ip")),
            ports,
        }
    }
}

/// Whether `selector` selects `labels` (`None` selects nothing; `{}` everything).
pub fn selects(selector: &LabelSelector, labels: &Labels) -> bool {
    let plain = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown selector operator {other}"),
        }
    });
    plain && expressions
}

/// `ip` in `cidr` (IPv4 or IPv6).
fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (base, bits) = cidr.split_once('/').expect("cidr");
    let base: IpAddr = base.parse().expect("cidr address");
    let bits: u32 = bits.parse().expect("cidr bits");
    match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

fn in_block(block: &IPBlock, at: &Where) -> bool {
    match at {
        Where::Address(ip) => {
            in_cidr(*ip, &block.cidr) && !block.except.iter().flatten().any(|e| in_cidr(*ip, e))
        }
        Where::Pod { .. } => false,
    }
}

/// Whether `peer` of a policy in `policy_ns` selects `at`.
fn peer_selects(peer: &NetworkPolicyPeer, policy_ns: &str, at: &Where) -> bool {
    if let Some(block) = &peer.ip_block {
        return in_block(block, at);
    }
    let Where::Pod {
        namespace,
        namespace_labels,
        labels,
    } = at
    else {
        return false;
    };
    let namespace_ok = match &peer.namespace_selector {
        Some(selector) => selects(selector, namespace_labels),
        None => namespace == policy_ns,
    };
    let pod_ok = peer
        .pod_selector
        .as_ref()
        .is_none_or(|selector| selects(selector, labels));
    namespace_ok && pod_ok
}

/// Whether rule `ports` admit `port` of the destination.
fn port_admitted(ports: Option<&Vec<NetworkPolicyPort>>, port: &Port) -> bool {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return true;
    };
    ports.iter().any(|p| {
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        let number = match &p.port {
            None => true,
            Some(IntOrString::Int(n)) => match p.end_port {
                Some(end) => (*n..=end).contains(&port.number),
                None => *n == port.number,
            },
            Some(IntOrString::String(name)) => port.name.as_deref() == Some(name),
        };
        protocol == port.protocol && number
    })
}

/// The policies of `ns` that select a pod labelled `labels` for `direction`.
fn isolating<'a>(
    policies: &'a [NetworkPolicy],
    ns: &str,
    labels: &Labels,
    direction: &str,
) -> Vec<&'a NetworkPolicy> {
    policies
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .filter(|p| {
            let spec = p.spec.as_ref().expect("spec");
            let types = match &spec.policy_types {
                Some(types) => types.clone(),
                None if spec.egress.is_some() => vec!["Ingress".into(), "Egress".into()],
                None => vec!["Ingress".into()],
            };
            types.iter().any(|t| t == direction)
                && selects(spec.pod_selector.as_ref().expect("podSelector"), labels)
        })
        .collect()
}

/// A rule's ports and peers (`from` or `to`).
type Rule<'a> = (
    Option<&'a Vec<NetworkPolicyPort>>,
    Option<&'a Vec<NetworkPolicyPeer>>,
);

/// Whether the policies isolating `pod` for `direction` (`Ingress`: `other` connects to
/// it; `Egress`: it connects to `other`) let the connection to `port` through.
fn side_allows(
    policies: &[NetworkPolicy],
    pod: &Where,
    other: &Where,
    port: &Port,
    direction: &str,
) -> bool {
    let Where::Pod {
        namespace, labels, ..
    } = pod
    else {
        return true;
    };
    let selecting = isolating(policies, namespace, labels, direction);
    selecting.is_empty()
        || selecting.iter().any(|p| {
            let spec = p.spec.as_ref().expect("spec");
            let rules: Vec<Rule> = if direction == "Ingress" {
                spec.ingress
                    .iter()
                    .flatten()
                    .map(|r| (r.ports.as_ref(), r.from.as_ref()))
                    .collect()
            } else {
                spec.egress
                    .iter()
                    .flatten()
                    .map(|r| (r.ports.as_ref(), r.to.as_ref()))
                    .collect()
            };
            rules.into_iter().any(|(ports, peers)| {
                port_admitted(ports, port)
                    && peers.filter(|peers| !peers.is_empty()).is_none_or(|peers| {
                        peers
                            .iter()
                            .any(|peer| peer_selects(peer, namespace, other))
                    })
            })
        })
}

/// Whether `policies` let `from` open a connection to `port` of `to`.
pub fn allowed(policies: &[NetworkPolicy], from: &Endpoint, to: &Endpoint, port: &Port) -> bool {
    side_allows(policies, &from.at, &to.at, port, "Egress")
        && side_allows(policies, &to.at, &from.at, port, "Ingress")
}

/// Every `(source, destination, port)` the policies allow among `endpoints`, for the
/// pairs where `ours` names the source or the destination, as `"from -> to:port/proto"`.
pub fn matrix(
    policies: &[NetworkPolicy],
    endpoints: &[Endpoint],
    ours: &[&str],
) -> std::collections::BTreeSet<String> {
    let mut open = std::collections::BTreeSet::new();
    for from in endpoints {
        for to in endpoints {
            if from.name == to.name
                || !(ours.contains(&from.name.as_str()) || ours.contains(&to.name.as_str()))
            {
                continue;
            }
            for port in &to.ports {
                if allowed(policies, from, to, port) {
                    open.insert(format!(
                        "{} -> {}:{}/{}",
                        from.name, to.name, port.number, port.protocol
                    ));
                }
            }
        }
    }
    open
}
