//! `qbroker check-config`: validate a file, say what `run` would refuse
//! ([`qbroker::preflight`]), and print what the file resolves to.

use qbroker::config::RawConfig;

pub fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let raw = RawConfig::load(file)?;
    let cfg = raw.validate()?;
    crate::warn_exposed(&raw, Some(file));
    let problems = qbroker::preflight::check(&cfg);
    if !problems.is_empty() {
        anyhow::bail!(
            "{} would not start:\n  {}",
            file.display(),
            problems.join("\n  ")
        );
    }
    println!("{} is valid", file.display());
    println!("listen          {}", cfg.listen);
    if let Some(tls) = &cfg.syslog_tls {
        println!(
            "syslog tls      {} (client certificates {})",
            tls.listen,
            if tls.require_client_cert {
                "required"
            } else {
                "not required"
            }
        );
    }
    println!("workers         {}", cfg.workers);
    println!(
        "queue           {} messages, {} bytes",
        cfg.queue.size, cfg.queue.max_bytes
    );
    let budget = cfg.memory_budget();
    println!(
        "memory budget   {} bytes{}",
        budget.total(),
        cfg.max_memory_bytes
            .map_or(String::new(), |c| format!(" (ceiling {c})"))
    );
    for (part, bytes) in &budget.parts {
        println!("  {part:<24}{bytes}");
    }
    println!(
        "spool           {} ({:?}, cap {} bytes)",
        cfg.spool.dir.display(),
        cfg.spool.fsync,
        cfg.spool.max_bytes
    );
    for (i, t) in cfg.targets.iter().enumerate() {
        let default = if cfg.default_target == Some(i) {
            " (default)"
        } else {
            ""
        };
        match &t.amqp {
            Some(a) => println!(
                "target          {}{default}: {} (AMQP, vhost {:?}, exchange {:?}, routing_key {:?}, user {:?}, encoding {}, one message per {}) in_flight={} max_unconfirmed={}",
                t.name,
                t.url_for_logs(),
                a.vhost,
                a.exchange,
                a.routing_key,
                a.username,
                a.encoding.as_str(),
                a.message.as_str(),
                t.in_flight,
                a.max_unconfirmed
            ),
            None => println!(
                "target          {}{default}: {} in_flight={} gzip={}",
                t.name,
                t.url_for_logs(),
                t.in_flight,
                t.gzip
            ),
        }
    }
    if let Some(api) = &cfg.api {
        println!(
            "api             https://{} (certificate {}, admin token {})",
            api.listen,
            if api.cert.is_some() {
                "from cert_file"
            } else {
                "self-signed"
            },
            if api.admin_token.is_some() {
                "set"
            } else {
                "not set"
            }
        );
    }
    if let Some(store) = &cfg.store {
        let kind = store.url.expose().split(':').next().unwrap_or_default();
        println!(
            "registry        {kind} (read again every {}s)",
            store.poll.as_secs()
        );
    }
    for c in &cfg.clusters {
        println!(
            "cluster         {} -> {} ({} source ranges)",
            c.name,
            cfg.targets[c.target].name,
            c.sources.len()
        );
    }
    Ok(())
}
