//! The Kubernetes manifests in `deploy/` validate offline: the built-in kinds with
//! `kubernetes-validate -k 1.31.0 --strict` (PyPI, from the test venv), the VolumeSnapshotClasses
//! against the OpenAPI schema of the `volumesnapshotclasses.snapshot.storage.k8s.io` CRD (v1),
//! written out below; and the files agree with each other and with the driver (its name, the
//! default classes, the snapshot types). Broken copies are refused, so the checks can fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

const VENV_BIN: &str = "/opt/corral-test-venv/bin";
const BUILT_IN: [&str; 6] = [
    "namespace.yaml",
    "csi-rbac.yaml",
    "csi-driver.yaml",
    "csi-controller.yaml",
    "csi-node.yaml",
    "storageclass.yaml",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn tool(name: &str) -> PathBuf {
    let p = Path::new(VENV_BIN).join(name);
    assert!(
        p.exists(),
        "{} is required (scripts/test installs the test venv with kubernetes-validate)",
        p.display()
    );
    p
}

fn kubernetes_validate(files: &[PathBuf]) -> Output {
    Command::new(tool("kubernetes-validate")).args(["-k", "1.31.0", "--strict"]).args(files).output().unwrap()
}

/// Every document of a YAML file, as JSON (through the venv's PyYAML).
fn documents(file: &Path) -> Vec<Value> {
    let out = Command::new(tool("python3"))
        .args(["-c", "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `spec.versions[v1].schema.openAPIV3Schema` of the VolumeSnapshotClass CRD, as its fields
/// are defined by the kubernetes-csi external-snapshotter API (v1).
fn snapshot_class_schema() -> Value {
    json!({
        "type": "object",
        "required": ["deletionPolicy", "driver"],
        "additionalProperties": false,
        "properties": {
            "apiVersion": { "type": "string", "const": "snapshot.storage.k8s.io/v1" },
            "kind": { "type": "string", "const": "VolumeSnapshotClass" },
            "metadata": { "type": "object" },
            "driver": { "type": "string" },
            "deletionPolicy": { "type": "string", "enum": ["Delete", "Retain"] },
            "parameters": { "type": "object", "additionalProperties": { "type": "string" } }
        }
    })
}

/// Validate documents against a JSON schema (the venv's `jsonschema`); the errors, one a line.
fn schema_errors(schema: &Value, docs: &[Value]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (schema_file, docs_file) = (dir.path().join("schema.json"), dir.path().join("docs.json"));
    std::fs::write(&schema_file, schema.to_string()).unwrap();
    std::fs::write(&docs_file, Value::Array(docs.to_vec()).to_string()).unwrap();
    let script = "import json,sys,jsonschema\n\
        s=json.load(open(sys.argv[1]))\n\
        for d in json.load(open(sys.argv[2])):\n\
        \x20   for e in jsonschema.Draft7Validator(s).iter_errors(d): print(d.get('metadata',{}).get('name'), e.message)\n";
    let out = Command::new(tool("python3"))
        .args(["-c", script])
        .arg(&schema_file)
        .arg(&docs_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_manifests_validate_and_agree_with_the_driver() {
    let dir = deploy_dir();
    let files: Vec<PathBuf> = BUILT_IN.iter().map(|f| dir.join(f)).collect();
    let out = kubernetes_validate(&files);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubernetes-validate refused the manifests:\n{text}");
    assert_eq!(text.matches("passed for resource").count(), 13, "{text}");

    let classes = documents(&dir.join("volumesnapshotclass.yaml"));
    assert_eq!(schema_errors(&snapshot_class_schema(), &classes), "");
    let types: Vec<&str> = classes.iter().map(|c| c["parameters"]["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["snap", "bak"]);
    assert!(classes.iter().all(|c| c["driver"] == corral_csi::DRIVER_NAME));
    let defaults = classes
        .iter()
        .filter(|c| c["metadata"]["annotations"]["snapshot.storage.kubernetes.io/is-default-class"] == "true")
        .count();
    assert_eq!(defaults, 1, "one default VolumeSnapshotClass");

    let driver = &documents(&dir.join("csi-driver.yaml"))[0];
    assert_eq!(driver["metadata"]["name"], corral_csi::DRIVER_NAME);
    assert_eq!(driver["spec"]["attachRequired"], true);
    let class = &documents(&dir.join("storageclass.yaml"))[0];
    assert_eq!(class["provisioner"], corral_csi::DRIVER_NAME);
    assert_eq!(class["allowVolumeExpansion"], true);
    assert_eq!(class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"], "true");

    let node = &documents(&dir.join("csi-node.yaml"))[0];
    let containers = node["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    let plugin = containers.iter().find(|c| c["name"] == "corral-csi").unwrap();
    assert_eq!(plugin["securityContext"]["privileged"], true);
    let kubelet = plugin["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/var/lib/kubelet")
        .unwrap();
    assert_eq!(kubelet["mountPropagation"], "Bidirectional");
    assert!(containers.iter().any(|c| c["image"].as_str().unwrap().contains("csi-node-driver-registrar")));
    let controller = &documents(&dir.join("csi-controller.yaml"))[0];
    let images: Vec<&str> = controller["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    for sidecar in ["csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter"] {
        assert!(images.iter().any(|i| i.contains(sidecar)), "{sidecar} missing from {images:?}");
    }
}

#[test]
fn broken_manifests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(deploy_dir().join("storageclass.yaml")).unwrap();
    let typo = tmp.path().join("storageclass.yaml");
    std::fs::write(&typo, good.replace("allowVolumeExpansion", "allowVolumeExpanson")).unwrap();
    assert!(!kubernetes_validate(&[typo]).status.success(), "a misspelt field passed --strict validation");

    let mut classes = documents(&deploy_dir().join("volumesnapshotclass.yaml"));
    classes[0]["deletionPolicy"] = json!("Keep");
    classes[1]["parameter"] = json!({ "type": "bak" });
    let errors = schema_errors(&snapshot_class_schema(), &classes);
    assert!(errors.contains("corral-snap") && errors.contains("Keep"), "{errors}");
    assert!(errors.contains("corral-bak") && errors.contains("parameter"), "{errors}");
}
