//! A traffic split: weights by group, in basis points, that always sum to 100 %.
//!
//! There is one way from percentages to a split, [`Split::from_percents`], so that the file,
//! the admin API (`PUT /weights`) and the CLI accept exactly the same weights and refuse the
//! others with the same words. The map inside is private: a `Split` that exists is valid,
//! and the data plane never checks one again. Knowing which groups exist is the caller's
//! business (a split does not know its service), so "no group named x" is said there.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Basis points: 10 000 is all traffic, so a canary can start at 0.01 %.
pub const FULL_WEIGHT: u32 = 10_000;

/// What is wrong with one percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightProblem {
    /// NaN: TOML can write `nan`, and so can a command line.
    NotANumber,
    /// Below 0, above 100, or infinite.
    OutOfRange,
    /// Finer than one basis point: it would be rounded, silently, to another weight.
    TooFine,
}

impl fmt::Display for WeightProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightProblem::NotANumber => "is not a number",
            WeightProblem::OutOfRange => "is out of range: use 0 to 100 (percent)",
            WeightProblem::TooFine => "is finer than 0.01 (one basis point)",
        })
    }
}

/// One percentage that is not a weight (a strategy step's, for instance).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("weight {value} {problem}")]
pub struct WeightError {
    pub value: f64,
    pub problem: WeightProblem,
}

/// Why percentages are not a split. The message names the group and the value, so that a
/// person reading it from the file's diagnostics, an API error or the CLI knows what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SplitError {
    #[error("weight {value} for {group} {problem}")]
    Weight {
        group: String,
        value: f64,
        problem: WeightProblem,
    },
    #[error("weights sum to {}, not 100", percent_number(*.basis_points))]
    Sum { basis_points: u64 },
}

impl SplitError {
    /// The group whose weight is wrong; `None` when the weights are wrong together (the sum).
    pub fn group(&self) -> Option<&str> {
        match self {
            SplitError::Weight { group, .. } => Some(group),
            SplitError::Sum { .. } => None,
        }
    }
}

/// A percentage as basis points: the one rule for a weight (0 to 100, 0.01 resolution).
pub fn basis_points(percent: f64) -> Result<u32, WeightError> {
    let err = |problem| WeightError {
        value: percent,
        problem,
    };
    if percent.is_nan() {
        return Err(err(WeightProblem::NotANumber));
    }
    if !(0.0..=100.0).contains(&percent) {
        return Err(err(WeightProblem::OutOfRange));
    }
    let bp = (percent * 100.0).round();
    // 1e-6 of a basis point absorbs binary noise (0.07 × 100 = 7.000000000000001).
    if (bp - percent * 100.0).abs() > 1e-6 {
        return Err(err(WeightProblem::TooFine));
    }
    Ok(bp as u32)
}

/// Weights in basis points by group name; always sums to [`FULL_WEIGHT`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, u32>", into = "BTreeMap<String, u32>")]
pub struct Split(BTreeMap<String, u32>);

impl Split {
    /// The split that percentages by group ask for. The first wrong weight (by group name)
    /// is reported, then a wrong sum.
    pub fn from_percents<K: Into<String>>(
        weights: impl IntoIterator<Item = (K, f64)>,
    ) -> Result<Split, SplitError> {
        let mut bp = BTreeMap::new();
        let mut first = None;
        for (group, percent) in weights {
            let group = group.into();
            match basis_points(percent) {
                Ok(b) => {
                    bp.insert(group, b);
                }
                Err(e) => {
                    first.get_or_insert(SplitError::Weight {
                        group,
                        value: e.value,
                        problem: e.problem,
                    });
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None => Split::from_basis_points(bp),
        }
    }

    /// A split from basis points, e.g. a rollout's stable/candidate weights or the weights a
    /// snapshot holds; they must sum to [`FULL_WEIGHT`].
    pub fn from_basis_points<K: Into<String>>(
        weights: impl IntoIterator<Item = (K, u32)>,
    ) -> Result<Split, SplitError> {
        let map: BTreeMap<String, u32> = weights.into_iter().map(|(g, w)| (g.into(), w)).collect();
        let sum: u64 = map.values().map(|w| u64::from(*w)).sum();
        if sum != u64::from(FULL_WEIGHT) {
            return Err(SplitError::Sum { basis_points: sum });
        }
        Ok(Split(map))
    }

    /// All traffic to one group: a blue-green "active" group.
    pub fn all_to(group: &str) -> Split {
        Split(BTreeMap::from([(group.to_string(), FULL_WEIGHT)]))
    }

    pub fn weight(&self, group: &str) -> u32 {
        self.0.get(group).copied().unwrap_or(0)
    }

    /// The group that takes all traffic, if one does.
    pub fn active(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, w)| **w == FULL_WEIGHT)
            .map(|(g, _)| g.as_str())
    }

