//! acl: a file's ACL as read from `GET /v2/files/{id}/info/acl`, reduced to what
//! Varonis is told about, and the difference between two of them.
//!
//! Only explicit ACEs count: an ACE flagged `INHERITED` comes from a parent and
//! changes with it, not with this file. ACEs are compared as a multiset (order is
//! not a change) by type, trustee identity (auth_id, else SID, else domain and
//! uid/gid, else name), rights and flags, each as a set. An ACE whose rights
//! changed is one ACE removed and one added. `PROTECTED` in `control` is
//! protection (inheritance blocked).

use serde::{Deserialize, Deserializer, Serialize};

/// The trustee of an ACE, as Qumulo gave it (absent fields are `null`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Trustee {
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default, deserialize_with = "str_or_num")]
    pub auth_id: Option<String>,
    #[serde(default, deserialize_with = "str_or_num")]
    pub sid: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<i64>,
}

impl Trustee {
    /// What makes two trustees the same identity.
    fn identity(&self) -> TrusteeId<'_> {
        match (&self.auth_id, &self.sid) {
            (Some(a), _) if !a.is_empty() => (0, a, None),
            (_, Some(s)) if !s.is_empty() => (1, s, None),
            _ => match (self.uid, self.gid) {
                (Some(u), _) => (2, self.domain.as_deref().unwrap_or(""), Some(u)),
                (_, Some(g)) => (3, self.domain.as_deref().unwrap_or(""), Some(g)),
                _ => (4, self.name.as_deref().unwrap_or(""), None),
            },
        }
    }
}

/// One explicit ACE. `rights` and `flags` are sorted and without repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ace {
    #[serde(rename = "type")]
    pub kind: String,
    pub trustee: Trustee,
    pub rights: Vec<String>,
    pub flags: Vec<String>,
}

/// What makes two trustees the same: (kind of id, id, uid or gid).
type TrusteeId<'a> = (u8, &'a str, Option<i64>);

/// What makes two ACEs the same: type, trustee, rights, flags.
type AceKey<'a> = (&'a str, TrusteeId<'a>, &'a [String], &'a [String]);

impl Ace {
    fn key(&self) -> AceKey<'_> {
        (
            &self.kind,
            self.trustee.identity(),
            &self.rights,
            &self.flags,
        )
    }
}

/// The part of an ACL the diff looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// `PROTECTED` is in `control`.
    pub protected: bool,
    /// Explicit ACEs, sorted by their key.
    pub aces: Vec<Ace>,
}

/// What changed from one ACL to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclDiff {
    pub added: Vec<Ace>,
    pub removed: Vec<Ace>,
    /// `Some(true)`: protection added; `Some(false)`: removed.
    pub protection: Option<bool>,
}

impl AclDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.protection.is_none()
    }
}

#[derive(Deserialize)]
struct RawAcl {
    #[serde(default)]
    control: Vec<String>,
    #[serde(default)]
    aces: Vec<RawAce>,
}

#[derive(Deserialize)]
struct RawAce {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    trustee: Trustee,
    #[serde(default)]
    rights: Vec<String>,
}

fn str_or_num<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        S(String),
        N(serde_json::Number),
    }
    Ok(Option::<V>::deserialize(d)?.map(|v| match v {
        V::S(s) => s,
        V::N(n) => n.to_string(),
    }))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort_unstable();
    v.dedup();
    v
}

impl Acl {
    /// Parse the body of `GET /v2/files/{id}/info/acl`.
    pub fn from_v2_json(body: &[u8]) -> Result<Acl, serde_json::Error> {
        let raw: RawAcl = serde_json::from_slice(body)?;
        let mut aces: Vec<Ace> = raw
            .aces
            .into_iter()
            .filter(|a| !a.flags.iter().any(|f| f == "INHERITED"))
            .map(|a| Ace {
                kind: a.kind,
                trustee: a.trustee,
                rights: sorted(a.rights),
                flags: sorted(a.flags),
            })
            .collect();
        aces.sort_by(|a, b| a.key().cmp(&b.key()));
        Ok(Acl {
            protected: raw.control.iter().any(|c| c == "PROTECTED"),
            aces,
        })
    }

