//! The FAB reader and installer face bytes from the SuperLink: arbitrary bytes and arbitrary
//! zip archives (any entry names, `pyproject.toml` contents and `.info/CONTENT` lists) never
//! make them panic, and nothing is ever written outside `<flwr home>/apps`.

use std::io::Write as _;
use std::path::Path;

use flwr_core::FabMetadata;
use flwr_supernode::install;
use proptest::prelude::*;

/// Every path under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.clone());
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    out
}

fn archive(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, body) in entries {
        if writer.start_file(name.as_str(), options).is_ok() {
            let _ = writer.write_all(body);
        }
    }
    writer
        .finish()
        .map(|cursor| cursor.into_inner())
        .unwrap_or_default()
}

fn entry_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("pyproject.toml".to_owned()),
        Just(".info/CONTENT".to_owned()),
        Just("../escape.py".to_owned()),
        Just("/abs/olute.py".to_owned()),
        Just("app/../../x.py".to_owned()),
        "[a-z./]{1,24}",
    ]
}

fn pyproject() -> impl Strategy<Value = Vec<u8>> {
    let publisher = prop_oneof![
        Just("test".to_owned()),
        Just("../../tmp".to_owned()),
        ".{0,12}"
    ];
    let name = prop_oneof![Just("app".to_owned()), Just("..".to_owned()), ".{0,12}"];
    let version = prop_oneof![
        Just("1.0.0".to_owned()),
        Just("1/../../2".to_owned()),
        ".{0,8}"
    ];
    (publisher, name, version).prop_map(|(publisher, name, version)| {
        format!(
            "[project]\nname = {name:?}\nversion = {version:?}\n\n[tool.flwr.app]\npublisher = \
             {publisher:?}\n\n[tool.flwr.app.components]\nserverapp = \"a.b:c\"\nclientapp = \
             \"a.b:d\"\n"
        )
        .into_bytes()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_bytes_are_refused_without_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let home = tempfile::tempdir().expect("tempdir");
        let _ = FabMetadata::from_fab(&bytes);
        prop_assert!(install::install(&bytes, home.path()).is_err());
    }

    #[test]
    fn arbitrary_archives_install_only_below_apps(
        project in pyproject(),
        others in prop::collection::vec((entry_name(), prop::collection::vec(any::<u8>(), 0..64)), 0..6),
        list_them in any::<bool>(),
    ) {
        let mut entries = vec![("pyproject.toml".to_owned(), project)];
        entries.extend(others);
        if list_them {
            // A listing that matches, so that the names and metadata are what gets tested.
            entries.retain(|(name, _)| name != ".info/CONTENT");
            let listing: Vec<String> = entries
                .iter()
                .filter(|(name, _)| name != "pyproject.toml")
                .map(|(name, body)| {
                    format!("{name},{},{}", flwr_core::fab::hash(body), body.len() * 8)
                })
                .collect();
            entries.push((".info/CONTENT".to_owned(), listing.join("\n").into_bytes()));
        }
        let content = archive(&entries);
        let home = tempfile::tempdir().expect("tempdir");
        let _ = FabMetadata::from_fab(&content);
        let _ = install::install(&content, home.path());
        let apps = home.path().join("apps");
        for path in files_under(home.path()) {
            prop_assert!(path == apps || path.starts_with(&apps), "{} outside apps", path.display());
        }
    }
}
