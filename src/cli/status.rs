//! `switchyard status`: the instance's listeners, services, groups and targets, the rollout
//! in progress, the state database's health, and — in a fleet — the instances, the leader
//! and the observed split of each instance and of the whole fleet.

use switchyard::split;

use super::show::{flag, str_of};

pub(super) fn print_status(s: &serde_json::Value) {
    println!("generation {}", s["generation"]);
    let pending = s["store"]["pending_writes"].as_u64().unwrap_or(0);
    if pending > 0 {
        println!(
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
        let tls = flag(&l["tls"], " (tls)");
        println!(
            "listener {} on {}{tls}",
            str_of(&l["name"]),
            str_of(&l["addr"])
        );
    }
    for svc in s["services"].as_array().into_iter().flatten() {
        println!(
            "service {}: {}",
            str_of(&svc["name"]),
            str_of(&svc["split_text"])
        );
        if let Some(obs) = svc["observed"].as_object() {
            let o: Vec<String> = obs
                .iter()
                .map(|(g, s)| format!("{g}={:.1}%", s.as_f64().unwrap_or(0.0) * 100.0))
                .collect();
            println!("  observed (last 5 s): {}", o.join(" "));
        }
        let r = &svc["rollout"];
        if r.is_object() {
            println!(
                "  rollout #{} {} -> {} ({}): {}, step {}/{}, candidate at {}{}",
                r["id"],
                str_of(&r["stable"]),
                str_of(&r["candidate"]),
                str_of(&r["strategy"]["name"]),
                str_of(&r["status"]),
                // The step being run, counted from 1 (all of them once done).
                (r["step"].as_u64().unwrap_or(0) + 1)
                    .min(r["steps"].as_array().map_or(0, |s| s.len() as u64)),
                r["steps"].as_array().map_or(0, Vec::len),
                split::format_percent(r["weight"].as_u64().unwrap_or(0) as u32),
                r["reason"]
                    .as_str()
                    .map(|s| format!(" — {s}"))
                    .unwrap_or_default()
            );
            if let Some(w) = r["waiting_for"].as_str() {
                println!("  waiting for {w}");
            }
        }
        for g in svc["groups"].as_array().into_iter().flatten() {
            println!(
                "  group {:<12} weight {:>7}  healthy {}/{}  requests {}",
                str_of(&g["name"]),
                str_of(&g["weight_text"]),
                g["healthy_targets"],
                g["targets"].as_array().map_or(0, Vec::len),
                g["counts"]["requests"],
            );
            for t in g["targets"].as_array().into_iter().flatten() {
                let ejected = flag(&t["ejected"], " ejected");
                println!(
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
        println!(
            "fleet: instance {me}{}, leader {leader}, state revision {}",
            flag(&f["leading"], " (leads)"),
            store["revision"]
        );
    } else {
        println!(
            "fleet: instance {me} DEGRADED — etcd unreachable ({}); serving the last state (revision {}), no rollout moves",
            store["last_error"].as_str().unwrap_or("no answer"),
            store["revision"]
        );
    }
    let now = switchyard::sys::unix_ms();
    for i in f["instances"].as_array().into_iter().flatten() {
        let name = str_of(&i["name"]);
        let ago = now - i["last_contact"].as_i64().unwrap_or(now);
        println!(
            "  instance {name:<16} {:<22} revision {:<8} last contact {:.1} s ago{}",
            str_of(&i["advertise"]),
            i["revision"],
            ago as f64 / 1000.0,
            if name == leader { "  leader" } else { "" }
        );
    }
    let shares = |v: &serde_json::Value| -> String {
        let o: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(g, s)| format!("{g}={:.1}%", s.as_f64().unwrap_or(0.0) * 100.0))
            .collect();
        o.join(" ")
    };
    for (svc, obs) in f["observed"].as_object().into_iter().flatten() {
        println!("  observed (last 5 s) {svc}, whole fleet: {}", shares(obs));
        for p in f["peers"].as_array().into_iter().flatten() {
            let stale = p["stale"]
                .as_str()
                .map(|e| format!("  (stale: {e})"))
                .unwrap_or_default();
            println!(
                "    on {:<16} {}{stale}",
                str_of(&p["name"]),
                shares(&p["observed"][svc.as_str()])
            );
        }
    }
}
