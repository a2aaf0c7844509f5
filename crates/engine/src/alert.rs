//! Alert rules' pure core: one rule over one live metric, evaluated in event time, sample by
//! sample. A rule fires when its condition has held for `for` (a threshold crossed, or the
//! value strayed from its baseline), inside its daily window of site time; it resolves when
//! the value is back past the resolve threshold (hysteresis, so a value hovering at the
//! threshold does not flap) or the window closes; and it fires again no sooner than
//! `min_interval` after it last fired. No clock and no I/O: the caller hands each sample its
//! event time and its site-local minute of the day, and persists [`AlertState`] (it
//! serializes), so a restart or a backtest evaluates exactly as live.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A rule's file (`alerts/NAME.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Its name (in notifications and the transition's record).
    pub name: String,
    /// The metric it watches (a name the dashboard or the pipeline's health provides).
    pub metric: String,
    /// When the value is wrong.
    pub condition: Condition,
    /// How long the condition must hold before the rule fires (event time).
    #[serde(default, with = "humantime_serde_opt")]
    pub r#for: Option<Duration>,
    /// The least time between two firings (event time).
    #[serde(default, with = "humantime_serde_opt")]
    pub min_interval: Option<Duration>,
    /// The daily window of site time the rule is active in, `["09:00", "18:00"]` (the end
    /// excluded; an end before the start spans midnight). Outside it the rule is resolved.
    #[serde(default)]
    pub between: Option<[String; 2]>,
    /// For a per-minute metric ([`COUNTERS`]): the value is its sum over this many whole
    /// minutes up to the sample (`"30m"`) [default: one minute].
    #[serde(default, with = "humantime_serde_opt")]
    pub over: Option<Duration>,
}

/// The metrics counted per minute of event time, summed over a rule's `over`.
pub const COUNTERS: &[(&str, &str)] = &[
    ("page_views", "page views"),
    ("add_to_carts", "add-to-cart events"),
    ("checkouts", "begin-checkout events"),
    ("purchases", "purchases"),
    ("revenue", "revenue, all currencies together, in units"),
];

/// The metrics read from the dashboard as they are at the sample.
pub const GAUGES: &[(&str, &str)] = &[
    (
        "active_visitors_5m",
        "distinct visitors in the last 5 minutes",
    ),
    (
        "active_visitors_30m",
        "distinct visitors in the last 30 minutes",
    ),
    ("active_sessions", "sessions open"),
    ("offers_1h", "offers in the last hour"),
    ("searches_1h", "searches in the last hour"),
    (
        "bounce_rate_1h",
        "single-page sessions among those ended in the last hour (0 to 1)",
    ),
];

/// The most a rule's `over` may be.
pub const MAX_OVER: Duration = Duration::from_secs(24 * 3600);

/// What makes a value wrong.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Condition {
    /// Below `value`; resolved at or above `resolve` (default: `value`).
    Below {
        /// The threshold.
        value: f64,
        /// The resolve threshold (at least `value`).
        resolve: Option<f64>,
    },
    /// Above `value`; resolved at or below `resolve` (default: `value`).
    Above {
        /// The threshold.
        value: f64,
        /// The resolve threshold (at most `value`).
        resolve: Option<f64>,
    },
    /// More than `deviations` standard deviations from an exponentially weighted mean of the
    /// samples before (weight `alpha` for the newest); resolved within `resolve` deviations
    /// (default: `deviations`). Needs `warmup` samples before it judges.
    Deviates {
        /// How many standard deviations away is wrong.
        deviations: f64,
        /// Within how many it is right again.
        resolve: Option<f64>,
        /// The newest sample's weight in the mean, in (0, 1].
        alpha: f64,
        /// Samples before the baseline is trusted.
        #[serde(default = "default_warmup")]
        warmup: u32,
    },
    /// Below `ratio` times the mean of the same minute of the day over the last `days` days
    /// (resolved at or above `resolve` times it; default: `ratio`). Judges once one earlier
    /// day has that minute.
    BelowUsual {
        /// The fraction of the usual value below which it is wrong.
        ratio: f64,
        /// The fraction at or above which it is right again.
        resolve: Option<f64>,
        /// How many earlier days make the usual value.
        days: u32,
    },
}

fn default_warmup() -> u32 {
    10
}

