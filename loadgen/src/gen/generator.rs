//! the generator: [`GenCore`], the compiled configuration shared by the
//! senders and the sink, which renders frames and expected events.

use super::*;

/// The generator's configuration, compiled: shared by all senders and the sink.
pub struct GenCore {
    cfg: GenConfig,
    tag: u16,
    /// slot decision: `below(all_total) < exp_total` means expected
    all_total: u64,
    exp_total: u64,
    /// (cumulative weight, op, status forced to access denied)
    exp_choices: Vec<(u64, u8, bool)>,
    filt_choices: Vec<(u64, u8)>,
    proto_cum: Vec<(u64, u8)>,
    users: Vec<User>,
    op_open: u8,
    op_read: u8,
    op_write: u8,
    op_rename: u8,
    proto_smb: u8,
}

pub(super) const PPM: u64 = 1_000_000;
pub(super) const PLACEHOLDER_TS: &[u8; TS_LEN] = b"2026-01-27T14:12:23.955812Z";

pub(super) fn pick_cum<T: Copy>(cum: &[(u64, T)], u: u64) -> T {
    cum.iter()
        .find(|(c, _)| u < *c)
        .map(|(_, v)| *v)
        .unwrap_or(cum[cum.len() - 1].1)
}

pub(super) fn config_tag(cfg: &GenConfig) -> u16 {
    let m = &cfg.mix;
    let mut h = key(&[
        cfg.seed,
        cfg.format as u64,
        cfg.burst as u64,
        m.denied_ppm as u64,
        m.error_ppm as u64,
        m.ipv6_ppm as u64,
    ]);
    for &w in &m.weights {
        h = mix64(h ^ w as u64);
    }
    for (p, w) in &m.protocols {
        for b in p.bytes() {
            h = mix64(h ^ b as u64);
        }
        h = mix64(h ^ (*w as u64) << 8);
    }
    for b in cfg.cluster_prefix.bytes() {
        h = mix64(h ^ b as u64);
    }
    if cfg.acl_ppm > 0 {
        h = mix64(h ^ 0xAC1 ^ (cfg.acl_ppm as u64) << 16);
    }
    (h >> 48) as u16
}

