//! Moving state between stores with the real binary: `switchyard store export` from SQLite,
//! `store import` into etcd, and back into a new SQLite file, leaves the state identical;
//! ids stay taken in both stores; an import into a store with state, and an export of a
//! database an instance holds, are refused with a message that says why.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::bin::{cli, cli_ok};
use common::etcd::Etcd;
use common::{blue_green, bounded_test};
use switchyard::config::EtcdConfig;
use switchyard::rollout::{Rollout, Status, Strategy};
use switchyard::split::Split;
use switchyard::store::{
    Commit, Dump, EtcdStore, Event, EventQuery, SqliteStore, Store, TrafficRecord,
};

const PREFIX: &str = "/switchyard/moved";

fn split(blue: f64) -> Split {
    Split::from_percents([("blue", blue), ("green", 100.0 - blue)]).unwrap()
}

/// A config whose store is `store` (a TOML `[store]` table).
fn write_config(dir: &Path, name: &str, store: &str) -> PathBuf {
    let any: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let path = dir.join(name);
    std::fs::write(&path, blue_green(any, any).top(store).build()).unwrap();
    path
}

/// Traffic of two services, two finished rollouts and an active one, and their events.
fn fill(store: &dyn Store) {
    let mut ids = Vec::new();
    for (service, status) in [
        ("shop", Status::Completed),
        ("cart", Status::Aborted),
        ("shop", Status::Progressing),
    ] {
        let id = store
            .create_rollout(&move |id| Commit {
                rollout: Some(Rollout {
                    id,
                    status,
                    ..Rollout::new(
                        service,
                        "blue",
                        "green",
                        Strategy::all_at_once(),
                        "alice".into(),
                        1_000,
                    )
                }),
                events: vec![event(1_000 + id as i64, service, "rollout.start", Some(id))],
                ..Commit::default()
            })
            .unwrap();
        ids.push(id);
    }
    for (service, blue) in [("shop", 90.0), ("cart", 100.0)] {
        store
            .commit(&Commit {
                traffic: vec![(
                    service.into(),
                    TrafficRecord {
                        current: split(blue),
                        previous: Some(split(100.0)),
                        from_file: split(100.0),
                        stable: Some("blue".into()),
                        retired: vec!["old".into()],
                        step_from: None,
                    },
                )],
                events: vec![event(5_000, service, "weight", ids.last().copied())],
                ..Commit::default()
            })
            .unwrap();
    }
}

fn event(at: i64, service: &str, kind: &str, rollout: Option<u64>) -> Event {
    Event {
        id: 0,
        at,
        service: service.into(),
        rollout,
        actor: "alice".into(),
        on_behalf_of: Some("cli:alice".into()),
        kind: kind.into(),
        from: Some(split(100.0)),
        to: Some(split(90.0)),
        reason: format!("{kind} of {service}"),
    }
}

fn read_dump(path: &Path) -> Dump {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// After an import, the next rollout and event take ids above every imported one.
fn next_ids_follow(store: &dyn Store, d: &Dump) {
    let max_rollout = d.rollouts.iter().map(|r| r.id).max().unwrap();
    let max_event = d.events.iter().map(|e| e.id).max().unwrap();
    let id = store
        .create_rollout(&|id| Commit {
            rollout: Some(Rollout {
                id,
                ..Rollout::new(
                    "cart",
                    "blue",
                    "green",
                    Strategy::all_at_once(),
                    "bob".into(),
                    9_000,
                )
            }),
            events: vec![event(9_000, "cart", "rollout.start", Some(id))],
            ..Commit::default()
        })
        .unwrap();
    assert_eq!(id, max_rollout + 1);
    let newest = store.events(&EventQuery::default()).unwrap();
    assert!(
        newest[0].id > max_event,
        "{} after {max_event}",
        newest[0].id
    );
    assert_eq!(newest.len(), d.events.len() + 1);
}

bounded_test! {
    /// SQLite → etcd → SQLite through `store export` / `store import` gives back the same
    /// traffic, rollouts and events, ids included; each store goes on with fresh ids.
    async fn sqlite_to_etcd_and_back_is_identical() {
        let etcd = Etcd::start().await;
        let dir = tempfile::tempdir().unwrap();
        let first_db = dir.path().join("first.db");
        let second_db = dir.path().join("second.db");
        let sqlite = |db: &Path| format!("[store]\npath = \"{}\"", db.display());
        let first = write_config(dir.path(), "first.toml", &sqlite(&first_db));
        let second = write_config(dir.path(), "second.toml", &sqlite(&second_db));
        let on_etcd = format!(
            "[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"{PREFIX}\"\nlease_ttl = \"2s\"",
            etcd.endpoint()
        );
        let fleet = write_config(dir.path(), "fleet.toml", &on_etcd);

        let held = SqliteStore::open(&first_db).unwrap();
        fill(&held);
        // An instance holds the database: the export says to stop it.
        let (code, _, err) = cli(&first, &["store", "export"]);
        assert_ne!(code, 0);
        assert!(err.contains("stop the instance"), "{err}");
        drop(held);

        let (one, two, three) = (dir.path().join("1.json"), dir.path().join("2.json"), dir.path().join("3.json"));
        cli_ok(&first, &["store", "export", "-o", one.to_str().unwrap()]);
        cli_ok(&fleet, &["store", "import", one.to_str().unwrap()]);
        cli_ok(&fleet, &["store", "export", "-o", two.to_str().unwrap()]);
        cli_ok(&second, &["store", "import", two.to_str().unwrap()]);
        let stdout = cli_ok(&second, &["store", "export"]);
        std::fs::write(&three, stdout).unwrap();

        let exported = read_dump(&one);
        assert_eq!(exported.traffic.len(), 2);
        assert_eq!(exported.rollouts.len(), 3);
        assert_eq!(exported.events.len(), 5);
        assert_eq!(read_dump(&two), exported, "SQLite → etcd changed the state");
        assert_eq!(read_dump(&three), exported, "etcd → SQLite changed the state");

        // A store that holds state refuses an import.
        let (code, _, err) = cli(&fleet, &["store", "import", one.to_str().unwrap()]);
        assert_ne!(code, 0);
        assert!(err.contains("refused"), "{err}");

        let back = SqliteStore::open(&second_db).unwrap();
        next_ids_follow(&back, &exported);
        let cfg = EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            prefix: PREFIX.into(),
            username: None,
            password: None,
            lease_ttl: Duration::from_secs(2),
        };
        let fleet_store = EtcdStore::connect(&cfg, "lb-1", Duration::from_secs(2)).await.unwrap();
        tokio::task::spawn_blocking(move || next_ids_follow(&*fleet_store, &exported))
            .await
            .unwrap();
    }
}
