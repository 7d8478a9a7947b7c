//! Label and field selectors as the fake API server evaluates them.
//!
//! - Label selectors follow "Labels and Selectors" (*Label selectors*): equality-based terms
//!   (`k=v`, `k==v`, `k!=v`) and set-based ones (`k in (a,b)`, `k notin (a,b)`, `k`, `!k`),
//!   comma-separated, all of which must hold.
//! - Field selectors follow "Field Selectors": `=`, `==` and `!=` on a field the resource
//!   supports (every resource: `metadata.name`, `metadata.namespace`; pods: `spec.nodeName`,
//!   `status.phase` and a few more; nodes: `spec.unschedulable`). Any other field is a
//!   `400 Bad Request`, as the API server answers.

use std::collections::BTreeMap;

use serde_json::Value;

/// One term of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelTerm {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelTerm>);

/// Splits at commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn set_values(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).collect())
}

impl LabelSelector {
    /// Parses `s` (empty selects everything).
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut terms = Vec::new();
        for term in split_terms(s) {
            let parsed = if let Some((k, v)) = term.split_once("!=") {
                LabelTerm::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                LabelTerm::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once(" notin ") {
                LabelTerm::NotIn(k.trim().into(), set_values(v).ok_or(format!("bad set in '{term}'"))?)
            } else if let Some((k, v)) = term.split_once(" in ") {
                LabelTerm::In(k.trim().into(), set_values(v).ok_or(format!("bad set in '{term}'"))?)
            } else if let Some(k) = term.strip_prefix('!') {
                LabelTerm::NotExists(k.trim().into())
            } else if term.contains([' ', '(', ')']) {
                return Err(format!("unable to parse requirement: '{term}'"));
            } else {
                LabelTerm::Exists(term.into())
            };
            terms.push(parsed);
        }
        Ok(LabelSelector(terms))
    }

    /// Whether `labels` satisfy every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|t| match t {
            LabelTerm::Eq(k, v) => labels.get(k) == Some(v),
            LabelTerm::NotEq(k, v) => labels.get(k) != Some(v),
            LabelTerm::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelTerm::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            LabelTerm::Exists(k) => labels.contains_key(k),
            LabelTerm::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// The fields `resource` may be selected by, and the JSON pointer of each.
fn field_pointer(resource: &str, field: &str) -> Option<&'static str> {
    let common = match field {
        "metadata.name" => Some("/metadata/name"),
        "metadata.namespace" => Some("/metadata/namespace"),
        _ => None,
    };
    common.or(match (resource, field) {
        ("pods", "spec.nodeName") => Some("/spec/nodeName"),
        ("pods", "spec.restartPolicy") => Some("/spec/restartPolicy"),
        ("pods", "spec.serviceAccountName") => Some("/spec/serviceAccountName"),
        ("pods", "status.phase") => Some("/status/phase"),
        ("pods", "status.podIP") => Some("/status/podIP"),
        ("nodes", "spec.unschedulable") => Some("/spec/unschedulable"),
        ("secrets", "type") => Some("/type"),
        _ => None,
    })
}

impl FieldSelector {
    /// Parses `s` for `resource`.
    pub fn parse(resource: &str, s: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{term}'; can't understand '{term}'"));
            };
            if field_pointer(resource, field.trim()).is_none() {
                return Err(format!("field label not supported: {}", field.trim()));
            }
            terms.push((field.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether `object` of `resource` satisfies every term.
    pub fn matches(&self, resource: &str, object: &Value) -> bool {
        self.0.iter().all(|(field, eq, want)| {
            let have = field_pointer(resource, field)
                .and_then(|p| object.pointer(p))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Bool(b) => b.to_string(),
                    other => other.to_string(),
                })
                // An unset boolean field selects as "false", an unset string as "".
                .unwrap_or_else(|| if field == "spec.unschedulable" { "false".into() } else { String::new() });
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_selectors() {
        let l = labels(&[("a", "1"), ("b", "2")]);
        for (sel, want) in [
            ("", true),
            ("a=1", true),
            ("a==1,b=2", true),
            ("a=1,b=3", false),
            ("a!=2", true),
            ("c!=2", true),
            ("a in (1,3),b notin (3)", true),
            ("a in (3)", false),
            ("a", true),
            ("!c", true),
            ("!a", false),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&l), want, "{sel}");
        }
        assert!(LabelSelector::parse("a b").is_err());
    }

    #[test]
    fn field_selectors() {
        let pod = serde_json::json!({"metadata": {"name": "p"}, "status": {"phase": "Running"}});
        assert!(FieldSelector::parse("pods", "status.phase=Running").unwrap().matches("pods", &pod));
        assert!(!FieldSelector::parse("pods", "status.phase!=Running").unwrap().matches("pods", &pod));
        assert!(FieldSelector::parse("pods", "metadata.name=p,status.phase=Running").unwrap().matches("pods", &pod));
        assert!(FieldSelector::parse("persistentvolumeclaims", "status.phase=Bound").is_err());
        let node = serde_json::json!({"metadata": {"name": "n"}, "spec": {}});
        assert!(FieldSelector::parse("nodes", "spec.unschedulable=false").unwrap().matches("nodes", &node));
    }
}
