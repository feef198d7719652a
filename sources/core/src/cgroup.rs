//! Container identity from cgroup paths: a pure parser.
//!
//! Kubernetes puts every container in a cgroup whose path names the pod and the container.
//! The shapes differ by cgroup driver and runtime, for cgroup v1 and v2 alike:
//!
//! | driver | example (leaf last) |
//! | --- | --- |
//! | cgroupfs | `/kubepods/burstable/pod<uid>/<64-hex id>`, `/kubepods/pod<uid>/<id>` |
//! | systemd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope` (also `crio-<id>.scope`, `docker-<id>.scope`) |
//! | systemd names under cgroupfs runc | `…/kubepods-burstable-pod<uid>.slice:cri-containerd:<id>` |
//! | plain Docker | `/docker/<id>`, `/system.slice/docker-<id>.scope` |
//!
//! The parser walks the components from the leaf up; the first one that names a container
//! gives the container id, and a pod component at or above it gives the pod uid. CRI-O's
//! `crio-conmon-<id>.scope` (its monitor process) is not a container.

/// A container and, when it runs in a Kubernetes pod, the pod's uid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    /// Runtime container id (64 hex digits).
    pub container_id: std::sync::Arc<str>,
    /// Pod uid with dashes (`1b2c3d4e-5f6a-...`), when the path names a pod.
    pub pod_uid: Option<String>,
}

/// Parses a cgroup path (`/a/b/c`, or relative) into a container reference.
///
/// ```
/// use tapio_sources::cgroup::parse_path;
/// let id = "c".repeat(64);
/// let parsed = parse_path(&format!("/kubepods/burstable/pod1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e/{id}")).unwrap();
/// assert_eq!(&*parsed.container_id, id.as_str());
/// assert_eq!(parsed.pod_uid.as_deref(), Some("1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e"));
/// ```
pub fn parse_path(path: &str) -> Option<ContainerRef> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    parse_leaf_first(components.iter().rev().copied())
}

/// Parses cgroup directory names given leaf first (as the kernel probes read them).
pub fn parse_names<'a>(leaf_first: impl IntoIterator<Item = &'a str>) -> Option<ContainerRef> {
    parse_leaf_first(
        leaf_first
            .into_iter()
            .filter(|name| !name.is_empty() && *name != "/"),
    )
}

fn parse_leaf_first<'a>(components: impl Iterator<Item = &'a str>) -> Option<ContainerRef> {
    let mut container: Option<String> = None;
    for component in components {
        let (id, pod) = parse_component(component);
        if container.is_none() {
            if let Some(id) = id {
                if pod.is_some() {
                    return Some(ContainerRef {
                        container_id: id.into(),
                        pod_uid: pod,
                    });
                }
                container = Some(id);
            }
            continue;
        }
        if let Some(pod_uid) = pod {
            return container.map(|container_id| ContainerRef {
                container_id: container_id.into(),
                pod_uid: Some(pod_uid),
            });
        }
    }
    container.map(|container_id| ContainerRef {
        container_id: container_id.into(),
        pod_uid: None,
    })
}

/// Which container id and which pod uid one path component names, if any.
fn parse_component(component: &str) -> (Option<String>, Option<String>) {
    // `kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`: systemd names that runc in
    // cgroupfs mode created literally.
    if component.contains(':') {
        let parts: Vec<&str> = component.split(':').collect();
        let id = parts
            .last()
            .filter(|id| is_container_id(id))
            .map(|id| id.to_string());
        let pod = parts.first().and_then(|slice| pod_from_component(slice));
        return (id, pod);
    }
    (
        container_from_component(component),
        pod_from_component(component),
    )
}

fn container_from_component(component: &str) -> Option<String> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    if is_container_id(name) {
        return Some(name.to_string());
    }
    if name.starts_with("crio-conmon-") || name.starts_with("libpod-conmon-") {
        return None;
    }
    [
        "cri-containerd-",
        "crio-",
        "docker-",
        "libpod-",
        "containerd-",
    ]
    .iter()
    .find_map(|prefix| name.strip_prefix(prefix))
    .filter(|id| is_container_id(id))
    .map(str::to_string)
}

fn pod_from_component(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    // systemd: kubepods-pod<uid>, kubepods-burstable-pod<uid>, kubepods-besteffort-pod<uid>
    // with `_` for `-`; cgroupfs: pod<uid>.
    let raw = if let Some(rest) = name.strip_prefix("pod") {
        rest
    } else if name.starts_with("kubepods") {
        let at = name.rfind("-pod")?;
        name.get(at + 4..)?
    } else {
        return None;
    };
    let uid = raw.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A UUID (`8-4-4-4-12` hex digits) or, for static pods, a 32-hex config hash.
fn is_pod_uid(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() == 32 {
        return bytes.iter().all(u8::is_ascii_hexdigit);
    }
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The container of a `/proc/<pid>/cgroup` file: from the memory controller's line (cgroup
/// v1), else the unified `0::` line, else any line that names a container.
pub fn parse_proc_cgroup(text: &str) -> Option<ContainerRef> {
    let mut memory = None;
    let mut unified = None;
    let mut others = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            memory = Some(path);
        } else if controllers.is_empty() {
            unified = Some(path);
        } else {
            others.push(path);
        }
    }
    memory
        .and_then(parse_path)
        .or_else(|| unified.and_then(parse_path))
        .or_else(|| others.into_iter().find_map(parse_path))
}