/// `Option<Duration>` as a humantime string (`"15m"`).
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A rule that cannot be evaluated as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("alert {rule}: {problem}")]
pub struct RuleError {
    /// The rule.
    pub rule: String,
    /// What is wrong.
    pub problem: String,
}

/// A rule checked: its window in minutes of the day.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedRule {
    /// The rule.
    pub rule: AlertRule,
    window: Option<(u16, u16)>,
}

impl AlertRule {
    /// Parses a rule file.
    pub fn parse(text: &str) -> Result<CheckedRule, RuleError> {
        let rule: AlertRule = toml::from_str(text).map_err(|e| RuleError {
            rule: "?".to_owned(),
            problem: e.message().to_owned(),
        })?;
        rule.check()
    }

    /// Checks what the types cannot say.
    pub fn check(self) -> Result<CheckedRule, RuleError> {
        let problem = |p: String| RuleError {
            rule: self.name.clone(),
            problem: p,
        };
        match &self.condition {
            Condition::Below {
                value,
                resolve: Some(r),
            } if r < value => {
                return Err(problem(format!(
                    "resolve {r} is below the threshold {value}"
                )));
            }
            Condition::Above {
                value,
                resolve: Some(r),
            } if r > value => {
                return Err(problem(format!(
                    "resolve {r} is above the threshold {value}"
                )));
            }
            Condition::Deviates { alpha, .. } if !(*alpha > 0.0 && *alpha <= 1.0) => {
                return Err(problem(format!("alpha {alpha} is not in (0, 1]")));
            }
            Condition::Deviates {
                deviations,
                resolve: Some(r),
                ..
            } if r > deviations => {
                return Err(problem(format!(
                    "resolve {r} is more than deviations {deviations}"
                )));
            }
            Condition::BelowUsual { days: 0, .. } => {
                return Err(problem("days must be at least 1".to_owned()));
            }
            Condition::BelowUsual {
                ratio,
                resolve: Some(r),
                ..
            } if r < ratio => {
                return Err(problem(format!("resolve {r} is below the ratio {ratio}")));
            }
            _ => {}
        }
        let counter = COUNTERS.iter().any(|(m, _)| *m == self.metric);
        if !counter && !GAUGES.iter().any(|(m, _)| *m == self.metric) {
            let names: Vec<&str> = COUNTERS.iter().chain(GAUGES).map(|(m, _)| *m).collect();
            return Err(problem(format!(
                "unknown metric {:?}; expected one of {}",
                self.metric,
                names.join(", ")
            )));
        }
        if let Some(over) = self.over {
            if !counter {
                return Err(problem(format!(
                    "over is for the per-minute metrics ({}), not {}",
                    COUNTERS
                        .iter()
                        .map(|(m, _)| *m)
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.metric
                )));
            }
            if over.as_secs() % 60 != 0 || over.is_zero() || over > MAX_OVER {
                return Err(problem("over is whole minutes, from 1m to 24h".to_owned()));
            }
        }
        let window = match &self.between {
            None => None,
            Some([from, to]) => Some((
                minute_of_day(from).ok_or_else(|| problem(format!("{from:?} is not HH:MM")))?,
                minute_of_day(to).ok_or_else(|| problem(format!("{to:?} is not HH:MM")))?,
            )),
        };
        Ok(CheckedRule { rule: self, window })
    }
}

fn minute_of_day(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && text.len() == 5).then_some(h * 60 + m)
}

/// One sample of the metric: its event time, the site-local day (days since the epoch) and
/// minute of that day, and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Event time, Unix ms.
    pub ts_ms: i64,
    /// The site-local day.
    pub day: i64,
    /// The site-local minute of the day (0..1440).
    pub minute: u16,
    /// The value.
    pub value: f64,
}

/// A rule's change of state.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// It fires: the value and what it was judged against (the threshold, or the baseline).
    Firing {
        /// The sample's value.
        value: f64,
        /// The threshold or the baseline value.
        against: f64,
        /// Its event time.
        ts_ms: i64,
    },
    /// It resolved.
    Resolved {
        /// The sample's value.
        value: f64,
        /// Its event time.
        ts_ms: i64,
    },
}

