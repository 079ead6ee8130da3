//! preflight: what `qbroker run` would refuse at start beyond the file's own
//! validation, checked without starting anything (`qbroker check-config`,
//! which the systemd unit runs as `ExecStartPre` under the service's user):
//! every TLS file read and used as `run` uses it, and every directory the
//! broker writes to writable by this user. Each problem names its field.

use std::path::Path;

use crate::config::Config;

/// Every problem found, each naming the configuration field; empty when
/// `run` would start.
pub fn check(cfg: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    for t in &cfg.targets {
        if let Err(err) = crate::egress::Endpoint::from_config(t.clone()) {
            let text = err.to_string();
            let field = [
                (t.ca_file.as_deref(), "ca_file"),
                (
                    t.client_auth.as_ref().map(|c| c.0.as_path()),
                    "client_cert_file",
                ),
                (
                    t.client_auth.as_ref().map(|c| c.1.as_path()),
                    "client_key_file",
                ),
            ]
            .into_iter()
            .find_map(|(p, f)| {
                p.filter(|p| text.contains(&p.display().to_string()))
                    .map(|_| f)
            });
            problems.push(match field {
                Some(f) => format!("targets.{}.{f}: {}", t.name, strip_target(&text, &t.name)),
                None => format!("targets.{}: {}", t.name, strip_target(&text, &t.name)),
            });
        }
    }
    if let Some(tls) = &cfg.syslog_tls {
        if let Err(err) = crate::ingest::tls::server_config(tls) {
            problems.push(format!("syslog_tls: {err}"));
        }
    }
    for c in &cfg.clusters {
        let Some(api) = &c.api else { continue };
        let ca = match (&api.ca_file, api.insecure_skip_verify) {
            (Some(path), false) => match crate::net::PemFile::read(path) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    problems.push(format!("clusters.{}.ca_file: {e}", c.name));
                    continue;
                }
            },
            _ => None,
        };
        if let Err(err) = crate::enrich::client::tls_config_pem(
            &c.name,
            ca.as_ref().map(crate::net::PemFile::pem),
            api.insecure_skip_verify,
        ) {
            problems.push(format!("clusters.{}.ca_file: {err}", c.name));
        }
    }
    if let Some(api) = &cfg.api {
        if let Some((cert, key)) = &api.cert {
            for (path, field) in [(cert, "api.cert_file"), (key, "api.key_file")] {
                if let Err(e) = std::fs::read(path) {
                    problems.push(format!("{field}: cannot read {}: {e}", path.display()));
                }
            }
            if problems.iter().all(|p| !p.starts_with("api.")) {
                if let Err(err) = crate::api::cert::server_config(api, &cfg.data_dir) {
                    problems.push(format!("api.cert_file, api.key_file: {err}"));
                }
            }
        }
    }
    for (dir, field) in [
        (&cfg.data_dir, "data_dir"),
        (&cfg.spool.dir, "spool.dir"),
        (&cfg.dead_letter.dir, "dead_letter.dir"),
    ] {
        if let Err(why) = writable_dir(dir) {
            problems.push(format!("{field}: {}: {why}", dir.display()));
        }
    }
    problems.dedup();
    problems
}

/// "target NAME: rest" -> "rest": the field prefix names the target already.
fn strip_target<'a>(text: &'a str, name: &str) -> &'a str {
    text.strip_prefix(&format!("target {name}: "))
        .unwrap_or(text)
}

/// Whether this user can write in `dir`, or create it: the directory (or its
/// nearest existing ancestor, when it does not exist yet) must be a directory
/// where a file can be created. Leaves nothing behind.
pub fn writable_dir(dir: &Path) -> Result<(), String> {
    let mut probe = dir;
    loop {
        match std::fs::metadata(probe) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(if probe == dir {
                    "not a directory".to_string()
                } else {
                    format!("{} is not a directory", probe.display())
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match probe.parent() {
                Some(p) if !p.as_os_str().is_empty() => probe = p,
                _ => return Err("no existing parent directory".to_string()),
            },
            Err(e) => return Err(format!("cannot look at {}: {e}", probe.display())),
        }
    }
    let test = probe.join(format!(".qbroker-write-test-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&test)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&test);
            Ok(())
        }
        Err(e) => Err(if probe == dir {
            format!("not writable by this user: {e}")
        } else {
            format!(
                "does not exist, and {} is not writable by this user to create it: {e}",
                probe.display()
            )
        }),
    }
}