/// A path from directory names read leaf first up to the root (`/`): `/a/b/leaf`.
pub fn path_from_names<'a>(leaf_first: impl IntoIterator<Item = &'a str>) -> String {
    let mut names: Vec<&str> = leaf_first
        .into_iter()
        .take_while(|name| !name.is_empty() && *name != "/")
        .collect();
    names.reverse();
    format!("/{}", names.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "c26ae78c0a7d1c0a1f56d0b04e5b0a8a2c2d3b4e5f60718293a4b5c6d7e8f901";
    const UID: &str = "1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e";
    const UID_US: &str = "1b2c3d4e_5f6a_7b8c_9d0e_1f2a3b4c5d6e";

    fn both(path: &str) -> Option<(String, Option<String>)> {
        parse_path(path).map(|r| (r.container_id.to_string(), r.pod_uid))
    }

    fn expect(path: &str, pod: Option<&str>) {
        assert_eq!(
            both(path),
            Some((ID.to_string(), pod.map(str::to_string))),
            "{path}"
        );
    }

    #[test]
    fn cgroupfs_driver_paths() {
        expect(&format!("/kubepods/burstable/pod{UID}/{ID}"), Some(UID));
        expect(&format!("/kubepods/besteffort/pod{UID}/{ID}"), Some(UID));
        expect(&format!("/kubepods/pod{UID}/{ID}"), Some(UID));
        // The pod directory alone is not a container.
        assert_eq!(both(&format!("/kubepods/burstable/pod{UID}")), None);
    }

    #[test]
    fn systemd_driver_paths() {
        for scope in [
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("docker-{ID}.scope"),
        ] {
            expect(
                &format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/{scope}"
                ),
                Some(UID),
            );
            expect(
                &format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/{scope}"
                ),
                Some(UID),
            );
            expect(
                &format!("/kubepods.slice/kubepods-pod{UID_US}.slice/{scope}"),
                Some(UID),
            );
        }
        // CRI-O's monitor is not the container.
        assert_eq!(
            both(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-conmon-{ID}.scope"
            )),
            None
        );
    }

    #[test]
    fn systemd_names_created_by_cgroupfs_runc() {
        expect(
            &format!(
                "/process_api/5c67b91efeece1fdceec9e97d8a6cbfe/kubepods-burstable-pod{UID_US}.slice:cri-containerd:{ID}"
            ),
            Some(UID),
        );
    }

    #[test]
    fn nested_cgroups_inside_a_container() {
        expect(
            &format!("/kubepods/burstable/pod{UID}/{ID}/init.scope"),
            Some(UID),
        );
    }

    #[test]
    fn docker_without_kubernetes() {
        expect(&format!("/docker/{ID}"), None);
        expect(&format!("/system.slice/docker-{ID}.scope"), None);
    }

    #[test]
    fn static_pod_uids_are_hashes() {
        let hash = "6a1f2b3c4d5e6f708192a3b4c5d6e7f8";
        assert_eq!(
            both(&format!("/kubepods/burstable/pod{hash}/{ID}")),
            Some((ID.to_string(), Some(hash.to_string())))
        );
    }

    #[test]
    fn host_paths_are_not_containers() {
        for path in [
            "/",
            "",
            "/user.slice/user-1000.slice/session-2.scope",
            "/system.slice/containerd.service",
            "/process_api/5c67b91efeece1fdceec9e97d8a6cbfe",
            "/kubepods/burstable",
            &format!("/kubepods/burstable/pod{UID}/{}", &ID[..63]),
            &format!("/kubepods/burstable/pod{UID}/{}g", &ID[..63]),
        ] {
            assert_eq!(both(path), None, "{path}");
        }
    }

    #[test]
    fn names_read_by_the_kernel() {
        let names = [ID, &format!("pod{UID}"), "burstable"];
        let parsed = parse_names(names).unwrap();
        assert_eq!(&*parsed.container_id, ID);
        assert_eq!(parsed.pod_uid.as_deref(), Some(UID));
        let scope = format!("cri-containerd-{ID}.scope");
        let slice = format!("kubepods-burstable-pod{UID_US}.slice");
        let parsed = parse_names([scope.as_str(), slice.as_str(), "kubepods-burstable.slice"]);
        assert_eq!(parsed.unwrap().pod_uid.as_deref(), Some(UID));
        assert_eq!(
            parse_names(["5c67b91efeece1fdceec9e97d8a6cbfe", "process_api", "/"]),
            None
        );
        assert_eq!(parse_names(["", "", ""]), None);
    }

    #[test]
    fn proc_cgroup_files() {
        let v1 = format!(
            "9:name=systemd:/\n4:memory:/kubepods/burstable/pod{UID}/{ID}\n1:cpu:/\n0::/\n"
        );
        assert_eq!(
            parse_proc_cgroup(&v1).unwrap().pod_uid.as_deref(),
            Some(UID)
        );
        let v2 = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parse_proc_cgroup(&v2).unwrap().container_id.as_ref(), ID);
        let hybrid_host = "4:memory:/process_api/5c67\n0::/\n";
        assert_eq!(parse_proc_cgroup(hybrid_host), None);
        assert_eq!(parse_proc_cgroup("garbage\n::\n"), None);
    }

    #[test]
    fn paths_from_kernel_names() {
        assert_eq!(
            path_from_names([ID, &format!("pod{UID}"), "burstable", "kubepods", "/", ""]),
            format!("/kubepods/burstable/pod{UID}/{ID}")
        );
        assert_eq!(path_from_names(["/"]), "/");
        assert_eq!(path_from_names(["a", ""]), "/a");
    }
}
