//! The Helm chart (`charts/tapio`) on the tests' real control plane: Helm built from the
//! `helm.sh/helm/v4` Go module (`.ci/install` puts it in `target/helm/helm`), rendering with
//! `--set` values, server-side apply through the API server, and the offline image build
//! (`tests/image/build_image.py`). The deploy end-to-end test and the footprint benchmark share
//! them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, anyhow, bail};
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::Scope;
use kube::{Api, Client};
use serde_json::Value;

use crate::control_plane::ControlPlane;

/// The Helm binary: `$TAPIO_HELM_BIN`, or `target/helm/helm` (built by `.ci/install`), with its
/// cache, configuration and data kept out of the user's home.
///
/// # Panics
/// When the binary is missing.
pub fn helm() -> Command {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target"));
    let path = std::env::var_os("TAPIO_HELM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("helm/helm"));
    assert!(
        path.exists(),
        "Helm is missing at {}: build it with .ci/install",
        path.display()
    );
    let mut command = Command::new(path);
    let home = std::env::temp_dir().join(format!("tapio-helm-{}", std::process::id()));
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    command
}

/// The chart's directory.
pub fn chart() -> PathBuf {
    crate::repo_root().join("charts/tapio")
}

/// `helm template <release> charts/tapio --namespace <namespace>` with `--set` pairs (keys
/// holding `extraEnv` are set as strings): the rendered documents, or Helm's error output.
///
/// # Panics
/// When Helm cannot be run or renders something that is not YAML.
pub fn render(
    release: &str,
    namespace: &str,
    set: &[(&str, &str)],
) -> std::result::Result<Vec<Value>, String> {
    let mut command = helm();
    command
        .args(["template", release])
        .arg(chart())
        .args(["--namespace", namespace]);
    for (key, value) in set {
        // Environment variable values are strings, whatever they look like.
        let flag = if key.contains("extraEnv") {
            "--set-string"
        } else {
            "--set"
        };
        command.arg(flag).arg(format!("{key}={value}"));
    }
    let output = command.output().expect("run helm");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut documents = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line == "---" {
            let value: Value = serde_saphyr::from_str(&current)
                .unwrap_or_else(|error| panic!("helm rendered bad YAML ({error}):\n{current}"));
            if !value.is_null() {
                documents.push(value);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    Ok(documents)
}

/// A client of the control plane's API server as `user` (`admin` or `tapio`).
///
/// # Errors
/// When the kubeconfig cannot be read or the client built.
pub async fn client(plane: &ControlPlane, user: &str) -> Result<Client> {
    let file = kube::config::Kubeconfig::read_from(plane.kubeconfig(user))?;
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(Client::try_from(config)?)
}

/// Server-side applies `documents` as `admin`, for real or as a dry run; the namespace of
/// namespaced objects is the one they name.
///
/// # Errors
/// When a document has no kind or the API server refuses one, naming it.
pub async fn apply(admin: &Client, documents: &[Value], dry_run: bool) -> Result<()> {
    for document in documents {
        let object: DynamicObject = serde_json::from_value(document.clone())?;
        let types = object
            .types
            .as_ref()
            .ok_or_else(|| anyhow!("no apiVersion/kind: {document}"))?;
        let gvk = GroupVersionKind::try_from(types)?;
        let (resource, capabilities) = kube::discovery::pinned_kind(admin, &gvk).await?;
        let api: Api<DynamicObject> = if capabilities.scope == Scope::Namespaced {
            let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
            Api::namespaced_with(admin.clone(), namespace, &resource)
        } else {
            Api::all_with(admin.clone(), &resource)
        };
        let name = object.metadata.name.clone().unwrap_or_default();
        let mut params = PatchParams::apply("tapio-e2e").force();
        params.dry_run = dry_run;
        api.patch(&name, &params, &Patch::Apply(&object))
            .await
            .map_err(|error| anyhow!("the API server refused {} {name}: {error}", gvk.kind))?;
    }
    Ok(())
}

/// Builds the container image `reference` offline from `binary` and its shared libraries
/// (`tests/image/build_image.py`) as an OCI image-layout tar at `tar`.
///
/// # Errors
/// When the builder fails, with its error output.
pub fn build_image(binary: &Path, tar: &Path, reference: &str) -> Result<()> {
    let built = Command::new("python3")
        .arg(crate::repo_root().join("tests/image/build_image.py"))
        .arg(binary)
        .arg(tar)
        .arg(reference)
        .output()?;
    if !built.status.success() {
        bail!("build_image.py: {}", String::from_utf8_lossy(&built.stderr));
    }
    Ok(())
}
