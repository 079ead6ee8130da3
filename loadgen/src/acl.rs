//! acl: a namespace of ACL-carrying objects for the synthetic clusters, and
//! what testkit's Qumulo REST API stand-in serves of it over HTTPS.
//!
//! With `--acl-pct P`, P% of each node's slots are metadata changes
//! (`fs_write_metadata`) on the node's own objects: the m-th such event of a
//! node changes object `m % OBJECTS_PER_NODE` once more (its version
//! `m / OBJECTS_PER_NODE`). Each version applies one change, a pure function of
//! `(seed, cluster, node, object, version)` and the object's state: an ACE
//! added or removed (chmod), protection set or cleared, or a new owner
//! (chown). The sender applies the change to the shared [`Namespace`] just
//! before it writes the frame, so what the API returns is what the event
//! announced; an object changes again only `OBJECTS_PER_NODE` metadata events
//! of its node later (about 1.5 s at 20,000 events/s over 6 nodes), long after
//! qbroker read it.
//!
//! An object's `file_id` is an [`Identity`] with [`OBJECT_FLAG`] in its seq (the
//! object number below it), so the sink knows a namespace event from the id;
//! the k-th record the sink receives for an object is its version k (qbroker
//! keeps each file's events in order). One in four objects is a directory whose
//! path has no trailing `/`: its type comes from the attributes call.
//!
//! The API: `POST /v1/session/login`, `GET /v1/session/who-am-i`,
//! `GET /v1/cluster/settings`, `GET /v2/files/{id}/info/acl`,
//! `GET /v1/files/{id}/info/attributes`; bearer tokens expire after
//! `token_uses` requests (401), to exercise renewal; an optional delay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use testkit::pki::Pki;
use testkit::qumulo::{Files, Mode, QumuloApi};

use crate::gen::{key, op_index, Event, ExpOwner, GenCore, Identity, Meta, PathSpec, Rng};

/// Set in an identity's seq: the id names a namespace object, not an event.
pub const OBJECT_FLAG: u64 = 1 << 50;
/// Objects per node.
pub const OBJECTS_PER_NODE: u64 = 256;
pub const API_USER: &str = "loadgen";
pub const API_PASSWORD: &str = "loadgen";

const RIGHTS: [&[&str]; 4] = [
    &[
        "EXECUTE",
        "READ",
        "READ_ACL",
        "READ_ATTR",
        "READ_EA",
        "SYNCHRONIZE",
    ],
    &[
        "DELETE",
        "EXTEND",
        "MODIFY",
        "READ",
        "WRITE_ATTR",
        "WRITE_EA",
    ],
    &["DELETE"],
    &["CHANGE_OWNER", "WRITE_ACL"],
];

/// One explicit ACE: allowed or denied, a trustee (user index), a rights set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AceSpec {
    pub allow: bool,
    pub user: u16,
    pub rights: u8,
}

/// An object's owner and ACL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjState {
    pub owner: u16,
    pub protected: bool,
    pub aces: Vec<AceSpec>,
}

/// One version's change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Add(AceSpec),
    Remove(usize),
    Protect,
    Unprotect,
    Chown(u16),
}

pub fn is_dir(object: u64) -> bool {
    object.is_multiple_of(4)
}

/// The object id of a node's object.
pub fn object_id(core: &GenCore, cluster: u16, node: u16, object: u64) -> Identity {
    Identity {
        tag: core.tag(),
        cluster,
        node,
        filtered: false,
        seq: OBJECT_FLAG | object,
    }
}

/// The object an identity names, if it names one.
pub fn object_of(id: &Identity) -> Option<u64> {
    (id.seq & OBJECT_FLAG != 0).then_some(id.seq & !OBJECT_FLAG)
}

/// The deterministic part of the model (no state): shared by sender, API and sink.
pub struct Model {
    core: Arc<GenCore>,
    owners: Vec<u16>,
}

impl Model {
    pub fn new(core: Arc<GenCore>) -> Model {
        let owners = core.owner_users();
        Model { core, owners }
    }

    pub fn core(&self) -> &Arc<GenCore> {
        &self.core
    }

    fn rng(&self, parts: &[u64]) -> Rng {
        let mut all = vec![self.core.config().seed, 0xAC1];
        all.extend_from_slice(parts);
        Rng::new(key(&all))
    }

    pub fn initial(&self, c: u16, n: u16, object: u64) -> ObjState {
        let mut r = self.rng(&[c as u64, n as u64, object, u64::MAX]);
        let owner = r.pick(&self.owners);
        ObjState {
            owner,
            protected: false,
            aces: vec![
                AceSpec {
                    allow: true,
                    user: owner,
                    rights: 1,
                },
                AceSpec {
                    allow: true,
                    user: r.pick(&self.owners),
                    rights: 0,
                },
            ],
        }
    }

