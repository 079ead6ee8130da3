//! deploy/: the systemd unit passes `systemd-analyze verify` (no warning) and
//! a security review threshold, with the capability and limits the guide
//! promises; the install script stages every file where the unit expects it,
//! keeps an edited configuration on a second run, and the staged unit still
//! verifies; the example configuration passes `qbroker check-config`, which is
//! the unit's ExecStartPre.
//!
//! systemd-analyze comes with the Debian package `systemd` (.ci/run installs
//! it when it is missing); these tests fail, saying so, without it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn systemd_analyze() -> &'static str {
    let found = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    found.unwrap_or_else(|| {
        panic!(
            "systemd-analyze not found: install the Debian package `systemd` \
             (apt-get install -y systemd; .ci/run does it)"
        )
    })
}

/// The unit with its ExecStart binaries pointed at the one cargo built (verify
/// checks that they exist and are executable).
fn unit_for_test(unit: &str, dir: &Path) -> PathBuf {
    let path = dir.join("qbroker.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/qbroker", env!("CARGO_BIN_EXE_qbroker")),
    )
    .unwrap();
    path
}

fn verify(path: &Path) {
    let out = Command::new(systemd_analyze())
        .args(["verify", "--man=no"])
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify:\n{text}");
    // Unknown or misspelt settings are only warnings: none allowed.
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify warns:\n{text}"
    );
}

