//! vocabulary and users: the shares, directories, file names and users that
//! paths and identities are drawn from.

use super::*;

pub(super) const SHARES: &[&str] = &[
    "finance",
    "engineering",
    "hr",
    "legal",
    "marketing",
    "sales",
    "research",
    "Entwicklung",
    "ventes",
    "営業部",
    "media",
    "home",
];
pub(super) const DIRS: &[&str] = &[
    "projects",
    "2023",
    "2024",
    "2025",
    "Q1",
    "Q2",
    "Q3",
    "Q4",
    "archive",
    "reports",
    "drafts",
    "Überblick",
    "données",
    "Проекты",
    "资料",
    "client files",
    "shared, common",
    "Jürgen's stuff",
    "temp",
    "backup",
    "src",
    "assets",
    "contracts",
    "年度報告",
    "ñandú",
    "photos 📷",
    "old",
    "v2",
    "final",
    "FINAL (2)",
    "a rather long directory name that somebody typed out in full",
    "résumés",
    "Ελληνικά",
    "מסמכים",
    "tmp.d",
];
pub(super) const STEMS: &[&str] = &[
    "budget",
    "report",
    "invoice",
    "notes",
    "Übersicht",
    "présentation",
    "договор",
    "見積書",
    "meeting notes",
    "plan, draft",
    "IMG_2041",
    "data",
    "README",
    "contract 2024-03",
    "résumé José",
    "Quarterly Business Review - final version for the board",
    "報告書",
    "naïve café menu",
    "emoji 🎉 party",
    "~$budget",
];
pub(super) const EXTS: &[&str] = &[
    ".docx", ".xlsx", ".pdf", ".txt", ".pptx", ".jpg", ".csv", ".zip", ".psd", ".mp4", ".log", "",
];
/// depth of the directory chain below the share, weighted towards 3..6
pub(super) const DEPTHS: &[u64] = &[1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6, 6, 7, 8, 9, 10, 12];

pub(super) fn render_path<O: Out>(p: &PathSpec, out: &mut O) {
    let mut r = Rng::new(p.dir);
    out.raw("/");
    out.text(r.pick(SHARES));
    for _ in 0..r.pick(DEPTHS) {
        out.raw("/");
        out.text(r.pick(DIRS));
        if r.below(4) == 0 {
            out.raw(" ");
            out.num(r.below(100));
        }
    }
    out.raw("/");
    let mut l = Rng::new(p.leaf);
    if p.is_dir {
        out.text(l.pick(DIRS));
        out.raw(" ");
        out.num(l.below(1000));
        if let Some(s) = p.suffix {
            out.text(s);
        }
        out.raw("/");
    } else {
        if l.below(64) == 0 {
            // an embedded quote: Qumulo quotes the field; escaping is undocumented
            out.text("\"quoted\" name");
        } else {
            out.text(l.pick(STEMS));
        }
        if l.below(2) == 0 {
            out.raw("_");
            out.num(l.below(10_000));
        }
        out.text(l.pick(EXTS));
        if let Some(s) = p.suffix {
            out.text(s);
        }
    }
}

pub(super) struct User {
    /// the JSON `user_id` object
    pub(super) json: Vec<u8>,
    /// the CSV user field, quoted
    pub(super) csv: Vec<u8>,
    pub(super) json_exp: ExpUser,
    pub(super) csv_exp: ExpUser,
    /// `{"sid":...,"auth_id":...}` for users that can own files
    pub(super) owner_json: Option<Vec<u8>>,
    pub(super) owner_exp: Option<ExpOwner>,
}

pub(super) const N_USERS: u64 = 512;
pub(super) const RANSOM_USER: u16 = 3;
pub(super) const FIRST: &[&str] = &[
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "józef",
    "zoë",
    "søren",
    "émilie",
    "yuki",
    "олег",
    "anne-marie",
    "o'brien",
    "ßtefan",
    "李",
];
pub(super) const LAST: &[&str] = &[
    "smith",
    "müller",
    "nguyen",
    "garcía",
    "rossi",
    "kowalski",
    "tanaka",
    "dubois",
    "иванов",
    "o'neil",
    "van der berg",
    "jørgensen",
    "王",
    "lópez",
    "schmidt",
    "hughes",
];
pub(super) const DOMAINS: &[&str] = &["CORP", "EMEA", "ad.example.com"];

pub(super) fn build_users() -> Vec<User> {
    (0..N_USERS as usize)
        .map(|i| {
            let first = FIRST[i % FIRST.len()];
            let last = LAST[(i / FIRST.len()) % LAST.len()];
            let (sid, auth_id, name): (Option<String>, Option<String>, Option<String>) =
                match i % 16 {
                    11 | 12 => {
                        let uid = 1000 + i as u64;
                        (
                            Some(format!("S-1-5-88-1-{uid}")),
                            Some(((3u64 << 32) + uid).to_string()),
                            Some(uid.to_string()),
                        )
                    }
                    13 => (
                        Some("S-1-5-21-2906410434-1219826218-1470373424-500".to_string()),
                        Some("500".to_string()),
                        Some("admin".to_string()),
                    ),
                    // an identity Qumulo could not resolve to a name
                    14 => (
                        Some(format!(
                            "S-1-5-21-1004336348-1177238915-682003330-{}",
                            5000 + i
                        )),
                        Some((0x6_0000_0000u64 + i as u64).to_string()),
                        None,
                    ),
                    _ => (
                        Some(format!(
                            "S-1-5-21-3623811015-3361044348-30300820-{}",
                            1100 + i
                        )),
                        Some((0x5_0000_0000u64 + 1100 + i as u64).to_string()),
                        Some(format!("{}\\{first}.{last}", DOMAINS[i % DOMAINS.len()])),
                    ),
                };
            let mut json = Vec::new();
            json.extend_from_slice(b"{\"sid\":");
            json_opt(&mut json, sid.as_deref());
            json.extend_from_slice(b",\"auth_id\":");
            json_opt(&mut json, auth_id.as_deref());
            json.extend_from_slice(b",\"name\":");
            json_opt(&mut json, name.as_deref());
            json.push(b'}');
            // CSV carries one string: the name, else the SID
            let csv_str = name.clone().or(sid.clone()).unwrap_or_default();
            let mut csv = Vec::new();
            CsvOut(&mut csv).quoted(&csv_str);
            let csv_exp = if csv_str.starts_with("S-1-") {
                ExpUser {
                    sid: Some(csv_str),
                    ..ExpUser::default()
                }
            } else {
                ExpUser {
                    name: Some(csv_str),
                    ..ExpUser::default()
                }
            };
            let mut owner_json = Vec::new();
            owner_json.extend_from_slice(b"{\"sid\":");
            json_opt(&mut owner_json, sid.as_deref());
            owner_json.extend_from_slice(b",\"auth_id\":");
            json_opt(&mut owner_json, auth_id.as_deref());
            owner_json.push(b'}');
            let owns = sid.is_some() && auth_id.is_some() && name.is_some();
            User {
                json,
                csv,
                csv_exp,
                owner_exp: owns.then(|| ExpOwner {
                    sid: sid.clone(),
                    auth_id: auth_id.clone(),
                }),
                owner_json: owns.then_some(owner_json),
                json_exp: ExpUser { sid, auth_id, name },
            }
        })
        .collect()
}