    /// The change of version `v` from `state`.
    pub fn change(&self, c: u16, n: u16, object: u64, v: u64, state: &ObjState) -> Change {
        let mut r = self.rng(&[c as u64, n as u64, object, v]);
        loop {
            match r.below(10) {
                0..=3 => {
                    return Change::Add(AceSpec {
                        allow: r.below(5) != 0,
                        user: r.pick(&self.owners),
                        rights: r.below(RIGHTS.len() as u64) as u8,
                    })
                }
                4..=5 if state.aces.len() > 1 => {
                    return Change::Remove(r.below(state.aces.len() as u64) as usize)
                }
                6 if !state.protected => return Change::Protect,
                7 if state.protected => return Change::Unprotect,
                8..=9 => {
                    let new = r.pick(&self.owners);
                    if self.core.user_json(new) != self.core.user_json(state.owner) {
                        return Change::Chown(new);
                    }
                }
                _ => {}
            }
        }
    }

    pub fn apply(state: &mut ObjState, change: Change) {
        match change {
            Change::Add(a) => state.aces.push(a),
            Change::Remove(i) => {
                state.aces.remove(i);
            }
            Change::Protect => state.protected = true,
            Change::Unprotect => state.protected = false,
            Change::Chown(u) => state.owner = u,
        }
    }

    /// The audit event that announces version `v` (`before` is the state it changes).
    pub fn event(
        &self,
        c: u16,
        n: u16,
        object: u64,
        v: u64,
        before: &ObjState,
        change: Change,
    ) -> Event {
        let mut r = self.rng(&[c as u64, n as u64, object, v, 1]);
        let seed = self.core.config().seed;
        let after_owner = match change {
            Change::Chown(u) => u,
            _ => before.owner,
        };
        let t = 1_735_689_600_000_000_000 + r.below(365 * 86_400 * 1_000_000_000);
        Event {
            id: object_id(&self.core, c, n, object),
            op: op_index("fs_write_metadata").expect("known op") as u8,
            status: "ok",
            user: r.pick(&self.owners),
            client: r.below(4096) as u32,
            ipv6: false,
            proto: 0,
            path: PathSpec {
                dir: key(&[seed, 0xAC3, c as u64, n as u64, object / 16]),
                leaf: key(&[seed, 0xAC4, c as u64, n as u64, object]),
                is_dir: false,
                suffix: None,
            },
            target: None,
            meta: Some(Meta {
                before_owner: before.owner,
                after_owner,
                ctime_before_ns: t,
                ctime_after_ns: t + 1 + r.below(1_000_000_000),
                mtime_ns: t - r.below(t / 1000),
            }),
            io: None,
            layout: r.below(2) as u8,
        }
    }

    /// A trustee as the API shows it.
    pub fn trustee(&self, user: u16) -> Value {
        let u = self.core.user_json(user);
        json!({"domain": "ACTIVE_DIRECTORY", "auth_id": u.auth_id, "uid": null, "gid": null,
               "sid": u.sid, "name": u.name})
    }

    pub fn rights(ace: &AceSpec) -> &'static [&'static str] {
        RIGHTS[ace.rights as usize]
    }

    /// The v2 ACL body of a state (with one inherited ACE, which never counts).
    pub fn acl_json(&self, s: &ObjState) -> Value {
        let mut control = vec!["PRESENT", "AUTO_INHERIT"];
        if s.protected {
            control.push("PROTECTED");
        }
        let mut aces: Vec<Value> = s
            .aces
            .iter()
            .map(|a| {
                json!({"type": if a.allow {"ALLOWED"} else {"DENIED"}, "flags": [],
                       "trustee": self.trustee(a.user), "rights": Self::rights(a)})
            })
            .collect();
        aces.push(json!({"type": "ALLOWED", "flags": ["INHERITED", "OBJECT_INHERIT"],
                         "trustee": {"domain": "WORLD", "auth_id": "8589934592", "sid": "S-1-1-0", "name": "Everyone"},
                         "rights": RIGHTS[0]}));
        json!({"control": control, "posix_special_permissions": [], "aces": aces})
    }

    pub fn owner(&self, user: u16) -> ExpOwner {
        let u = self.core.user_json(user);
        ExpOwner {
            sid: u.sid.clone(),
            auth_id: u.auth_id.clone(),
        }
    }
}

/// (cluster, node, object) -> (next version, state).
type Objects = HashMap<(u16, u16, u64), (u64, ObjState)>;

/// The objects' current states: written by the senders, read by the API.
pub struct Namespace {
    pub model: Model,
    objects: Mutex<Objects>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Namespace")
    }
}

impl Namespace {
    pub fn new(core: Arc<GenCore>) -> Namespace {
        Namespace {
            model: Model::new(core),
            objects: Mutex::new(HashMap::new()),
        }
    }

