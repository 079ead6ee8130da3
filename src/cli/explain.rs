//! `qbroker stdin --once`: what a message becomes, for a person (the event,
//! or why it is filtered or invalid), from the library's routing and parsing.

use qbroker::config::Config;
use qbroker::metrics::unix_ms;
use qbroker::parse::{self, EventInfo, FilterReason, FrameCtx, Outcome, ParseError};

/// Split pasted text into messages: a line that starts like a syslog header (`<`,
/// a digit, or an RFC 3164 month such as `Mar `) starts a message; any other
/// non-empty line continues the one before (a JSON payload printed over several
/// lines, as Qumulo's troubleshooting guide shows it).
pub fn records(text: &str) -> Vec<String> {
    let starts = |l: &str| {
        let b = l.as_bytes();
        match b.first() {
            Some(b'<') => true,
            Some(c) if c.is_ascii_digit() => true,
            Some(c) if c.is_ascii_uppercase() => {
                b.len() > 3
                    && b[1].is_ascii_lowercase()
                    && b[2].is_ascii_lowercase()
                    && b[3] == b' '
            }
            _ => false,
        }
    };
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_end_matches('\r');
        if trimmed.trim().is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if !starts(trimmed) => {
                last.push(' ');
                last.push_str(trimmed.trim());
            }
            _ => out.push(trimmed.to_string()),
        }
    }
    out
}

/// What [`explain`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Event,
    Filtered,
    Invalid,
}

/// [`explain`]'s answer: a verdict and the text for a person.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub verdict: Verdict,
    pub text: String,
}

/// Explain what `record` becomes under `cfg`: the event (the same conversion the
/// parse pool runs, before any enrichment), or why it is filtered or invalid.
#[cfg(test)]
pub fn explain(cfg: &Config, record: &str) -> Explanation {
    explain_with(cfg, &[], record)
}

/// [`explain`], knowing the clusters registered through the API (`registered`,
/// by cluster name), whose events go to their registered target.
pub fn explain_with(cfg: &Config, registered: &[String], record: &str) -> Explanation {
    let frame = record.as_bytes();
    let mut text = String::new();
    let shown: String = record.chars().take(300).collect();
    let more = if shown.len() < record.len() {
        " …"
    } else {
        ""
    };
    text.push_str(&format!("message   {shown}{more}\n"));
    let host = parse::frame_hostname(frame);
    let (cluster, target, _) = qbroker::stdin::route(cfg, host);
    let is_registered = registered.iter().any(|r| r.as_str() == cluster.as_str());
    match (host, target) {
        (Some(host), _) if is_registered => text.push_str(&format!(
            "node      {host}: cluster {cluster}, target {} (registered through the API)\n",
            qbroker::targets::registered_name(&cluster)
        )),
        (Some(host), Some(t)) => text.push_str(&format!(
            "node      {host}: cluster {cluster}{}, target {}\n",
            if cfg.cluster_named(&cluster).is_some() {
                " ([[clusters]] entry)"
            } else {
                ""
            },
            cfg.targets[t].name
        )),
        (Some(host), None) => text.push_str(&format!(
            "node      {host}: cluster {cluster}, which has no [[clusters]] entry, and there is no default_target: its lines would be dropped\n"
        )),
        (None, _) => {}
    }
    let ctx = FrameCtx {
        seq: 0,
        received_unix_ms: unix_ms(),
        conn: None,
    };
    let mut out = Vec::new();
    let mut info = EventInfo::default();
    let verdict = match parse::convert_with_info(frame, &ctx, &cfg.filter, &mut out, &mut info) {
        Ok(Outcome::Event(op)) => {
            text.push_str(&format!("result    event {}\n", op.as_str()));
            let pretty = indent_json(&String::from_utf8_lossy(&out));
            for (i, line) in pretty.lines().enumerate() {
                let label = if i == 0 { "event" } else { "" };
                text.push_str(&format!("{label:<10}{line}\n"));
            }
            if matches!(info.hint, parse::Hint::WriteMetadata { .. })
                && cfg.cluster_named(&cluster).is_some_and(|c| c.api.is_some())
                && cfg.enrich.enabled
            {
                text.push_str("          (a metadata change: the running broker reads the file's ACL and may send permissions_add/_remove or protection_add/_remove instead)\n");
            }
            Verdict::Event
        }
        Ok(Outcome::Filtered(reason)) => {
            text.push_str(&format!(
                "result    filtered ({}): {}\n",
                reason.as_str(),
                filter_detail(frame, reason)
            ));
            Verdict::Filtered
        }
        Err(err) => {
            text.push_str(&format!(
                "result    invalid ({}): {}\n",
                err.kind(),
                error_detail(err)
            ));
            text.push_str(&format!(
                "          the broker counts it in qbroker_cluster_parse_errors_total{{kind=\"{}\"}} and keeps it in {}\n",
                err.kind(),
                cfg.dead_letter.dir.join("frames.jsonl").display()
            ));
            Verdict::Invalid
        }
    };
    Explanation { verdict, text }
}

/// Indent compact JSON, keeping its key order (the order on the wire).
fn indent_json(compact: &str) -> String {
    let mut out = String::with_capacity(compact.len() * 2);
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    let mut chars = compact.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                if matches!(chars.peek(), Some('}' | ']')) {
                    out.push(chars.next().expect("peeked"));
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c => out.push(c),
        }
    }
    out
}

