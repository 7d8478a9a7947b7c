//! What berth writes into Kubernetes object metadata, and the API calls it makes.
//!
//! Label values follow the Kubernetes rules ("Labels and Selectors", *Syntax and character
//! set*): at most 63 characters, empty or beginning and ending with an alphanumeric, with `-`,
//! `_`, `.` and alphanumerics between. berth's own values (an owner key such as `agent:42`) need
//! not follow them, so a value that does not is written as a readable slug plus a hash, and the
//! labels in full go in an annotation, which takes any text.

use std::collections::BTreeMap;

/// Annotation holding every berth label of the object in full, as a JSON object.
pub const ANNOTATION_LABELS: &str = "berth.dev/labels";
/// Annotation holding the owner key in full.
pub const ANNOTATION_OWNER: &str = "berth.dev/owner";

/// Longest label value Kubernetes accepts.
const LABEL_VALUE_MAX: usize = 63;
/// Hex digits of the hash that ends an encoded value.
const HASH_HEX: usize = 12;

/// One kind of call to the Kubernetes API: a verb (as RBAC names it) on a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiCall {
    /// The RBAC verb: `get`, `list`, `watch`, `create`, `delete`, `patch`, `update`.
    pub verb: &'static str,
    /// The resource (plural, as in the URL path), in the core API group.
    pub resource: &'static str,
}

const fn call(verb: &'static str, resource: &'static str) -> ApiCall {
    ApiCall { verb, resource }
}

/// Every (verb, resource) the adapter calls, all in the core API group (`""`): nodes are
/// cluster-scoped (a ClusterRole, needed with `--watch-nodes` only), the rest are in the
/// server's namespace (a Role). Granting exactly these is enough, and the fake API server fails
/// a test that makes any other call.
pub const API_CALLS: &[ApiCall] = &[
    call("create", "persistentvolumeclaims"),
    call("delete", "persistentvolumeclaims"),
    call("get", "persistentvolumeclaims"),
    call("list", "persistentvolumeclaims"),
    call("watch", "persistentvolumeclaims"),
    call("list", "pods"),
    // Sandbox pods and the Secrets holding their private files.
    call("create", "pods"),
    call("get", "pods"),
    call("delete", "pods"),
    call("watch", "pods"),
    // Naming a claimed warm pod (an annotation).
    call("patch", "pods"),
    call("get", "pods/log"),
    call("create", "secrets"),
    call("delete", "secrets"),
    // Cluster-scoped, with --watch-nodes only (a ClusterRole).
    call("list", "nodes"),
    call("watch", "nodes"),
];

/// Returns `value` as a valid label value: itself when it is one, otherwise a slug of it (its
/// alphanumerics, `-`, `_` and `.`, others as `-`) cut to leave room for `-` and a hash of the
/// whole value. Two different values map to different label values unless 48 bits of BLAKE3
/// collide; the annotation holds the value in full and is what berth compares.
pub fn label_value(value: &str) -> String {
    if is_label_value(value) {
        return value.to_string();
    }
    let hash = blake3::hash(value.as_bytes()).to_hex();
    let mut slug: String = value
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .take(LABEL_VALUE_MAX - HASH_HEX - 1)
        .collect();
    while slug.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        slug.pop();
    }
    let slug = slug.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    if slug.is_empty() {
        format!("h{}", &hash[..HASH_HEX])
    } else {
        format!("{slug}-{}", &hash[..HASH_HEX])
    }
}

/// Whether `value` is a valid label value.
pub(crate) fn is_label_value(value: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    value.is_empty()
        || (value.len() <= LABEL_VALUE_MAX
            && value.chars().all(ok_char)
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Whether `key` is a valid label key: an optional DNS-1123 subdomain prefix and `/`, then a
/// name of at most 63 alphanumerics, `-`, `_` and `.`, alphanumeric at both ends.
pub(crate) fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// The Kubernetes labels for berth's `labels`: every key that is a valid label key, with its
/// value made a valid label value. Keys that are not valid stay in the annotation only.
pub(crate) fn kube_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().filter(|(k, _)| is_label_key(k)).map(|(k, v)| (k.clone(), label_value(v))).collect()
}

/// The annotations holding `labels` and the owner in full.
pub(crate) fn annotations(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    // Serialising a map of strings cannot fail.
    out.insert(ANNOTATION_LABELS.to_string(), serde_json::to_string(labels).unwrap_or_default());
    if let Some(owner) = labels.get(berth_substrate::LABEL_OWNER) {
        out.insert(ANNOTATION_OWNER.to_string(), owner.clone());
    }
    out
}

/// berth's labels of an object: the annotation when it holds them, else the Kubernetes labels
/// (an object berth did not create).
pub(crate) fn berth_labels(
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    annotations
        .and_then(|a| a.get(ANNOTATION_LABELS))
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_else(|| labels.cloned().unwrap_or_default())
}

/// The label selector (`k=v,...`) for berth's `selector`, in Kubernetes labels. A key that is
/// not a valid label key cannot be selected by the server: it is left out, and the caller
/// filters on the annotation.
pub(crate) fn selector(selector: &BTreeMap<String, String>) -> String {
    kube_labels(selector).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_follow_the_rules() {
        for v in ["", "true", "agent-42", "a.b_c", "7"] {
            assert_eq!(label_value(v), v);
        }
        for v in ["agent:42", "-x", "x-", "a b", &"y".repeat(64), ":::", "é"] {
            let out = label_value(v);
            assert!(is_label_value(&out), "{v:?} gave {out:?}");
            assert!(!out.is_empty());
        }
        assert!(label_value("agent:42").starts_with("agent-42-"));
        assert_ne!(label_value("agent:42"), label_value("agent;42"));
        assert_eq!(label_value("agent:42"), label_value("agent:42"));
    }

    #[test]
    fn label_keys_follow_the_rules() {
        for k in ["berth.managed", "berth-test-run", "app.kubernetes.io/name", "a"] {
            assert!(is_label_key(k), "{k}");
        }
        for k in ["", "/x", "Bad_Prefix/x", "x/", "a b", &"k".repeat(64), "-x"] {
            assert!(!is_label_key(k), "{k}");
        }
    }

    #[test]
    fn labels_round_trip_through_the_annotation() {
        let labels: BTreeMap<String, String> = [
            (berth_substrate::LABEL_OWNER.to_string(), "agent:42".to_string()),
            ("bad key".to_string(), "v".to_string()),
        ]
        .into();
        let kube = kube_labels(&labels);
        assert_eq!(kube.len(), 1);
        assert!(is_label_value(&kube[berth_substrate::LABEL_OWNER]));
        let ann = annotations(&labels);
        assert_eq!(ann[ANNOTATION_OWNER], "agent:42");
        assert_eq!(berth_labels(Some(&kube), Some(&ann)), labels);
        assert_eq!(berth_labels(Some(&kube), None), kube);
    }
}
