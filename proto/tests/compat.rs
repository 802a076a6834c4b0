//! Guards the compatibility rule of `events.proto`: every field and enum value ever published
//! (listed in `proto/compat.lock`) keeps its number, type and name forever. New fields must be
//! added to the lock (run with `UPDATE_COMPAT_LOCK=1` to append them), so a later change that
//! reuses or retypes them fails here.

use std::collections::BTreeSet;
use std::path::Path;

use prost::Message as _;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

fn enum_lines(prefix: &str, e: &EnumDescriptorProto, out: &mut BTreeSet<String>) {
    for v in &e.value {
        out.insert(format!(
            "enum {prefix}{} {} = {}",
            e.name(),
            v.name(),
            v.number()
        ));
    }
}

fn message_lines(prefix: &str, m: &DescriptorProto, out: &mut BTreeSet<String>) {
    let name = format!("{prefix}{}", m.name());
    for f in &m.field {
        let ty = match f.type_name() {
            "" => format!("{:?}", f.r#type()),
            t => t.to_owned(),
        };
        out.insert(format!(
            "field {name}.{} = {} {:?} {ty}",
            f.name(),
            f.number(),
            f.label()
        ));
    }
    for nested in &m.nested_type {
        message_lines(&format!("{name}."), nested, out);
    }
    for e in &m.enum_type {
        enum_lines(&format!("{name}."), e, out);
    }
}

fn current() -> BTreeSet<String> {
    let set = FileDescriptorSet::decode(prx_ci_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = BTreeSet::new();
    for file in set.file.iter().filter(|f| f.package() == "prx.ci.v1") {
        for m in &file.message_type {
            message_lines("", m, &mut out);
        }
        for e in &file.enum_type {
            enum_lines("", e, &mut out);
        }
    }
    out
}

#[test]
fn published_fields_never_change_and_new_ones_are_locked() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("compat.lock");
    let locked: BTreeSet<String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let current = current();

    let broken: Vec<_> = locked.difference(&current).collect();
    assert!(
        broken.is_empty(),
        "fields or enum values were removed, renumbered or retyped (add a new field and \
         `reserved` the old number instead):\n{broken:#?}"
    );

    let new: Vec<_> = current.difference(&locked).cloned().collect();
    if !new.is_empty() {
        if std::env::var_os("UPDATE_COMPAT_LOCK").is_some() {
            let mut text = String::from(
                "# Every field and enum value of prx.ci.v1, ever. Append only (see compat.rs).\n",
            );
            for line in locked.iter().chain(new.iter()).collect::<BTreeSet<_>>() {
                text.push_str(line);
                text.push('\n');
            }
            std::fs::write(&path, text).unwrap();
        } else {
            panic!(
                "new fields are not in proto/compat.lock; run \
                 `UPDATE_COMPAT_LOCK=1 cargo test -p prx-ci-proto` and commit it:\n{new:#?}"
            );
        }
    }
}

#[test]
fn the_lock_detects_a_renumbered_field() {
    let current = current();
    let line = current
        .iter()
        .find(|l| l.starts_with("field Envelope.event_id = 1 "))
        .expect("Envelope.event_id is field 1");
    let renumbered = line.replace("= 1 ", "= 99 ");
    assert!(!current.contains(&renumbered));
}

/// KV records hold build references as JSON (written before `BuildRef` had serde, by
/// hand-written mirrors): that JSON must keep reading, and writing must keep its shape.
#[test]
fn build_ref_json_is_the_format_kv_records_already_hold() {
    use prx_ci_proto::v1::{Architecture, BuildRef};
    let stored = r#"{"build_id":"app:0b5e","build_request_id":"req-1","repository":"PRX/app","commit":"4f2c","architecture":2,"backend":"codebuild","project":"app","region":"us-east-1","log_url":"https://logs"}"#;
    let build: BuildRef = serde_json::from_str(stored).unwrap();
    assert_eq!(build.build_id, "app:0b5e");
    assert_eq!(build.architecture(), Architecture::Aarch64);
    assert_eq!(build.log_url, "https://logs");
    assert_eq!(serde_json::to_string(&build).unwrap(), stored);
    // Records from before a field existed read with the field empty.
    let old: BuildRef = serde_json::from_str(r#"{"build_id":"x"}"#).unwrap();
    assert_eq!(old.build_id, "x");
    assert_eq!(old.log_url, "");
}