    /// Every group the split names, including those at 0.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// (group, basis points), by group name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.0.iter().map(|(g, w)| (g.as_str(), *w))
    }

    pub fn basis_points(&self) -> &BTreeMap<String, u32> {
        &self.0
    }
}

impl TryFrom<BTreeMap<String, u32>> for Split {
    type Error = SplitError;

    /// A stored split is checked like any other: a record that does not sum to 100 % is not
    /// loaded as if it did.
    fn try_from(map: BTreeMap<String, u32>) -> Result<Split, SplitError> {
        Split::from_basis_points(map)
    }
}

impl From<Split> for BTreeMap<String, u32> {
    fn from(s: Split) -> Self {
        s.0
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (g, w) in self.0.iter().filter(|(_, w)| **w > 0) {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{g}={}", format_percent(*w))?;
        }
        Ok(())
    }
}

/// Basis points as a percentage with no needless decimals: 1000 → "10%", 5 → "0.05%".
pub fn format_percent(bp: u32) -> String {
    format!("{}%", percent_number(u64::from(bp)))
}

/// Basis points as a plain number of percent: 11000 → "110", 10001 → "100.01".
fn percent_number(bp: u64) -> String {
    if bp.is_multiple_of(100) {
        format!("{}", bp / 100)
    } else {
        let s = format!("{}.{:02}", bp / 100, bp % 100);
        s.trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(w: &[(&str, f64)]) -> String {
        Split::from_percents(w.iter().map(|(g, p)| (*g, *p)))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn percents_become_basis_points_at_one_hundredth_of_a_percent() {
        let s = Split::from_percents([("blue", 99.93), ("green", 0.07)]).unwrap();
        assert_eq!((s.weight("blue"), s.weight("green")), (9993, 7));
        assert_eq!(s.to_string(), "blue=99.93% green=0.07%");
        assert_eq!(
            Split::from_percents([("blue", 100.0)]).unwrap().active(),
            Some("blue")
        );
    }

    #[test]
    fn wrong_weights_are_named_with_the_real_problem() {
        assert_eq!(
            msg(&[("blue", 99.995), ("green", 0.005)]),
            "weight 99.995 for blue is finer than 0.01 (one basis point)"
        );
        assert_eq!(
            msg(&[("blue", 90.0), ("green", 20.0)]),
            "weights sum to 110, not 100"
        );
        assert_eq!(
            msg(&[("blue", 90.0), ("green", 10.01)]),
            "weights sum to 100.01, not 100"
        );
        assert_eq!(
            msg(&[("blue", 110.0), ("green", -10.0)]),
            "weight 110 for blue is out of range: use 0 to 100 (percent)"
        );
        assert_eq!(
            msg(&[("green", f64::NAN)]),
            "weight NaN for green is not a number"
        );
        assert_eq!(
            msg(&[("green", f64::INFINITY)]),
            "weight inf for green is out of range: use 0 to 100 (percent)"
        );
        assert_eq!(msg(&[]), "weights sum to 0, not 100");
        let e = Split::from_percents([("green", 0.005)]).unwrap_err();
        assert_eq!(e.group(), Some("green"));
    }

    #[test]
    fn a_stored_split_that_does_not_sum_to_all_traffic_is_refused() {
        let ok: Split = serde_json::from_str(r#"{"blue":9000,"green":1000}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"blue":9000,"green":1000}"#
        );
        let bad = serde_json::from_str::<Split>(r#"{"blue":9000}"#).unwrap_err();
        assert!(
            bad.to_string().contains("weights sum to 90, not 100"),
            "{bad}"
        );
    }

    #[test]
    fn percentages_print_without_needless_decimals() {
        assert_eq!(format_percent(1000), "10%");
        assert_eq!(format_percent(5), "0.05%");
        assert_eq!(format_percent(50), "0.5%");
        assert_eq!(format_percent(10001), "100.01%");
    }
}
