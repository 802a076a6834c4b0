//! Generates the Rust types for `proto/**/*.proto` with the vendored `protoc`, so building needs
//! no system protobuf install. Also writes a file descriptor set that the compatibility test reads.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["proto/prx/ci/v1/events.proto", "proto/prx/ci/v1/ops.proto"];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let vendored_include = protoc_bin_vendored::include_path()?;
    let includes = [PathBuf::from("proto"), vendored_include];
    tonic_prost_build::configure()
        // Services keep build references in KV records as JSON: the field names and the
        // architecture's enum number are that JSON's format (see `tests/compat.rs`).
        .type_attribute(
            "prx.ci.v1.BuildRef",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        // Fields added later are left out while empty, so records keep their shape.
        .field_attribute(
            "prx.ci.v1.BuildRef.retry_of",
            "#[serde(skip_serializing_if = \"String::is_empty\")]",
        )
        .field_attribute(
            "prx.ci.v1.BuildRef.shadowed",
            "#[serde(skip_serializing_if = \"std::ops::Not::not\")]",
        )
        // The webhook body goes from the ingress's request into the envelope without a copy.
        .bytes(".prx.ci.v1.WebhookReceived.payload")
        .file_descriptor_set_path(out_dir.join("prx_ci_descriptor.bin"))
        .compile_with_config(config, &protos.map(PathBuf::from), &includes)?;
    Ok(())
}