/// A rule's state between samples (persisted with the stage's checkpoint).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    /// Firing since this event time.
    pub firing_since: Option<i64>,
    /// The condition has held since this event time (not yet for long enough).
    pub pending_since: Option<i64>,
    /// When it last fired.
    pub last_fired: Option<i64>,
    /// The exponentially weighted mean and variance, and the samples they have seen.
    pub ewma: Option<(f64, f64, u32)>,
    /// Per minute of the day, the values of the last days: `(day, minute, value)`, oldest
    /// first.
    pub usual: VecDeque<(i64, u16, f64)>,
    /// The newest sample's time: older ones are ignored (each sample counts once).
    pub newest_ms: Option<i64>,
}

impl AlertState {
    /// Takes one sample; returns the rule's transition, if any.
    pub fn observe(&mut self, rule: &CheckedRule, sample: Sample) -> Option<Transition> {
        if self.newest_ms.is_some_and(|t| sample.ts_ms <= t) {
            return None;
        }
        self.newest_ms = Some(sample.ts_ms);
        let judged = self.judge(&rule.rule.condition, sample);
        let in_window = rule.window.is_none_or(|(from, to)| {
            if from <= to {
                (from..to).contains(&sample.minute)
            } else {
                sample.minute >= from || sample.minute < to
            }
        });
        let (wrong, right_again, against) = match judged {
            Some(j) if in_window => j,
            // Outside the window, or no baseline yet: nothing is wrong.
            _ => (false, true, f64::NAN),
        };
        if let Some(_since) = self.firing_since {
            if right_again {
                self.firing_since = None;
                self.pending_since = None;
                return Some(Transition::Resolved {
                    value: sample.value,
                    ts_ms: sample.ts_ms,
                });
            }
            return None;
        }
        if !wrong {
            self.pending_since = None;
            return None;
        }
        let since = *self.pending_since.get_or_insert(sample.ts_ms);
        let held = sample.ts_ms - since >= rule.rule.r#for.map_or(0, |d| d.as_millis() as i64);
        let rested = self.last_fired.is_none_or(|last| {
            sample.ts_ms - last >= rule.rule.min_interval.map_or(0, |d| d.as_millis() as i64)
        });
        if held && rested {
            self.firing_since = Some(sample.ts_ms);
            self.last_fired = Some(sample.ts_ms);
            return Some(Transition::Firing {
                value: sample.value,
                against,
                ts_ms: sample.ts_ms,
            });
        }
        None
    }

    /// Whether the sample is wrong, whether it is right again (past the resolve threshold),
    /// and what it was judged against; `None` while a baseline has too little history. Updates
    /// the baselines with the sample.
    fn judge(&mut self, condition: &Condition, s: Sample) -> Option<(bool, bool, f64)> {
        let v = s.value;
        match *condition {
            Condition::Below { value, resolve } => {
                Some((v < value, v >= resolve.unwrap_or(value), value))
            }
            Condition::Above { value, resolve } => {
                Some((v > value, v <= resolve.unwrap_or(value), value))
            }
            Condition::Deviates {
                deviations,
                resolve,
                alpha,
                warmup,
            } => {
                let before = self.ewma;
                let (mean, var, n) = before.unwrap_or((v, 0.0, 0));
                // The sample is judged against the baseline before it, then joins it.
                let diff = v - mean;
                let next_mean = mean + alpha * diff;
                let next_var = (1.0 - alpha) * (var + alpha * diff * diff);
                self.ewma = Some((next_mean, next_var, n.saturating_add(1)));
                if n < warmup {
                    return None;
                }
                let sd = var.sqrt();
                let away = if sd > 0.0 {
                    diff.abs() / sd
                } else if diff == 0.0 {
                    0.0
                } else {
                    f64::INFINITY
                };
                Some((
                    away > deviations,
                    away <= resolve.unwrap_or(deviations),
                    mean,
                ))
            }
            Condition::BelowUsual {
                ratio,
                resolve,
                days,
            } => {
                let earlier: Vec<f64> = self
                    .usual
                    .iter()
                    .filter(|(d, m, _)| *m == s.minute && *d < s.day && s.day - *d <= days as i64)
                    .map(|(_, _, x)| *x)
                    .collect();
                // One value per day and minute (the newest); the days beyond the window go.
                self.usual.retain(|(d, m, _)| {
                    !(*d == s.day && *m == s.minute) && s.day - *d <= days as i64
                });
                self.usual.push_back((s.day, s.minute, v));
                if earlier.is_empty() {
                    return None;
                }
                let usual = earlier.iter().sum::<f64>() / earlier.len() as f64;
                Some((
                    v < ratio * usual,
                    v >= resolve.unwrap_or(ratio) * usual,
                    usual,
                ))
            }
        }
    }
}

