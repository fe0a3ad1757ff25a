//! How users reach a pipeline: a Gateway API `HTTPRoute`, or an `Ingress`, under the
//! pipeline's path prefix.

use gateway_api::apis::standard::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs,
    HttpRouteRulesFilters, HttpRouteRulesFiltersType, HttpRouteRulesFiltersUrlRewrite,
    HttpRouteRulesFiltersUrlRewritePath, HttpRouteRulesFiltersUrlRewritePathType,
    HttpRouteRulesMatches, HttpRouteRulesMatchesPath, HttpRouteRulesMatchesPathType, HttpRouteSpec,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use kube::ResourceExt;

use super::identity::{ROUTE, upload_name};
use crate::build::meta::object_meta;
use crate::build::pod::PORT;
use crate::crd::RecognitionPipeline;

/// The pipeline's path prefix without its trailing slash (`""` for the root).
pub fn prefix(p: &RecognitionPipeline) -> String {
    let prefix = p.spec.gateway.path_prefix.clone().unwrap_or_default();
    prefix.trim_end_matches('/').to_string()
}

/// The Gateway API route, when the spec names parent Gateways: one rule sending every path
/// under the prefix to the upload Service — the pipeline's front door, which checks keys
/// and limits and calls recognize and store inside the cluster — with the prefix replaced
/// by `/`, so the server sees the paths it declares.
pub fn http_route(p: &RecognitionPipeline) -> Option<HttpRoute> {
    let g = &p.spec.gateway;
    if g.parent_refs.is_empty() {
        return None;
    }
    let prefix = prefix(p);
    let rewrite = (!prefix.is_empty()).then(|| HttpRouteRulesFilters {
        r#type: HttpRouteRulesFiltersType::UrlRewrite,
        url_rewrite: Some(HttpRouteRulesFiltersUrlRewrite {
            hostname: None,
            path: Some(HttpRouteRulesFiltersUrlRewritePath {
                r#type: HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch,
                replace_prefix_match: Some("/".into()),
                replace_full_path: None,
            }),
        }),
        cors: None,
        extension_ref: None,
        request_header_modifier: None,
        request_mirror: None,
        request_redirect: None,
        response_header_modifier: None,
    });
    let rule = HttpRouteRules {
        matches: Some(vec![HttpRouteRulesMatches {
            path: Some(HttpRouteRulesMatchesPath {
                r#type: Some(HttpRouteRulesMatchesPathType::PathPrefix),
                value: Some(if prefix.is_empty() {
                    "/".into()
                } else {
                    prefix
                }),
            }),
            ..HttpRouteRulesMatches::default()
        }]),
        filters: rewrite.map(|f| vec![f]),
        backend_refs: Some(vec![HttpRouteRulesBackendRefs {
            name: upload_name(p),
            port: Some(PORT),
            ..HttpRouteRulesBackendRefs::default()
        }]),
        ..HttpRouteRules::default()
    };
    let mut route = HttpRoute::new(
        &p.name_any(),
        HttpRouteSpec {
            parent_refs: Some(
                g.parent_refs
                    .iter()
                    .map(|r| HttpRouteParentRefs {
                        name: r.name.clone(),
                        namespace: r.namespace.clone(),
                        section_name: r.section_name.clone(),
                        ..HttpRouteParentRefs::default()
                    })
                    .collect(),
            ),
            hostnames: (!g.hostnames.is_empty()).then(|| g.hostnames.clone()),
            rules: Some(vec![rule]),
        },
    );
    route.metadata = object_meta(p, &p.name_any(), ROUTE);
    Some(route)
}

/// The Ingress, when the spec asks for one instead of an HTTPRoute: every path to the
/// upload Service (the front door). An Ingress has no portable path rewrite, so
/// validation refuses a `pathPrefix` other than `/` with one.
pub fn ingress(p: &RecognitionPipeline) -> Option<Ingress> {
    let g = &p.spec.gateway;
    let spec = g.ingress.as_ref()?;
    let paths = vec![HTTPIngressPath {
        path: Some("/".into()),
        path_type: "Prefix".into(),
        backend: IngressBackend {
            service: Some(IngressServiceBackend {
                name: upload_name(p),
                port: Some(ServiceBackendPort {
                    number: Some(PORT),
                    name: None,
                }),
            }),
            resource: None,
        },
    }];
    let hosts: Vec<Option<String>> = if g.hostnames.is_empty() {
        vec![None]
    } else {
        g.hostnames.iter().cloned().map(Some).collect()
    };
    Some(Ingress {
        metadata: object_meta(p, &p.name_any(), ROUTE),
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(
                hosts
                    .into_iter()
                    .map(|host| IngressRule {
                        host,
                        http: Some(HTTPIngressRuleValue {
                            paths: paths.clone(),
                        }),
                    })
                    .collect(),
            ),
            tls: spec.tls_secret.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(g.hostnames.clone()),
                    secret_name: Some(secret.clone()),
                }]
            }),
            ..IngressSpec::default()
        }),
        status: None,
    })
}
