//! `switchyard analysis run`: every check measured once, now, with an exit code per verdict
//! so that a script can tell them apart.

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
}

pub(super) async fn run(api: &Api, command: AnalysisCommand) -> anyhow::Result<ExitCode> {
    let AnalysisCommand::Run {
        service,
        analysis,
        candidate,
        json,
    } = command;
    let body = json!({ "analysis": analysis, "candidate": candidate });
    let res = match api
        .post(&format!("/api/v1/services/{service}/analysis/run"), body)
        .await
    {
        Ok(res) => res,
        Err(e) if e.unreachable => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(UNREACHABLE));
        }
        Err(e) => return Err(e.into()),
    };
    let results = res["results"].as_array().cloned().unwrap_or_default();
    let analyses = res["analyses"].as_array().cloned().unwrap_or_default();
    let worst = analyses
        .iter()
        .map(|a| match str_of(&a["verdict"]) {
            "pass" => PASS,
            "fail" => FAIL,
            _ => INCONCLUSIVE,
        })
        .max_by_key(|v| match *v {
            FAIL => 2,
            INCONCLUSIVE => 1,
            _ => 0,
        })
        .unwrap_or(PASS);
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