    /// The `m`-th metadata change of a node: apply it and return its event.
    pub fn next_event(&self, c: u16, n: u16, m: u64) -> Event {
        let object = m % OBJECTS_PER_NODE;
        let mut objects = self.objects.lock().expect("namespace lock");
        let (v, state) = objects
            .entry((c, n, object))
            .or_insert_with(|| (0, self.model.initial(c, n, object)));
        let change = self.model.change(c, n, object, *v, state);
        let ev = self.model.event(c, n, object, *v, state, change);
        Model::apply(state, change);
        *v += 1;
        ev
    }

    /// The current state of an object (its initial one before any change).
    pub fn state(&self, id: &Identity) -> Option<ObjState> {
        let object = object_of(id)?;
        if id.tag != self.model.core.tag() || object >= OBJECTS_PER_NODE {
            return None;
        }
        let objects = self.objects.lock().expect("namespace lock");
        Some(match objects.get(&(id.cluster, id.node, object)) {
            Some((_, s)) => s.clone(),
            None => self.model.initial(id.cluster, id.node, object),
        })
    }
}

/// What the API answers for a file id: the object's current ACL and type.
impl Files for Namespace {
    fn acl(&self, file_id: &str) -> Option<Value> {
        let state = self.state(&Identity::parse(file_id)?)?;
        Some(self.model.acl_json(&state))
    }

    fn is_dir(&self, file_id: &str) -> Option<bool> {
        let id = Identity::parse(file_id)?;
        self.state(&id)?;
        Some(object_of(&id).is_some_and(is_dir))
    }
}

/// How the API behaves.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub listen: std::net::SocketAddr,
    /// requests a bearer token may make before it is refused (401)
    pub token_uses: u64,
    /// delay before every answer
    pub delay: Duration,
}

/// Serve the namespace over HTTPS with `pki`'s server certificate until
/// [`QumuloApi::stop`].
pub async fn start(cfg: ApiConfig, ns: Arc<Namespace>, pki: &Pki) -> anyhow::Result<QumuloApi> {
    let mode = if cfg.delay.is_zero() {
        Mode::Up
    } else {
        Mode::Delay(cfg.delay)
    };
    let api = QumuloApi::start(
        testkit::qumulo::ApiConfig {
            listen: cfg.listen,
            username: API_USER.to_string(),
            password: API_PASSWORD.to_string(),
            cluster_name: "loadgen".to_string(),
            token_uses: cfg.token_uses,
            mode,
            // millions of requests in a long run
            keep_log: false,
        },
        ns,
        pki,
    )
    .await?;
    Ok(api)
}

/// What qbroker must deliver for one version of an object: operations (with
/// their `acl`) in order, given the state before it.
pub fn expected_ops(
    model: &Model,
    object: u64,
    change: Change,
    before: &ObjState,
) -> Vec<(String, Option<Value>)> {
    let t = if is_dir(object) { "directory" } else { "file" };
    let ace = |a: &AceSpec| {
        let tr = model.trustee(a.user);
        json!({"type": if a.allow {"ALLOWED"} else {"DENIED"},
               "trustee": {"domain": "ACTIVE_DIRECTORY", "auth_id": tr["auth_id"], "sid": tr["sid"], "name": tr["name"]},
               "rights": Model::rights(a), "flags": []})
    };
    match change {
        Change::Add(a) => vec![(
            format!("{t}.permissions_add"),
            Some(json!({"added": [ace(&a)]})),
        )],
        Change::Remove(i) => vec![(
            format!("{t}.permissions_remove"),
            Some(json!({"removed": [ace(&before.aces[i])]})),
        )],
        Change::Protect => vec![(
            format!("{t}.protection_add"),
            Some(json!({"protected": true})),
        )],
        Change::Unprotect => vec![(
            format!("{t}.protection_remove"),
            Some(json!({"protected": false})),
        )],
        Change::Chown(_) => vec![(format!("{t}.owner_change"), None)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::GenConfig;

    #[test]
    fn versions_are_deterministic_and_valid() {
        let core = Arc::new(GenCore::new(GenConfig::default()).unwrap());
        let a = Namespace::new(core.clone());
        let b = Model::new(core.clone());
        let mut replay = b.initial(0, 1, 3);
        for m in 0..OBJECTS_PER_NODE * 40 {
            let ev = a.next_event(0, 1, m);
            let object = m % OBJECTS_PER_NODE;
            if object != 3 {
                continue;
            }
            let v = m / OBJECTS_PER_NODE;
            let ch = b.change(0, 1, 3, v, &replay);
            assert_eq!(ev, b.event(0, 1, 3, v, &replay, ch));
            Model::apply(&mut replay, ch);
            assert!(!replay.aces.is_empty());
        }
        assert_eq!(a.state(&object_id(&core, 0, 1, 3)), Some(replay));
        assert_eq!(object_of(&object_id(&core, 0, 1, 3)), Some(3));
    }
}