fn directives(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(repo().join("deploy/qbroker.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = unit_for_test(&unit, dir.path());
    verify(&path);

    // The exposure score of `systemd-analyze security` (0 best .. 10 worst,
    // 100 internally): at most 2.0, "OK".
    let out = Command::new(systemd_analyze())
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exposure above 2.0:\n{text}");

    // What the deployment guide promises.
    assert_eq!(directives(&unit, "User"), ["qbroker"]);
    assert_eq!(
        directives(&unit, "CapabilityBoundingSet"),
        ["CAP_NET_BIND_SERVICE"]
    );
    assert_eq!(
        directives(&unit, "AmbientCapabilities"),
        ["CAP_NET_BIND_SERVICE"]
    );
    assert_eq!(directives(&unit, "NoNewPrivileges"), ["yes"]);
    assert_eq!(directives(&unit, "Restart"), ["on-failure"]);
    assert_eq!(directives(&unit, "LimitNOFILE"), ["65536"]);
    assert_eq!(directives(&unit, "StateDirectory"), ["qbroker"]);
    assert!(
        directives(&unit, "ExecStartPre")[0].ends_with("check-config /etc/qbroker/qbroker.toml")
    );
    assert!(directives(&unit, "ExecStart")[0].ends_with("run --config /etc/qbroker/qbroker.toml"));
}

#[test]
fn the_example_configuration_passes_check_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_qbroker"))
        .arg("check-config")
        .arg(repo().join("deploy/qbroker.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("target          varonis (default)"), "{text}");

    // Its commented-out memory ceiling fits the API turned on too.
    let example = std::fs::read_to_string(repo().join("deploy/qbroker.toml")).unwrap();
    let mut api_section = false;
    let edited: String = example
        .lines()
        .map(|l| {
            if l.starts_with('[') {
                api_section = l == "[api]";
            }
            if l.starts_with("# max_memory_bytes = ") {
                l.trim_start_matches("# ").to_string()
            } else if api_section && l == "enabled = false" {
                "enabled = true".to_string()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    assert!(edited.contains("\nmax_memory_bytes = ") && edited.contains("[api]"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.toml");
    std::fs::write(&file, edited).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qbroker"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn install_stages_every_file_and_keeps_an_edited_configuration() {
    let stage = tempfile::tempdir().unwrap();
    let run = || {
        let out = Command::new("sh")
            .arg(repo().join("deploy/install.sh"))
            .args(["--binary", env!("CARGO_BIN_EXE_qbroker")])
            .env("DESTDIR", stage.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "install.sh:\n{text}");
        text
    };
    run();
    let s = stage.path();
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(s.join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("usr/local/bin/qbroker"), 0o755);
    assert_eq!(mode("etc/systemd/system/qbroker.service"), 0o644);
    assert_eq!(mode("etc/qbroker"), 0o750);
    assert_eq!(mode("etc/qbroker/qbroker.toml"), 0o640);
    assert_eq!(mode("etc/sysctl.d/90-qbroker.conf"), 0o644);
    for f in [
        "usr/lib/sysusers.d/qbroker.conf",
        "usr/local/share/qbroker/rsyslog/10-qbroker-forward.conf",
        "usr/local/share/qbroker/rsyslog/10-qbroker-omprog.conf",
        "usr/local/share/doc/qbroker/README.md",
        "usr/local/share/doc/qbroker/deploy.md",
        "usr/local/share/doc/qbroker/troubleshooting.md",
    ] {
        assert!(s.join(f).is_file(), "{f} missing");
    }
    let unit = std::fs::read_to_string(s.join("etc/systemd/system/qbroker.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    verify(&unit_for_test(&unit, dir.path()));

    // An operator's edits survive a second install.
    let conf = s.join("etc/qbroker/qbroker.toml");
    std::fs::write(&conf, "# edited\n").unwrap();
    let text = run();
    assert!(text.contains("kept /etc/qbroker/qbroker.toml"), "{text}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "# edited\n");
    assert!(s.join("etc/qbroker/qbroker.toml.new").is_file());

    // Another prefix moves the binary and the unit's paths with it.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg(repo().join("deploy/install.sh"))
        .args([
            "--binary",
            env!("CARGO_BIN_EXE_qbroker"),
            "--prefix",
            "/opt/qbroker",
        ])
        .env("DESTDIR", other.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let unit =
        std::fs::read_to_string(other.path().join("etc/systemd/system/qbroker.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/qbroker/bin/qbroker run"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local"), "{unit}");
    assert!(other.path().join("opt/qbroker/bin/qbroker").is_file());

    // Without a binary it says how to build one.
    let out = Command::new("sh")
        .arg(repo().join("deploy/install.sh"))
        .args(["--binary", "/nonexistent/qbroker"])
        .env("DESTDIR", other.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cargo build --release"));
}

/// Every field of the configuration (the `Raw*` structs of src/config.rs)
/// appears in deploy/qbroker.toml, set or commented out, under a comment: the
/// example is the reference of every field.
#[test]
fn the_example_configuration_shows_every_field() {
    let source = std::fs::read_to_string(repo().join("src/config.rs")).unwrap();
    let example = std::fs::read_to_string(repo().join("deploy/qbroker.toml")).unwrap();
    let mut fields = Vec::new();
    let mut in_raw = false;
    for line in source.lines() {
        if line.starts_with("pub struct Raw") {
            in_raw = true;
            continue;
        }
        if in_raw && line.starts_with('}') {
            in_raw = false;
        }
        let Some(rest) = line.trim().strip_prefix("pub ") else {
            continue;
        };
        if !in_raw {
            continue;
        }
        let Some((name, ty)) = rest.split_once(':') else {
            continue;
        };
        // Sections and arrays of tables are headers, not keys.
        if ty.contains("Raw") {
            continue;
        }
        fields.push(name.trim().to_string());
    }
    assert!(fields.len() > 50, "found the fields: {fields:?}");
    let lines: Vec<&str> = example.lines().collect();
    for field in &fields {
        let at = lines.iter().position(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{field} =")) || l.starts_with(&format!("{field}="))
        });
        let Some(at) = at else {
            panic!("deploy/qbroker.toml does not show `{field}`: add it, with a comment");
        };
        assert!(
            at > 0 && lines[at - 1].trim_start().starts_with('#'),
            "`{field}` in deploy/qbroker.toml has no comment above it"
        );
    }
}

/// `check-config` refuses what `run` would refuse at start, naming the field,
/// each cause said once: a missing CA file, a CA path holding a key, a data
/// directory that is a file or cannot be created.
#[test]
fn check_config_refuses_what_run_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let key_file = dir.path().join("key.pem");
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, "x").unwrap();
    let check = |body: &str| {
        let file = dir.path().join("q.toml");
        std::fs::write(&file, body).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_qbroker"))
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let target = |extra: &str| {
        format!(
            "data_dir = \"{}\"\n[[targets]]\nname = \"good\"\nurl = \"https://127.0.0.1:8443/e\"\n{extra}\n",
            dir.path().join("data").display()
        )
    };
    let (ok, err) = check(&target("ca_file = \"/nonexistent/ca.pem\""));
    assert!(!ok);
    assert!(err.contains("targets.good.ca_file"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    let (ok, err) = check(&target(&format!("ca_file = \"{}\"", key_file.display())));
    assert!(!ok);
    assert!(err.contains("targets.good.ca_file"), "{err}");

    let (ok, err) = check(&format!(
        "data_dir = \"{}\"\n[[targets]]\nname = \"good\"\nurl = \"https://127.0.0.1:8443/e\"\n",
        a_file.display()
    ));
    assert!(!ok);
    assert!(
        err.contains("data_dir") && err.contains("not a directory"),
        "{err}"
    );

    let (ok, err) = check("data_dir = \"/proc/qbroker-data\"\n[[targets]]\nname = \"good\"\nurl = \"https://127.0.0.1:8443/e\"\n");
    assert!(!ok);
    assert!(err.contains("data_dir: /proc/qbroker-data"), "{err}");

    let (ok, err) = check(&target(""));
    assert!(ok, "{err}");
}