fn error_detail(err: ParseError) -> String {
    match err {
        ParseError::Empty => "the message is empty".to_string(),
        ParseError::Header => "the header is none of RFC 5424 (<14>1 TIMESTAMP HOST qumulo - - - MSG), RFC 3164 (Mmm dd hh:mm:ss HOST qumulo: MSG) or rsyslog's file format (TIMESTAMP HOST qumulo MSG)".to_string(),
        ParseError::Timestamp => "the timestamp is not RFC 3339 (2023-03-03T14:08:51.058Z) nor RFC 3164 (Mar  3 14:08:51)".to_string(),
        ParseError::Payload => "the message is neither a JSON object nor Qumulo's 8-field CSV".to_string(),
        ParseError::MissingField(name) => format!("the audit record has no {name}"),
    }
}

/// Best effort: the operation, protocol and status a filtered message carries.
fn audit_fields(frame: &[u8]) -> Option<(String, String, String)> {
    let text = std::str::from_utf8(frame).ok()?;
    if let Some(at) = text.find('{') {
        let v: serde_json::Value = serde_json::from_str(&text[at..]).ok()?;
        let field = |k: &str| v[k].as_str().unwrap_or("").to_string();
        return Some((field("operation"), field("protocol"), field("status")));
    }
    // CSV: ip,"user",protocol,operation,status,... (the header holds no comma).
    let mut fields = Vec::new();
    let (mut cur, mut quoted) = (String::new(), false);
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    (fields.len() >= 8).then(|| (fields[3].clone(), fields[2].clone(), fields[4].clone()))
}

fn filter_detail(frame: &[u8], reason: FilterReason) -> String {
    let (op, proto, status) = audit_fields(frame).unwrap_or_default();
    match reason {
        FilterReason::AppName => format!(
            "APP-NAME {:?} does not start with any of [filter] app_names",
            parse::frame_app_name(frame).unwrap_or("")
        ),
        FilterReason::Operation => format!(
            "operation {op:?} is not in [filter] operations (the reference broker's set by default)"
        ),
        FilterReason::UnknownOperation => format!(
            "operation {op:?} is not one Qumulo documents; add it to [filter] operations to keep it"
        ),
        FilterReason::Protocol => format!("protocol {proto:?} is not in [filter] protocols"),
        FilterReason::Status => format!("status {status:?} is not in [filter] statuses"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indent_keeps_key_order_and_strings() {
        let text = indent_json(r#"{"b":1,"a":{"x":"p,{q\"}","y":[]},"c":[1,2]}"#);
        assert_eq!(
            text,
            "{\n  \"b\": 1,\n  \"a\": {\n    \"x\": \"p,{q\\\"}\",\n    \"y\": []\n  },\n  \"c\": [\n    1,\n    2\n  ]\n}"
        );
    }

    #[test]
    fn records_join_a_pretty_printed_payload() {
        let text = "2023-03-03T14:08:51.058379Z q-varonis-1 qumulo\n{\n  \"user_id\": {\"name\": \"admin\"},\n  \"operation\": \"fs_create_file\"\n}\n\n<14>1 2026-01-01T00:00:00Z h-1 qumulo - - - x\nMar  3 14:08:51 q-1 qumulo {}\n";
        let r = records(text);
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(r[0].starts_with("2023-03-03T14:08:51.058379Z q-varonis-1 qumulo {"));
        assert!(r[0].ends_with('}'));
        assert!(r[1].starts_with("<14>1"));
        assert!(r[2].starts_with("Mar  3"));
    }

    fn cfg() -> Config {
        qbroker::config::RawConfig::parse(
            "[[targets]]\nname = \"v\"\nurl = \"https://127.0.0.1:8443/e\"\n[[clusters]]\nname = \"east\"\n",
        )
        .unwrap()
        .validate()
        .unwrap()
    }

    #[test]
    fn explain_says_what_a_line_becomes() {
        let cfg = cfg();
        let line = r#"2023-03-03T14:08:51.058379Z east-1 qumulo {"user_id":{"sid":"S-1","auth_id":"500","name":"admin"},"user_ip":"10.0.0.1","protocol":"smb2","operation":"fs_create_file","status":"ok","details":{"file_id":"1000003","path":"/my-file.txt"}}"#;
        let e = explain(&cfg, line);
        assert_eq!(e.verdict, Verdict::Event, "{}", e.text);
        assert!(e.text.contains("event file.create"), "{}", e.text);
        assert!(e.text.contains("\"path\": \"/my-file.txt\""), "{}", e.text);
        assert!(
            e.text
                .contains("cluster east ([[clusters]] entry), target v"),
            "{}",
            e.text
        );

        let e = explain(&cfg, &line.replace("fs_create_file", "fs_read_metadata"));
        assert_eq!(e.verdict, Verdict::Filtered);
        assert!(
            e.text
                .contains("\"fs_read_metadata\" is not in [filter] operations"),
            "{}",
            e.text
        );

        let csv = "<14>1 2026-01-27T14:12:23.9558Z other-1 qumulo - - - 10.2.3.4,\"AD\\bob, jr\",nfs3,fs_list_directory,ok,6,\"/Demo/\",\"\"";
        let e = explain(&cfg, csv);
        assert_eq!(e.verdict, Verdict::Filtered);
        assert!(e.text.contains("\"fs_list_directory\""), "{}", e.text);
        assert!(e.text.contains("cluster other, target v"), "{}", e.text);

        let e = explain(&cfg, "hello world");
        assert_eq!(e.verdict, Verdict::Invalid);
        assert!(e.text.contains("invalid (header)"), "{}", e.text);
    }
}
