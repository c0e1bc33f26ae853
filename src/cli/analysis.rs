//! `switchyard analysis run`: every check measured once, now; `switchyard analysis backtest`:
//! an analysis replayed over a past rollout's recorded seconds. Both with an exit code per
//! verdict so that a script can tell them apart.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::show::str_of;
use super::target::Api;
use crate::output::{self, outln};

/// Exit codes of `analysis run` (2 is clap's for a wrong command line).
pub(super) const PASS: u8 = 0;
pub(super) const FAIL: u8 = 3;
pub(super) const INCONCLUSIVE: u8 = 4;
pub(super) const UNREACHABLE: u8 = 5;

#[derive(Subcommand)]
pub(super) enum AnalysisCommand {
    /// Measure every check once against live traffic and judge each analysis as a step
    /// would (score, critical checks, evidence). Exit codes: 0 every analysis passed, 3 one
    /// failed, 4 one was inconclusive (none failed), 5 the admin API could not be reached,
    /// 1 any other error (the API refused), 2 a wrong command line.
    Run {
        /// The service whose analyses run.
        service: String,
        /// One analysis (default: those the service's strategy names).
        #[arg(long)]
        analysis: Option<String>,
        /// The group to judge (default: the candidate of the rollout in progress).
        #[arg(long)]
        candidate: Option<String>,
        /// Print the API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay an analysis over a past rollout's recorded seconds and print what it would
    /// have decided, and when, beside what the rollout did. The analysis is taken from the
    /// running configuration: change its thresholds, apply, and backtest again. Exit codes:
    /// 0 every replay passed, 3 one failed, 4 one was inconclusive or undecided (none
    /// failed), 5 the admin API could not be reached, 1 any other error.
    Backtest {
        /// The service the rollout released.
        service: String,
        /// The rollout's id (`switchyard rollout history`).
        #[arg(long)]
        rollout: u64,
        /// One analysis (default: those the rollout's strategy ran).
        #[arg(long)]
        analysis: Option<String>,
        /// The attempt (default: the latest recorded).
        #[arg(long)]
        attempt: Option<u32>,
        /// Print the API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The worst of several verdicts (`fail` over `inconclusive` over `pass`) as an exit code.
fn worst<'a>(verdicts: impl Iterator<Item = &'a str>) -> u8 {
    let code = |v: &str| match v {
        "pass" => PASS,
        "fail" => FAIL,
        _ => INCONCLUSIVE,
    };
    let rank = |c: &u8| match *c {
        FAIL => 2,
        INCONCLUSIVE => 1,
        _ => 0,
    };
    verdicts.map(code).max_by_key(rank).unwrap_or(PASS)
}

/// A POST whose unreachable API is exit code 5.
async fn post(
    api: &Api,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<Result<serde_json::Value, ExitCode>> {
    match api.post(path, body).await {
        Ok(res) => Ok(Ok(res)),
        Err(e) if e.unreachable => {
            eprintln!("error: {e}");
            Ok(Err(ExitCode::from(UNREACHABLE)))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn run(api: &Api, command: AnalysisCommand) -> anyhow::Result<ExitCode> {
    let (service, analysis, candidate, json) = match command {
        AnalysisCommand::Run {
            service,
            analysis,
            candidate,
            json,
        } => (service, analysis, candidate, json),
        AnalysisCommand::Backtest {
            service,
            rollout,
            analysis,
            attempt,
            json,
        } => {
            let body = json!({ "rollout": rollout, "analysis": analysis, "attempt": attempt });
            let path = format!("/api/v1/services/{service}/analysis/backtest");
            return match post(api, &path, body).await? {
                Ok(res) => Ok(show_backtest(&res, json)),
                Err(code) => Ok(code),
            };
        }
    };
    let body = json!({ "analysis": analysis, "candidate": candidate });
    let res = match post(
        api,
        &format!("/api/v1/services/{service}/analysis/run"),
        body,
    )
    .await?
    {
        Ok(res) => res,
        Err(code) => return Ok(code),
    };
    let results = res["results"].as_array().cloned().unwrap_or_default();
    let analyses = res["analyses"].as_array().cloned().unwrap_or_default();
    // By each analysis's verdict (its score, critical checks, evidence), not by the worst
    // single measurement.
    let worst = worst(analyses.iter().map(|a| str_of(&a["verdict"])));
    if json {
        output::json(&res);
        return Ok(ExitCode::from(worst));
    }
    outln!(
        "{service}: candidate {} against stable {}",
        str_of(&res["candidate"]),
        str_of(&res["stable"])
    );
    for r in &results {
        let m = &r["measurement"];
        outln!(
            "  {:<14} {:<16} {:<13} {}",
            str_of(&r["analysis"]),
            str_of(&m["check"]),
            str_of(&m["outcome"]),
            str_of(&m["detail"])
        );
    }
    for a in &analyses {
        outln!(
            "{}: {} (score {}) — {}",
            str_of(&a["analysis"]),
            str_of(&a["verdict"]),
            a["score"],
            str_of(&a["detail"])
        );
    }
    Ok(ExitCode::from(worst))
}

/// A backtest's answer: the recording, the rollout's real outcome, then per replay its
/// decision and every measurement it took; the exit code of the worst decision.
fn show_backtest(res: &serde_json::Value, json: bool) -> ExitCode {
    let replays = res["replays"].as_array().cloned().unwrap_or_default();
    let code = ExitCode::from(worst(
        replays
            .iter()
            .map(|r| r["verdict"].as_str().unwrap_or("undecided")),
    ));
    if json {
        output::json(res);
        return code;
    }
    let began = res["began_ms"].as_i64().unwrap_or(0);
    let at = |ms: &serde_json::Value| match ms.as_i64() {
        Some(ms) => format!("at {} ({})", offset(ms - began), clock(ms)),
        None => "undecided".into(),
    };
    outln!(
        "{}: rollout #{} attempt {}, {} -> {}, recorded from {} for {} ({} seconds with traffic{})",
        str_of(&res["service"]),
        res["rollout"],
        res["attempt"],
        str_of(&res["stable"]),
        str_of(&res["candidate"]),
        clock(began),
        offset(res["ended_ms"].as_i64().unwrap_or(began) - began).trim_start_matches('+'),
        res["seconds"],
        match res["missing_seconds"].as_u64().unwrap_or(0) {
            0 => String::new(),
            n => format!(", {n} missing: the store could not take them"),
        }
    );
    let o = &res["outcome"];
    let ended = match o["at_ms"].as_i64() {
        Some(_) => format!(" {}", at(&o["at_ms"])),
        None => String::new(),
    };
    outln!(
        "actual: {}{ended}: {}",
        str_of(&o["status"]),
        str_of(&o["reason"])
    );
    for r in &replays {
        let from = match r["step"].as_u64() {
            Some(n) => format!("step {n}"),
            None => "the attempt".into(),
        };
        outln!("");
        outln!(
            "{} ({from}, from {}): {}: {} — {}",
            str_of(&r["analysis"]),
            offset(r["start_ms"].as_i64().unwrap_or(began) - began),
            at(&r["decided_at_ms"]),
            r["verdict"].as_str().unwrap_or("no decision"),
            str_of(&r["detail"])
        );
        for c in r["checks"].as_array().into_iter().flatten() {
            if c["replayable"] == false {
                outln!("  {}: not replayable", str_of(&c["check"]));
                continue;
            }
            for m in c["measurements"].as_array().into_iter().flatten() {
                outln!(
                    "  {:>9} ({})  {:<14} {:<12} {}",
                    offset(m["offset_ms"].as_i64().unwrap_or(0)),
                    clock(m["at_ms"].as_i64().unwrap_or(0)),
                    str_of(&m["check"]),
                    str_of(&m["outcome"]),
                    str_of(&m["detail"])
                );
            }
        }
    }
    code
}

/// A time since the attempt began: `+2m10s`, `+0.5s`.
fn offset(ms: i64) -> String {
    let (sign, ms) = if ms < 0 { ("-", -ms) } else { ("+", ms) };
    let (m, s) = (ms / 60_000, (ms % 60_000) as f64 / 1000.0);
    match m {
        0 => format!("{sign}{s}s"),
        m => format!("{sign}{m}m{s}s"),
    }
}

/// The UTC time of day of unix ms: `10:04:31`.
fn clock(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let text = humantime::format_rfc3339_seconds(t).to_string();
    text.get(11..19).unwrap_or(&text).to_string()
}
