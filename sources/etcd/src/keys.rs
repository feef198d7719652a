//! Splits a key of the Kubernetes keyspace into resource, namespace and name.
//!
//! The API server stores an object at `<prefix><resource>/<namespace>/<name>`, a cluster-scoped
//! one at `<prefix><resource>/<name>`. Resources of API groups other than the built-in ones
//! carry their group first (`apiregistration.k8s.io/apiservices/<name>`, a custom resource at
//! `<group>/<plural>/<namespace>/<name>`), recognised by the dot in a group's name; a few
//! built-in resources keep a further segment before the namespace (`services/specs/…`,
//! `services/endpoints/…`), which stays part of the resource.

/// The parts of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyParts {
    /// The resource, e.g. `pods`, `apiregistration.k8s.io/apiservices`, `services/specs`.
    pub resource: String,
    /// The namespace; empty for a cluster-scoped object.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

/// The parts of `key` under `prefix`; `None` when it is not under the prefix or has no name
/// after its resource. A key that is not UTF-8 is read with its bad bytes replaced.
pub fn split_key(prefix: &str, key: &[u8]) -> Option<KeyParts> {
    let key = String::from_utf8_lossy(key);
    let rest = key.strip_prefix(prefix)?;
    let segments: Vec<&str> = rest.split('/').filter(|part| !part.is_empty()).collect();
    let (group, after_group) = match segments.first() {
        Some(first) if first.contains('.') && segments.len() >= 3 => (Some(*first), &segments[1..]),
        _ => (None, &segments[..]),
    };
    let (resource, path) = after_group.split_first()?;
    let (name, before_name) = path.split_last()?;
    let (namespace, middle) = match before_name.split_last() {
        Some((namespace, middle)) => (*namespace, middle),
        None => ("", &[][..]),
    };
    let mut full = String::new();
    if let Some(group) = group {
        full.push_str(group);
        full.push('/');
    }
    full.push_str(resource);
    for part in middle {
        full.push('/');
        full.push_str(part);
    }
    Some(KeyParts {
        resource: full,
        namespace: namespace.to_string(),
        name: (*name).to_string(),
    })
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte that is
/// not 0xff increased by one (etcd's "prefix end"); `\0` (every key) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(key: &str) -> Option<(String, String, String)> {
        split_key("/registry/", key.as_bytes()).map(|p| (p.resource, p.namespace, p.name))
    }

    fn some(resource: &str, namespace: &str, name: &str) -> Option<(String, String, String)> {
        Some((resource.into(), namespace.into(), name.into()))
    }

    #[test]
    fn namespaced_and_cluster_scoped_objects() {
        assert_eq!(
            parts("/registry/configmaps/default/app-config"),
            some("configmaps", "default", "app-config")
        );
        assert_eq!(
            parts("/registry/namespaces/kube-system"),
            some("namespaces", "", "kube-system")
        );
        assert_eq!(
            parts("/registry/minions/node-1"),
            some("minions", "", "node-1")
        );
    }

    #[test]
    fn groups_and_extra_segments_stay_in_the_resource() {
        assert_eq!(
            parts("/registry/apiregistration.k8s.io/apiservices/v1.apps"),
            some("apiregistration.k8s.io/apiservices", "", "v1.apps")
        );
        assert_eq!(
            parts("/registry/example.com/widgets/team-a/w1"),
            some("example.com/widgets", "team-a", "w1")
        );
        assert_eq!(
            parts("/registry/services/specs/default/kubernetes"),
            some("services/specs", "default", "kubernetes")
        );
    }

    #[test]
    fn keys_outside_the_prefix_or_without_a_name_are_not_objects() {
        assert_eq!(parts("/other/pods/default/p"), None);
        assert_eq!(parts("/registry/pods"), None);
        assert_eq!(parts("/registry/"), None);
        assert_eq!(
            split_key("/registry/", b"/registry/pods/ns/\xffbad").map(|p| p.name),
            Some("\u{fffd}bad".into())
        );
    }

    #[test]
    fn prefix_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/registry/"), b"/registry0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