impl GenCore {
    pub fn new(cfg: GenConfig) -> anyhow::Result<Self> {
        let m = &cfg.mix;
        if m.weights.len() != OPS.len() {
            bail!(
                "mix has {} weights for {} operations",
                m.weights.len(),
                OPS.len()
            );
        }
        for (name, ppm) in [
            ("denied", m.denied_ppm),
            ("error", m.error_ppm),
            ("ipv6", m.ipv6_ppm),
        ] {
            if ppm as u64 > PPM {
                bail!("{name} share above 100%");
            }
        }
        if m.denied_ppm as u64 + m.error_ppm as u64 > PPM {
            bail!("denied + error shares above 100%");
        }
        if cfg.acl_ppm as u64 > PPM / 2 {
            bail!("acl share above 50%");
        }
        if cfg.acl_ppm > 0 && cfg.format != Format::Json {
            bail!("metadata changes on the namespace need the JSON format (CSV has no owners)");
        }
        if m.protocols.is_empty() || m.protocols.len() > 255 || m.protocols.iter().all(|p| p.1 == 0)
        {
            bail!("protocols: between 1 and 255, with a positive weight");
        }
        let p = &cfg.cluster_prefix;
        if p.is_empty()
            || p.ends_with('-')
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("cluster prefix `{p}`: letters, digits, `-`, `_`, not ending in `-`");
        }
        let (mut exp_choices, mut filt_choices) = (Vec::new(), Vec::new());
        let (mut exp_total, mut filt_total) = (0u64, 0u64);
        for (i, (op, &w)) in OPS.iter().zip(&m.weights).enumerate() {
            let w = w as u64;
            if op.kind.kept() {
                exp_total += w * PPM;
                exp_choices.push((exp_total, i as u8, false));
            } else if op.kind.deniable() {
                exp_total += w * m.denied_ppm as u64;
                exp_choices.push((exp_total, i as u8, true));
                filt_total += w * (PPM - m.denied_ppm as u64);
                filt_choices.push((filt_total, i as u8));
            } else {
                filt_total += w * PPM;
                filt_choices.push((filt_total, i as u8));
            }
        }
        if exp_total + filt_total == 0 {
            bail!("every operation weight is zero");
        }
        let mut proto_cum = Vec::new();
        let mut pt = 0;
        for (i, (_, w)) in m.protocols.iter().enumerate() {
            pt += *w as u64;
            proto_cum.push((pt, i as u8));
        }
        let idx = |n: &str| op_index(n).expect("known op") as u8;
        Ok(GenCore {
            tag: config_tag(&cfg),
            all_total: exp_total + filt_total,
            exp_total,
            exp_choices,
            filt_choices,
            proto_cum,
            users: build_users(),
            op_open: idx("fs_open"),
            op_read: idx("fs_read_data"),
            op_write: idx("fs_write_data"),
            op_rename: idx("fs_rename"),
            proto_smb: m.protocols.iter().position(|p| p.0 == "smb2").unwrap_or(0) as u8,
            cfg,
        })
    }

    pub fn config(&self) -> &GenConfig {
        &self.cfg
    }

    /// The run tag carried in every identity.
    pub fn tag(&self) -> u16 {
        self.tag
    }

    pub fn cluster_name(&self, cluster: u16) -> String {
        format!("{}{:03}", self.cfg.cluster_prefix, cluster)
    }

    /// The syslog HOSTNAME of a node (`<cluster>-<node>`, node from 1).
    pub fn hostname(&self, cluster: u16, node: u16) -> String {
        format!("{}-{}", self.cluster_name(cluster), node)
    }

    pub(super) fn is_burst(&self, cluster: u16, node: u16) -> bool {
        self.cfg.burst && (cluster, node) == BURST_NODE
    }

    /// Expected share of a node's events (what qbroker should deliver).
    pub fn expected_share(&self, cluster: u16, node: u16) -> f64 {
        if self.is_burst(cluster, node) {
            0.75
        } else {
            self.exp_total as f64 / self.all_total as f64
        }
    }

    /// Whether slot `slot` of a node's stream is a namespace metadata change.
    pub fn slot_is_acl(&self, cluster: u16, node: u16, slot: u64) -> bool {
        self.cfg.acl_ppm > 0
            && !self.is_burst(cluster, node)
            && Rng::new(key(&[
                self.cfg.seed,
                0xAC0,
                cluster as u64,
                node as u64,
                slot,
            ]))
            .ppm(self.cfg.acl_ppm)
    }

    /// Whether slot `slot` of a node's stream is an expected event.
    pub fn slot_is_expected(&self, cluster: u16, node: u16, slot: u64) -> bool {
        if self.is_burst(cluster, node) {
            return !slot.is_multiple_of(4);
        }
        let mut r = Rng::new(key(&[
            self.cfg.seed,
            0x510,
            cluster as u64,
            node as u64,
            slot,
        ]));
        r.below(self.all_total) < self.exp_total
    }

    fn id(&self, cluster: u16, node: u16, filtered: bool, seq: u64) -> Identity {
        Identity {
            tag: self.tag,
            cluster,
            node,
            filtered,
            seq,
        }
    }

    /// The `seq`-th expected event of a node.
    pub fn expected_event(&self, cluster: u16, node: u16, seq: u64) -> Event {
        let id = self.id(cluster, node, false, seq);
        if self.is_burst(cluster, node) {
            return self.burst_event(id, seq);
        }
        let mut r = Rng::new(key(&[
            self.cfg.seed,
            0xE4,
            cluster as u64,
            node as u64,
            seq,
        ]));
        let u = r.below(self.exp_total.max(1));
        let (op, forced) = {
            let c = self
                .exp_choices
                .iter()
                .find(|c| u < c.0)
                .unwrap_or(&self.exp_choices[0]);
            (c.1, c.2)
        };
        let m = &self.cfg.mix;
        let errors = OPS[op as usize].errors;
        let status = if forced || r.ppm(m.denied_ppm) {
            DENIED
        } else if !errors.is_empty() && r.ppm(m.error_ppm) {
            r.pick(errors)
        } else {
            "ok"
        };
        self.shape(&mut r, id, op, status)
    }

    /// The `seq`-th filtered-out event of a node.
    pub fn filtered_event(&self, cluster: u16, node: u16, seq: u64) -> Event {
        let id = self.id(cluster, node, true, seq);
        if self.is_burst(cluster, node) {
            let mut ev = self.burst_event(id, seq * 3);
            ev.op = self.op_open;
            ev.io = None;
            return ev;
        }
        let mut r = Rng::new(key(&[
            self.cfg.seed,
            0xF1,
            cluster as u64,
            node as u64,
            seq,
        ]));
        let op = pick_cum(&self.filt_choices, r.below(self.all_total - self.exp_total));
        let errors = OPS[op as usize].errors;
        let status = if !errors.is_empty() && r.ppm(self.cfg.mix.error_ppm) {
            r.pick(errors)
        } else {
            "ok"
        };
        self.shape(&mut r, id, op, status)
    }

    /// Ransomware-like: one user reads, overwrites and renames file after file.
    fn burst_event(&self, id: Identity, k: u64) -> Event {
        let (c, n, seed) = (id.cluster as u64, id.node as u64, self.cfg.seed);
        let file = k / 3;
        let path = PathSpec {
            dir: key(&[seed, 0xB0, c, n, file / 200]),
            leaf: key(&[seed, 0xB1, c, n, file]),
            is_dir: false,
            suffix: None,
        };
        let size = 4096 + mix64(path.leaf) % (8 << 20);
        let (op, target, io) = match k % 3 {
            0 => (
                self.op_read,
                None,
                Some(Io {
                    offset: 0,
                    size,
                    file_size: size,
                }),
            ),
            1 => (
                self.op_write,
                None,
                Some(Io {
                    offset: 0,
                    size,
                    file_size: size,
                }),
            ),
            _ => (
                self.op_rename,
                Some(PathSpec {
                    suffix: Some(".locked"),
                    ..path
                }),
                None,
            ),
        };
        Event {
            id,
            op,
            status: "ok",
            user: RANSOM_USER,
            client: 7,
            ipv6: false,
            proto: self.proto_smb,
            path,
            target,
            meta: None,
            io,
            layout: 0,
        }
    }

    /// The users that can own files and be ACL trustees (sid, auth_id and name known).
    pub fn owner_users(&self) -> Vec<u16> {
        (0..self.users.len() as u16)
            .filter(|&u| self.users[u as usize].owner_exp.is_some())
            .collect()
    }

    /// A user as the JSON format names it.
    pub fn user_json(&self, user: u16) -> &ExpUser {
        &self.users[user as usize].json_exp
    }

    fn owner_user(&self, r: &mut Rng) -> u16 {
        loop {
            let u = r.below(N_USERS) as u16;
            if self.users[u as usize].owner_exp.is_some() {
                return u;
            }
        }
    }

    fn shape(&self, r: &mut Rng, id: Identity, op: u8, status: &'static str) -> Event {
        let kind = OPS[op as usize].kind;
        let (seed, c) = (self.cfg.seed, id.cluster as u64);
        let user = r.below(N_USERS) as u16;
        let client = r.below(4096) as u32;
        let ipv6 = r.ppm(self.cfg.mix.ipv6_ppm);
        let proto_total = self.proto_cum[self.proto_cum.len() - 1].0;
        let proto = pick_cum(&self.proto_cum, r.below(proto_total));
        let is_dir = match kind {
            Kind::CreateDir | Kind::FsDir => true,
            Kind::Delete | Kind::Rename | Kind::WriteMeta | Kind::FsAny => r.below(5) == 0,
            _ => false,
        };
        let dir = key(&[seed, 0xD1, c, r.below(2000)]);
        let path = PathSpec {
            dir,
            leaf: key(&[seed, 0x1E, c, r.below(50_000)]),
            is_dir,
            suffix: None,
        };
        let target = (kind == Kind::Rename).then(|| {
            let dir = if r.below(10) == 0 {
                key(&[seed, 0xD1, c, r.below(2000)])
            } else {
                dir
            };
            PathSpec {
                dir,
                leaf: r.next_u64(),
                is_dir,
                suffix: None,
            }
        });
        let meta = (kind == Kind::WriteMeta && status == "ok").then(|| {
            let before_owner = self.owner_user(r);
            let mut after_owner = before_owner;
            if r.below(10) < 3 {
                while self.users[after_owner as usize].owner_exp
                    == self.users[before_owner as usize].owner_exp
                {
                    after_owner = self.owner_user(r);
                }
            }
            // 2025-01-01T00:00:00Z plus up to a year
            let t = 1_735_689_600_000_000_000 + r.below(365 * 86_400 * 1_000_000_000);
            Meta {
                before_owner,
                after_owner,
                ctime_before_ns: t,
                ctime_after_ns: t + 1 + r.below(10_000_000_000),
                mtime_ns: t - r.below(t / 1000),
            }
        });
        let io = matches!(kind, Kind::ReadData | Kind::WriteData).then(|| {
            let file_size = r.below(100 << 20);
            let size = 1 + r.below(1 << 20);
            Io {
                offset: r.below(file_size.max(1)),
                size,
                file_size: file_size.max(size),
            }
        });
        Event {
            id,
            op,
            status,
            user,
            client,
            ipv6,
            proto,
            path,
            target,
            meta,
            io,
            layout: r.below(2) as u8,
        }
    }

    // ------------------------------------------------------------ rendering

    fn push_ip(&self, ev: &Event, out: &mut Vec<u8>) {
        let c = ev.id.cluster as u64;
        if ev.ipv6 {
            out.extend_from_slice(b"fd00:");
            push_hex(out, c);
            out.extend_from_slice(b"::");
            push_hex(out, ev.client as u64 + 1);
        } else {
            out.extend_from_slice(b"10.");
            push_u64(out, c % 256);
            out.push(b'.');
            push_u64(out, ev.client as u64 / 254);
            out.push(b'.');
            push_u64(out, ev.client as u64 % 254 + 1);
        }
    }

    fn protocol(&self, ev: &Event) -> &str {
        &self.cfg.mix.protocols[ev.proto as usize].0
    }

    /// The syslog MSG (the audit record) of an event.
    pub fn render_msg(&self, ev: &Event, out: &mut Vec<u8>) {
        match self.cfg.format {
            Format::Json => self.render_json(ev, out),
            Format::Csv => self.render_csv(ev, out),
        }
    }

    fn render_json(&self, ev: &Event, out: &mut Vec<u8>) {
        out.push(b'{');
        if ev.layout == 0 {
            self.json_who(ev, out);
            out.push(b',');
            self.json_what(ev, out);
        } else {
            self.json_what(ev, out);
            out.push(b',');
            self.json_who(ev, out);
        }
        out.push(b'}');
    }

    fn json_who(&self, ev: &Event, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"user_id\":");
        out.extend_from_slice(&self.users[ev.user as usize].json);
        out.extend_from_slice(b",\"user_ip\":\"");
        self.push_ip(ev, out);
        out.extend_from_slice(b"\",\"protocol\":");
        json_str(out, self.protocol(ev));
    }

    fn json_what(&self, ev: &Event, out: &mut Vec<u8>) {
        let def = ev.op();
        out.extend_from_slice(b"\"operation\":\"");
        out.extend_from_slice(def.name.as_bytes());
        out.extend_from_slice(b"\",\"status\":\"");
        out.extend_from_slice(ev.status.as_bytes());
        out.extend_from_slice(b"\",\"details\":{");
        let id = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"\"file_id\":\"");
            push_u128(out, ev.id.encode());
            out.push(b'"');
        };
        let path = |out: &mut Vec<u8>, p: &PathSpec| {
            out.push(b'"');
            render_path(p, &mut JsonOut(out));
            out.push(b'"');
        };
        match def.kind {
            Kind::Connect => {
                out.extend_from_slice(b"\"extra_name\":\"\",\"second_extra_name\":\"\"")
            }
            Kind::Mgmt => {
                out.extend_from_slice(b"\"extra_name\":\"/export");
                push_u64(out, ev.client as u64 % 16);
                out.extend_from_slice(b"\",\"second_extra_name\":\"\"");
            }
            Kind::WriteMeta if ev.meta.is_some() => {
                let m = ev.meta.expect("checked");
                id(out);
                out.extend_from_slice(b",\"path\":");
                path(out, &ev.path);
                for (name, owner, ctime) in [
                    ("after", m.after_owner, m.ctime_after_ns),
                    ("before", m.before_owner, m.ctime_before_ns),
                ] {
                    out.extend_from_slice(b",\"");
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(b"\":{\"ctime\":\"");
                    push_ns_time(out, ctime);
                    out.extend_from_slice(b"\",\"mtime\":\"");
                    push_ns_time(out, m.mtime_ns);
                    out.extend_from_slice(b"\",\"owner\":");
                    let u = &self.users[owner as usize];
                    out.extend_from_slice(u.owner_json.as_deref().unwrap_or(b"null"));
                    out.push(b'}');
                }
            }
            _ => {
                out.extend_from_slice(b"\"path\":");
                path(out, &ev.path);
                if let Some(t) = &ev.target {
                    out.extend_from_slice(b",\"target\":");
                    path(out, t);
                }
                out.push(b',');
                id(out);
                if let Some(io) = ev.io {
                    out.extend_from_slice(b",\"offset\":");
                    push_u64(out, io.offset);
                    out.extend_from_slice(b",\"size\":");
                    push_u64(out, io.size);
                    out.extend_from_slice(b",\"file_size\":");
                    push_u64(out, io.file_size);
                }
            }
        }
        out.push(b'}');
    }

    fn render_csv(&self, ev: &Event, out: &mut Vec<u8>) {
        let def = ev.op();
        self.push_ip(ev, out);
        out.push(b',');
        out.extend_from_slice(&self.users[ev.user as usize].csv);
        out.push(b',');
        out.extend_from_slice(self.protocol(ev).as_bytes());
        out.push(b',');
        out.extend_from_slice(def.name.as_bytes());
        out.push(b',');
        out.extend_from_slice(ev.status.as_bytes());
        out.push(b',');
        match def.kind {
            Kind::Connect => out.extend_from_slice(b",\"\",\"\""),
            Kind::Mgmt => {
                let n = ev.client as u64 % 16;
                push_u64(out, n + 2);
                out.extend_from_slice(b",\"/export");
                push_u64(out, n);
                out.extend_from_slice(b"\",\"\"");
            }
            _ => {
                push_u128(out, ev.id.encode());
                out.extend_from_slice(b",\"");
                render_path(&ev.path, &mut CsvOut(out));
                out.extend_from_slice(b"\",\"");
                if let Some(t) = &ev.target {
                    render_path(t, &mut CsvOut(out));
                }
                out.push(b'"');
            }
        }
    }

    /// Appends one complete frame; returns the offset of its timestamp.
    pub fn render_frame(
        &self,
        ev: &Event,
        host: &[u8],
        framing: Framing,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> usize {
        let header = |o: &mut Vec<u8>| {
            o.extend_from_slice(b"<14>1 ");
            o.extend_from_slice(PLACEHOLDER_TS);
            o.push(b' ');
            o.extend_from_slice(host);
            o.extend_from_slice(b" qumulo - - - ");
        };
        match framing {
            Framing::Lf => {
                let ts = out.len() + TS_OFFSET;
                header(out);
                self.render_msg(ev, out);
                out.push(b'\n');
                ts
            }
            Framing::Octet => {
                scratch.clear();
                header(scratch);
                self.render_msg(ev, scratch);
                push_u64(out, scratch.len() as u64);
                out.push(b' ');
                let ts = out.len() + TS_OFFSET;
                out.extend_from_slice(scratch);
                ts
            }
        }
    }

    pub fn path_string(&self, p: &PathSpec) -> String {
        let mut s = String::new();
        render_path(p, &mut StrOut(&mut s));
        s
    }

    /// What qbroker must deliver for `ev` (meaningful when `ev.delivered()`).
    pub fn expected(&self, ev: &Event) -> Expected {
        let def = ev.op();
        let dir =
            def.kind == Kind::CreateDir || ev.path.is_dir || ev.target.is_some_and(|t| t.is_dir);
        let user = &self.users[ev.user as usize];
        let owner = match (self.cfg.format, ev.meta) {
            (Format::Json, Some(m)) => {
                let b = self.users[m.before_owner as usize].owner_exp.clone();
                let a = self.users[m.after_owner as usize].owner_exp.clone();
                match (b, a) {
                    (Some(b), Some(a)) if a != b => Some((b, a)),
                    _ => None,
                }
            }
            _ => None,
        };
        let operation = if ev.status == DENIED {
            "access_denied"
        } else {
            match (def.kind, dir) {
                (Kind::CreateFile, _) => "file.create",
                (Kind::CreateDir, _) => "directory.create",
                (Kind::ReadData, _) => "file.read",
                (Kind::WriteData, _) => "file.write",
                (Kind::Delete, false) => "file.delete",
                (Kind::Delete, true) => "directory.delete",
                (Kind::Rename, false) => "file.rename",
                (Kind::Rename, true) => "directory.rename",
                (Kind::WriteMeta, false) if owner.is_some() => "file.owner_change",
                (Kind::WriteMeta, true) if owner.is_some() => "directory.owner_change",
                (Kind::WriteMeta, false) => "file.permissions_change",
                (Kind::WriteMeta, true) => "directory.permissions_change",
                _ => "(filtered out)",
            }
        };
        let mut ip = Vec::new();
        self.push_ip(ev, &mut ip);
        Expected {
            cluster: self.cluster_name(ev.id.cluster),
            node: self.hostname(ev.id.cluster, ev.id.node),
            operation: operation.to_string(),
            object_type: if dir { "directory" } else { "file" },
            path: self.path_string(&ev.path),
            new_path: ev.target.map(|t| self.path_string(&t)),
            file_id: ev.id.to_decimal(),
            user: match self.cfg.format {
                Format::Json => user.json_exp.clone(),
                Format::Csv => user.csv_exp.clone(),
            },
            client_ip: String::from_utf8(ip).expect("ascii"),
            protocol: self.protocol(ev).to_string(),
            status: ev.status,
            success: ev.status == "ok",
            owner,
            qumulo_operation: def.name,
        }
    }
}
