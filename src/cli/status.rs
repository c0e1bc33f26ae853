//! `switchyard status`: the instance's listeners, services, groups and targets, the rollout
//! in progress, the state database's health, and — in a fleet — the instances, the leader
//! and the observed split of each instance and of the whole fleet.

use switchyard::split;

use super::show::{flag, new_errors_lines, observed_text, step_of, str_of};
use super::target::Api;
use crate::output::{self, outln};

/// `status [--json]`: the instance's status with each service's latest rollout.
pub(super) async fn run(api: &Api, json: bool) -> anyhow::Result<()> {
    let mut res = api.get("/api/v1/status").await?;
    // Each service's latest rollout, if it has one.
    if let Some(services) = res["services"].as_array_mut() {
        for svc in services {
            let name = str_of(&svc["name"]).to_string();
            svc["rollout"] = api
                .get(&format!("/api/v1/services/{name}/rollout"))
                .await
                .unwrap_or(serde_json::Value::Null);
        }
    }
    if json {
        output::json(&res);
    } else {
        print_status(&res);
    }
    Ok(())
}

fn print_status(s: &serde_json::Value) {
    outln!("generation {}", s["generation"]);
    let pending = s["store"]["pending_writes"].as_u64().unwrap_or(0);
    if pending > 0 {
        outln!(
            "STATE DATABASE NOT WRITABLE: {pending} write(s) applied to traffic but not recorded ({}); last error: {}",
            s["store"]["pending_services"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            s["store"]["last_error"].as_str().unwrap_or("?")
        );
    }
    print_fleet(&s["fleet"]);
    for l in s["listeners"].as_array().into_iter().flatten() {
        let tls = match l["client_certificates"].as_str() {
            Some(mode) => format!(" (tls, client certificates {mode})"),
            None => flag(&l["tls"], " (tls)").to_string(),
        };
        outln!(
            "listener {} on {}{tls}",
            str_of(&l["name"]),
            str_of(&l["addr"])
        );
        for c in l["certificates"].as_array().into_iter().flatten() {
            let days = c["not_after"]
                .as_i64()
                .map(|t| (t - switchyard::sys::unix_ms() / 1000) / 86_400);
            match days {
                Some(d) if c["expires_soon"] == true && d < 0 => {
                    outln!(
                        "  certificate {} EXPIRED {} days ago",
                        str_of(&c["cert"]),
                        -d
                    );
                }
                Some(d) if c["expires_soon"] == true => {
                    outln!("  certificate {} expires in {d} days", str_of(&c["cert"]));
                }
                _ => {}
            }
            // A stapled response within a day of going stale: clients that insist on one
            // would refuse the handshake after it.
            if let Some(t) = c["ocsp_next_update"].as_i64() {
                let left = t - switchyard::sys::unix_ms() / 1000;
                if left <= 0 {
                    outln!(
                        "  OCSP response of {} is STALE, not stapled: fetch a fresh one and reload",
                        str_of(&c["cert"])
                    );
                } else if left < 86_400 {
                    outln!(
                        "  OCSP response of {} goes stale in {} h: fetch a fresh one and reload",
                        str_of(&c["cert"]),
                        left / 3600
                    );
                }
            }
        }
    }
    for svc in s["services"].as_array().into_iter().flatten() {
        outln!(
            "service {}: {}",
            str_of(&svc["name"]),
            str_of(&svc["split_text"])
        );
        if svc["observed"].is_object() {
            outln!("  observed (last 5 s): {}", observed_text(&svc["observed"]));
        }
        let r = &svc["rollout"];
        if r.is_object() {
            outln!(
                "  rollout #{} {} -> {} ({}): {}, {}, candidate at {}{}",
                r["id"],
                str_of(&r["stable"]),
                str_of(&r["candidate"]),
                str_of(&r["strategy"]["name"]),
                str_of(&r["status"]),
                step_of(r),
                split::format_percent(r["weight"].as_u64().unwrap_or(0) as u32),
                r["reason"]
                    .as_str()
                    .map(|s| format!(" — {s}"))
                    .unwrap_or_default()
            );
            if let Some(w) = r["waiting_for"].as_str() {
                outln!("  waiting for {w}");
            }
            for line in new_errors_lines(r, "  ") {
                outln!("{line}");
            }
        }
        let m = &svc["mirror"];
        if m.is_object() {
            let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
            let o = &m["outcomes"];
            let rate = m["mismatch_rate"]
                .as_f64()
                .map_or("no copies compared in the last minute".into(), |r| {
                    format!("{r:.2}% differed in the last minute")
                });
            outln!(
                "  mirror: {} of requests copied to {}: {} compared ({rate}), {} dropped, {} failed, {} waiting",
                str_of(&m["share_text"]),
                str_of(&m["group"]),
                n(&o["compared"]),
                n(&o["dropped"]),
                n(&o["copy_failed"]),
                n(&m["waiting"]),
            );
        }
        for g in svc["groups"].as_array().into_iter().flatten() {
            outln!(
                "  group {:<12} weight {:>7}  healthy {}/{}  requests {}",
                str_of(&g["name"]),
                str_of(&g["weight_text"]),
                g["healthy_targets"],
                g["targets"].as_array().map_or(0, Vec::len),
                g["counts"]["requests"],
            );
            if let Some(tls) = g["tls"].as_str() {
                outln!("    {tls}");
            }
            let tunnels = g["tunnels"].as_u64().unwrap_or(0);
            if let Some(until) = g["tunnels_draining_until"].as_i64() {
                let left = (until - switchyard::sys::unix_ms()).max(0) as u64;
                outln!(
                    "    {tunnels} tunnels draining: cut in {} unless traffic returns",
                    humantime::format_duration(std::time::Duration::from_secs(left.div_ceil(1000)))
                );
            } else if tunnels > 0 {
                outln!("    {tunnels} tunnels open");
            }
            for t in g["targets"].as_array().into_iter().flatten() {
                let ejected = flag(&t["ejected"], " ejected");
                outln!(
                    "    {:<24} {}{ejected}  in flight {}",
                    str_of(&t["addr"]),
                    str_of(&t["health"]),
                    t["in_flight"]
                );
            }
        }
    }
}

/// The fleet, when the state is shared in etcd: this instance, who leads, every instance
/// with the state revision it has and when it was last heard of.
fn print_fleet(f: &serde_json::Value) {
    if !f.is_object() {
        return;
    }
    let me = str_of(&f["instance"]);
    let leader = f["leader"].as_str().unwrap_or("none");
    let store = &f["store"];
    if store["connected"] == true {
        outln!(
            "fleet: instance {me}{}, leader {leader}, state revision {}",
            flag(&f["leading"], " (leads)"),
            store["revision"]
        );
    } else {
        outln!(
            "fleet: instance {me} DEGRADED — etcd unreachable ({}); serving the last state (revision {}), no rollout moves",
            store["last_error"].as_str().unwrap_or("no answer"),
            store["revision"]
        );
    }
    let now = switchyard::sys::unix_ms();
    for i in f["instances"].as_array().into_iter().flatten() {
        let name = str_of(&i["name"]);
        let ago = now - i["last_contact"].as_i64().unwrap_or(now);
        outln!(
            "  instance {name:<16} {:<22} revision {:<8} last contact {:.1} s ago{}",
            str_of(&i["advertise"]),
            i["revision"],
            ago as f64 / 1000.0,
            if name == leader { "  leader" } else { "" }
        );
    }
    for (svc, obs) in f["observed"].as_object().into_iter().flatten() {
        outln!(
            "  observed (last 5 s) {svc}, whole fleet: {}",
            observed_text(obs)
        );
        for p in f["peers"].as_array().into_iter().flatten() {
            let stale = p["stale"]
                .as_str()
                .map(|e| format!("  (stale: {e})"))
                .unwrap_or_default();
            outln!(
                "    on {:<16} {}{stale}",
                str_of(&p["name"]),
                observed_text(&p["observed"][svc.as_str()])
            );
        }
    }
}