/// A transition of one rule, as reported (backtest `--alerts`, the alert sinks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// The rule.
    pub alert: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// The sample's event time (the end of the minute it judged).
    pub ts_ms: i64,
    /// The metric's value.
    pub value: f64,
    /// What it was judged against (firing only; `None` when it has no single value).
    pub against: Option<f64>,
}

/// The rules over the dashboard, sampled once per minute of event time: at the end of each
/// minute, when the dashboard's watermark has passed it (so the minute is final), each rule
/// takes its metric's value (a per-minute count summed over its `over`, or a gauge) and its
/// site-local day and minute (UTC here; the site's zone is the caller's).
#[derive(Debug, Clone, Default)]
pub struct AlertEvaluator {
    rules: Vec<Judged>,
    utc_offset_ms: i64,
}

/// A rule, its state, and its metric's recent per-minute values `(minute, value)`.
type Judged = (CheckedRule, AlertState, VecDeque<(i64, f64)>);

/// What a rule's checkpoint holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    state: AlertState,
    history: VecDeque<(i64, f64)>,
}

impl AlertEvaluator {
    /// An evaluator of `rules`.
    pub fn new(rules: Vec<CheckedRule>) -> Self {
        AlertEvaluator {
            rules: rules
                .into_iter()
                .map(|r| (r, AlertState::default(), VecDeque::new()))
                .collect(),
            utc_offset_ms: 0,
        }
    }

    /// Each rule's state, by rule name, to persist with the offsets (a restart then judges
    /// exactly as an uninterrupted run).
    pub fn checkpoint(&self) -> Vec<(String, Vec<u8>)> {
        self.rules
            .iter()
            .map(|(rule, state, history)| {
                let saved = Saved {
                    state: state.clone(),
                    history: history.clone(),
                };
                // postcard, not JSON: a float must come back bit for bit, or a restored baseline
                // would judge a hair differently from the uninterrupted one.
                (rule.rule.name.clone(), crate::codec::encode(&saved))
            })
            .collect()
    }

    /// Restores the state of rule `name` as [`AlertEvaluator::checkpoint`] gave it (a rule no
    /// longer loaded is ignored).
    pub fn restore(&mut self, name: &str, bytes: &[u8]) -> Result<(), crate::codec::DecodeError> {
        let saved: Saved = crate::codec::decode(bytes)?;
        if let Some((_, state, history)) =
            self.rules.iter_mut().find(|(r, _, _)| r.rule.name == name)
        {
            *state = saved.state;
            *history = saved.history;
        }
        Ok(())
    }

    /// Judges the minute starting at `minute_ms` with `snapshot`, the dashboard as of its end.
    pub fn minute(
        &mut self,
        minute_ms: i64,
        snapshot: &crate::window::DashboardSnapshot,
    ) -> Vec<AlertEvent> {
        let end = minute_ms + 60_000;
        let local = end - 1 + self.utc_offset_ms;
        let (day, minute) = (
            local.div_euclid(86_400_000),
            (local.rem_euclid(86_400_000) / 60_000) as u16,
        );
        let mut events = Vec::new();
        for (rule, state, history) in &mut self.rules {
            let value = match counter_in_minute(&rule.rule.metric, minute_ms, snapshot) {
                Some(count) => {
                    let over_ms = rule.rule.over.map_or(60_000, |d| d.as_millis() as i64);
                    history.push_back((minute_ms, count));
                    while history
                        .front()
                        .is_some_and(|(m, _)| *m <= minute_ms - over_ms)
                    {
                        history.pop_front();
                    }
                    history.iter().map(|(_, v)| v).sum()
                }
                None => gauge(&rule.rule.metric, snapshot),
            };
            let sample = Sample {
                ts_ms: end,
                day,
                minute,
                value,
            };
            let event = |state: &str, value: f64, against: Option<f64>, ts_ms: i64| AlertEvent {
                alert: rule.rule.name.clone(),
                state: state.to_owned(),
                ts_ms,
                value,
                against,
            };
            match state.observe(rule, sample) {
                Some(Transition::Firing {
                    value,
                    against,
                    ts_ms,
                }) => events.push(event(
                    "firing",
                    value,
                    against.is_finite().then_some(against),
                    ts_ms,
                )),
                Some(Transition::Resolved { value, ts_ms }) => {
                    events.push(event("resolved", value, None, ts_ms))
                }
                None => {}
            }
        }
        events
    }
}