    /// What changed from `self` (before) to `after`.
    pub fn diff(&self, after: &Acl) -> AclDiff {
        let mut d = AclDiff {
            protection: (self.protected != after.protected).then_some(after.protected),
            ..AclDiff::default()
        };
        // Both lists are sorted by key: one merge pass is the multiset difference.
        let (mut i, mut j) = (0, 0);
        while i < self.aces.len() || j < after.aces.len() {
            let order = match (self.aces.get(i), after.aces.get(j)) {
                (Some(a), Some(b)) => a.key().cmp(&b.key()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                }
                std::cmp::Ordering::Less => {
                    d.removed.push(self.aces[i].clone());
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    d.added.push(after.aces[j].clone());
                    j += 1;
                }
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ace(kind: &str, auth_id: &str, rights: &[&str], flags: &[&str]) -> serde_json::Value {
        json!({"type": kind, "flags": flags,
               "trustee": {"domain": "LOCAL", "auth_id": auth_id, "uid": null, "gid": null,
                           "sid": format!("S-1-5-21-{auth_id}"), "name": format!("u{auth_id}")},
               "rights": rights})
    }

    fn acl(control: &[&str], aces: Vec<serde_json::Value>) -> Acl {
        let body = json!({"control": control, "posix_special_permissions": [], "aces": aces});
        Acl::from_v2_json(body.to_string().as_bytes()).unwrap()
    }

    const RW: &[&str] = &["READ", "WRITE_ATTR", "MODIFY"];

    #[test]
    fn an_added_ace_is_permissions_add() {
        let before = acl(&["PRESENT"], vec![ace("ALLOWED", "500", RW, &[])]);
        let after = acl(
            &["PRESENT"],
            vec![
                ace("ALLOWED", "500", RW, &[]),
                ace("DENIED", "501", &["DELETE"], &["OBJECT_INHERIT"]),
            ],
        );
        let d = before.diff(&after);
        assert_eq!(d.removed, vec![]);
        assert_eq!(d.protection, None);
        assert_eq!(d.added.len(), 1);
        assert_eq!(d.added[0].kind, "DENIED");
        assert_eq!(d.added[0].trustee.auth_id.as_deref(), Some("501"));
        assert_eq!(d.added[0].rights, vec!["DELETE"]);
        assert_eq!(d.added[0].flags, vec!["OBJECT_INHERIT"]);
        // and the other way round
        let d = after.diff(&before);
        assert_eq!((d.added.len(), d.removed.len()), (0, 1));
        assert_eq!(d.removed[0].trustee.auth_id.as_deref(), Some("501"));
    }

    #[test]
    fn changed_rights_are_one_removed_and_one_added() {
        let before = acl(&[], vec![ace("ALLOWED", "500", &["READ"], &[])]);
        let after = acl(&[], vec![ace("ALLOWED", "500", &["READ", "MODIFY"], &[])]);
        let d = before.diff(&after);
        assert_eq!(d.removed[0].rights, vec!["READ"]);
        assert_eq!(d.added[0].rights, vec!["MODIFY", "READ"]);
    }

    #[test]
    fn protection_flag() {
        let open = acl(
            &["PRESENT", "AUTO_INHERIT"],
            vec![ace("ALLOWED", "1", RW, &[])],
        );
        let closed = acl(
            &["PRESENT", "PROTECTED", "AUTO_INHERIT"],
            vec![ace("ALLOWED", "1", RW, &[])],
        );
        assert_eq!(
            open.diff(&closed),
            AclDiff {
                protection: Some(true),
                ..AclDiff::default()
            }
        );
        assert_eq!(closed.diff(&open).protection, Some(false));
        assert!(closed.diff(&closed).is_empty());
    }

    #[test]
    fn inherited_aces_are_ignored() {
        let before = acl(&[], vec![ace("ALLOWED", "500", RW, &[])]);
        let after = acl(
            &[],
            vec![
                ace("ALLOWED", "777", RW, &["INHERITED"]),
                ace("ALLOWED", "500", RW, &[]),
                ace(
                    "DENIED",
                    "8589934592",
                    &["READ"],
                    &["INHERITED", "OBJECT_INHERIT"],
                ),
            ],
        );
        assert!(before.diff(&after).is_empty());
        assert_eq!(after.aces.len(), 1);
    }

    #[test]
    fn reordered_aces_rights_and_flags_are_no_change() {
        let a = acl(
            &["PRESENT"],
            vec![
                ace(
                    "ALLOWED",
                    "500",
                    &["READ", "EXECUTE"],
                    &["OBJECT_INHERIT", "CONTAINER_INHERIT"],
                ),
                ace("DENIED", "501", &["DELETE"], &[]),
                ace("ALLOWED", "502", &["READ"], &[]),
            ],
        );
        let b = acl(
            &["PRESENT"],
            vec![
                ace("ALLOWED", "502", &["READ"], &[]),
                ace("DENIED", "501", &["DELETE"], &[]),
                ace(
                    "ALLOWED",
                    "500",
                    &["EXECUTE", "READ"],
                    &["CONTAINER_INHERIT", "OBJECT_INHERIT"],
                ),
            ],
        );
        assert!(a.diff(&b).is_empty());
    }

    #[test]
    fn several_changes_in_one_write() {
        let before = acl(
            &[],
            vec![
                ace("ALLOWED", "500", RW, &[]),
                ace("ALLOWED", "501", RW, &[]),
            ],
        );
        let after = acl(
            &["PROTECTED"],
            vec![
                ace("ALLOWED", "500", RW, &[]),
                ace("ALLOWED", "502", RW, &[]),
            ],
        );
        let d = before.diff(&after);
        assert_eq!(d.protection, Some(true));
        assert_eq!(d.added[0].trustee.auth_id.as_deref(), Some("502"));
        assert_eq!(d.removed[0].trustee.auth_id.as_deref(), Some("501"));
    }

    #[test]
    fn duplicate_aces_count_as_a_multiset() {
        let one = acl(&[], vec![ace("ALLOWED", "500", RW, &[])]);
        let two = acl(
            &[],
            vec![
                ace("ALLOWED", "500", RW, &[]),
                ace("ALLOWED", "500", RW, &[]),
            ],
        );
        assert_eq!(one.diff(&two).added.len(), 1);
        assert_eq!(two.diff(&one).removed.len(), 1);
    }

    #[test]
    fn trustees_compare_by_identity_and_parse_leniently() {
        // Same auth_id, name resolved differently: the same trustee.
        let a = Acl::from_v2_json(
            br#"{"aces":[{"type":"ALLOWED","flags":[],"rights":["READ"],"trustee":{"auth_id":500,"name":"admin"}}]}"#,
        )
        .unwrap();
        let b = Acl::from_v2_json(
            br#"{"control":[],"aces":[{"type":"ALLOWED","flags":[],"rights":["READ"],"trustee":{"auth_id":"500","name":null,"extra":1}}]}"#,
        )
        .unwrap();
        assert!(a.diff(&b).is_empty());
        assert_eq!(a.aces[0].trustee.auth_id.as_deref(), Some("500"));
        assert!(Acl::from_v2_json(b"{\"aces\": 5}").is_err());
        assert_eq!(
            serde_json::to_value(&a.aces[0]).unwrap(),
            json!({"type": "ALLOWED", "trustee": {"domain": null, "auth_id": "500", "sid": null, "name": "admin"},
                   "rights": ["READ"], "flags": []})
        );
    }
}