/// A per-minute metric's count in the minute starting at `minute_ms` (0 when the dashboard's
/// chart has no such minute: nothing happened); `None` for a gauge.
fn counter_in_minute(
    metric: &str,
    minute_ms: i64,
    s: &crate::window::DashboardSnapshot,
) -> Option<f64> {
    let conversions = s
        .shop
        .conversions_per_minute
        .iter()
        .find(|m| m.start_ms == minute_ms);
    Some(match metric {
        "page_views" => s
            .page_views_per_minute
            .iter()
            .find(|m| m.start_ms == minute_ms)
            .map_or(0.0, |m| m.views as f64),
        "add_to_carts" => conversions.map_or(0.0, |m| m.add_to_cart as f64),
        "checkouts" => conversions.map_or(0.0, |m| m.begin_checkout as f64),
        "purchases" => conversions.map_or(0.0, |m| m.purchases as f64),
        "revenue" => conversions.map_or(0.0, |m| {
            m.revenue.iter().map(|r| r.hundredths as f64).sum::<f64>() / 100.0
        }),
        _ => return None,
    })
}

fn gauge(metric: &str, s: &crate::window::DashboardSnapshot) -> f64 {
    let shop = &s.shop;
    match metric {
        "active_visitors_5m" => s.active_visitors_5m as f64,
        "active_visitors_30m" => s.active_visitors_30m as f64,
        "active_sessions" => shop.active_sessions as f64,
        "offers_1h" => s.offers_by_pattern_1h.values().sum::<u64>() as f64,
        "searches_1h" => shop.conversions_1h.searches as f64,
        "bounce_rate_1h" => {
            let ended = shop.sessions_1h.ended;
            if ended > 0 {
                shop.sessions_1h.bounces as f64 / ended as f64
            } else {
                0.0
            }
        }
        // Checked with the rule.
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn rule(text: &str) -> CheckedRule {
        AlertRule::parse(text).unwrap()
    }

    fn at(minute: i64, value: f64) -> Sample {
        Sample {
            ts_ms: minute * MIN,
            day: minute.div_euclid(1440),
            minute: minute.rem_euclid(1440) as u16,
            value,
        }
    }

    fn run(rule: &CheckedRule, samples: &[(i64, f64)]) -> Vec<(&'static str, i64)> {
        let mut state = AlertState::default();
        samples
            .iter()
            .filter_map(|&(m, v)| state.observe(rule, at(m, v)))
            .map(|t| match t {
                Transition::Firing { ts_ms, .. } => ("firing", ts_ms / MIN),
                Transition::Resolved { ts_ms, .. } => ("resolved", ts_ms / MIN),
            })
            .collect()
    }

    #[test]
    fn a_threshold_fires_after_its_for_resolves_past_its_hysteresis_and_rests() {
        let r = rule(
            r#"
name = "no-purchases"
metric = "purchases"
over = "30m"
condition = { below = { value = 1, resolve = 2 } }
for = "10m"
min_interval = "1h"
between = ["09:00", "18:00"]
"#,
        );
        let nine = 9 * 60;
        let samples: Vec<(i64, f64)> = vec![
            (nine - 30, 0.0), // before the window: nothing
            (nine, 0.0),      // wrong from 09:00 ...
            (nine + 5, 0.0),
            (nine + 10, 0.0), // ... for 10 minutes: fires
            (nine + 20, 1.0), // 1 is not past the resolve threshold 2: still firing
            (nine + 30, 2.0), // resolved
            (nine + 40, 0.0),
            (nine + 50, 0.0), // wrong for 10 minutes, but fired 40 minutes ago: rests
            (nine + 70, 0.0), // an hour since it fired: fires again
            (18 * 60, 0.0),   // the window closes: resolved
        ];
        assert_eq!(
            run(&r, &samples),
            [
                ("firing", nine + 10),
                ("resolved", nine + 30),
                ("firing", nine + 70),
                ("resolved", 18 * 60)
            ]
        );
        // Each sample counts once: a replayed older one changes nothing.
        let mut state = AlertState::default();
        assert_eq!(state.observe(&r, at(nine, 0.0)), None);
        assert!(state.observe(&r, at(nine + 10, 0.0)).is_some());
        assert_eq!(state.observe(&r, at(nine + 10, 5.0)), None);
        assert_eq!(state.observe(&r, at(nine + 1, 5.0)), None);
        // The state survives a restart (a checkpoint) as it is.
        let back: AlertState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn a_baseline_judges_against_the_usual_value_of_the_same_minute() {
        let r = rule(
            r#"
name = "traffic-drop"
metric = "page_views"
condition = { below_usual = { ratio = 0.5, resolve = 0.8, days = 7 } }
"#,
        );
        let day = 1440;
        let mut samples = Vec::new();
        // A week of 100 views at 10:00 and 200 at 10:01; then a day at 40 and 90.
        for d in 0..7 {
            samples.push((d * day + 600, 100.0));
            samples.push((d * day + 601, 200.0));
        }
        samples.push((7 * day + 600, 40.0)); // below half of 100: fires
        samples.push((7 * day + 601, 150.0)); // 150 < 0.8 × 200: still firing
        samples.push((7 * day + 602, 1.0)); // no earlier day has 10:02: no judgement, resolves
        samples.push((8 * day + 600, 90.0)); // the usual 10:00 is now (6×100+40)/7 ≈ 91: 90 is fine
        assert_eq!(
            run(&r, &samples),
            [("firing", 7 * day + 600), ("resolved", 7 * day + 602)]
        );

        let ewma = rule(
            r#"
name = "revenue-spike"
metric = "revenue"
condition = { deviates = { deviations = 4, resolve = 2, alpha = 0.2, warmup = 5 } }
"#,
        );
        let mut samples: Vec<(i64, f64)> = (0..30)
            .map(|m| (m, if m % 2 == 0 { 10.0 } else { 12.0 }))
            .collect();
        samples.push((30, 40.0)); // far beyond 4 deviations of a mean near 11: fires
        samples.push((31, 11.0)); // back near the mean: resolves
        assert_eq!(run(&ewma, &samples), [("firing", 30), ("resolved", 31)]);
        // Within the warm-up nothing is judged.
        assert_eq!(run(&ewma, &[(0, 10.0), (1, 1_000.0)]), []);
    }

    proptest::proptest! {
        /// An evaluator checkpointed and restored at any minute judges the rest exactly as one
        /// that ran through (its baselines and its `over` history included).
        #[test]
        fn a_restart_judges_exactly_as_an_uninterrupted_run(
            views in proptest::collection::vec(0u64..20, 2..120),
            cut in 0usize..120,
        ) {
            let rules = || vec![
                rule("name = \"low\"\nmetric = \"page_views\"\nover = \"5m\"\n\
                      condition = { below = { value = 20, resolve = 30 } }\nfor = \"2m\""),
                rule("name = \"odd\"\nmetric = \"page_views\"\n\
                      condition = { deviates = { deviations = 2, alpha = 0.2, warmup = 5 } }"),
            ];
            let snapshot = |m: usize| crate::window::DashboardSnapshot {
                page_views_per_minute: vec![crate::window::snapshot::MinuteViews {
                    start_ms: m as i64 * 60_000,
                    views: views[m],
                    is_final: true,
                }],
                ..Default::default()
            };
            let mut through = AlertEvaluator::new(rules());
            let all: Vec<AlertEvent> = (0..views.len())
                .flat_map(|m| through.minute(m as i64 * 60_000, &snapshot(m)))
                .collect();
            let cut = cut.min(views.len());
            let mut first = AlertEvaluator::new(rules());
            let mut events: Vec<AlertEvent> = (0..cut)
                .flat_map(|m| first.minute(m as i64 * 60_000, &snapshot(m)))
                .collect();
            let mut restarted = AlertEvaluator::new(rules());
            for (name, bytes) in first.checkpoint() {
                restarted.restore(&name, &bytes).unwrap();
            }
            events.extend((cut..views.len()).flat_map(|m| restarted.minute(m as i64 * 60_000, &snapshot(m))));
            proptest::prop_assert_eq!(events, all);
        }
    }

    proptest::proptest! {
        /// Whatever the samples: firing and resolved alternate, starting with firing; a firing
        /// sample is below the threshold and inside the window, and the condition held `for`
        /// before it; a resolving one is at or above the resolve threshold or outside the
        /// window; two firings are at least `min_interval` apart.
        #[test]
        fn transitions_alternate_and_keep_their_rules(
            values in proptest::collection::vec((1i64..30, 0u8..5), 1..200),
        ) {
            let r = rule(
                "name = \"a\"\nmetric = \"page_views\"\ncondition = { below = { value = 2, resolve = 3 } }\n\
                 for = \"5m\"\nmin_interval = \"30m\"\nbetween = [\"08:00\", \"20:00\"]",
            );
            let mut state = AlertState::default();
            let (mut minute, mut firing, mut last_fired) = (0i64, false, None::<i64>);
            let mut wrong_since = None::<i64>;
            for (gap, v) in values {
                minute += gap;
                let s = at(minute, f64::from(v));
                let inside = (480..1200).contains(&s.minute);
                let wrong = inside && s.value < 2.0;
                if !wrong { wrong_since = None } else { wrong_since.get_or_insert(minute); }
                match state.observe(&r, s) {
                    Some(Transition::Firing { .. }) => {
                        proptest::prop_assert!(!firing && wrong);
                        proptest::prop_assert!(minute - wrong_since.unwrap() >= 5);
                        proptest::prop_assert!(last_fired.is_none_or(|l| minute - l >= 30));
                        firing = true;
                        last_fired = Some(minute);
                    }
                    Some(Transition::Resolved { .. }) => {
                        proptest::prop_assert!(firing && (!inside || s.value >= 3.0));
                        firing = false;
                    }
                    None => {}
                }
            }
        }
    }

    #[test]
    fn a_rule_that_cannot_work_is_named_with_its_problem() {
        for (text, problem) in [
            (
                "name = \"a\"\nmetric = \"page_views\"\ncondition = { below = { value = 2, resolve = 1 } }",
                "alert a: resolve 1 is below the threshold 2",
            ),
            (
                "name = \"a\"\nmetric = \"page_views\"\ncondition = { deviates = { deviations = 3, alpha = 0 } }",
                "alert a: alpha 0 is not in (0, 1]",
            ),
            (
                "name = \"a\"\nmetric = \"page_views\"\ncondition = { above = { value = 1 } }\nbetween = [\"9:00\", \"18:00\"]",
                "alert a: \"9:00\" is not HH:MM",
            ),
            (
                "name = \"a\"\nmetric = \"page_views\"\ncondition = { below_usual = { ratio = 0.5, days = 0 } }",
                "alert a: days must be at least 1",
            ),
            (
                "name = \"a\"\nmetric = \"active_sessions\"\nover = \"5m\"\ncondition = { below = { value = 1 } }",
                "alert a: over is for the per-minute metrics (page_views, add_to_carts, checkouts, purchases, revenue), not active_sessions",
            ),
            (
                "name = \"a\"\nmetric = \"purchases\"\nover = \"90s\"\ncondition = { below = { value = 1 } }",
                "alert a: over is whole minutes, from 1m to 24h",
            ),
        ] {
            assert_eq!(AlertRule::parse(text).unwrap_err().to_string(), problem);
        }
        assert!(AlertRule::parse("name = \"a\"\nmetric = \"page_views\"\ncondition = { below = { value = 1 } }\nfor = \"soon\"").is_err());
        assert!(AlertRule::parse("name = \"a\"\nmetric = \"page_views\"\ncondition = { below = { value = 1 } }\nevery = \"1m\"").is_err());
        let unknown = AlertRule::parse(
            "name = \"a\"\nmetric = \"views\"\ncondition = { below = { value = 1 } }",
        );
        assert!(
            unknown
                .unwrap_err()
                .problem
                .starts_with("unknown metric \"views\"; expected one of page_views, ")
        );
    }
}
