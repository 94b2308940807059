//! Reading Prometheus' text exposition format, and the arithmetic `cairn top` does on
//! two scrapes: per-second rates of counters (a counter that went down was reset, as
//! Prometheus' `rate` assumes) and quantiles of histograms from the increase of their
//! buckets (as Prometheus' `histogram_quantile` computes them).

use std::collections::BTreeMap;

/// One sample: a series (name and labels, the labels sorted by name) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of `label`, if the series has it.
    pub fn label(&self, label: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(name, _)| name == label)
            .map(|(_, value)| value.as_str())
    }

    /// Its labels without `le`: what identifies a histogram's series across buckets.
    fn labels_without_le(&self) -> Vec<(String, String)> {
        self.labels
            .iter()
            .filter(|(name, _)| name != "le")
            .cloned()
            .collect()
    }
}

/// A text that is not in the exposition format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    samples: Vec<Sample>,
}

/// Parses the text exposition format (version 0.0.4): `# HELP`/`# TYPE` lines and
/// comments are skipped; each other line is `name{label="value",…} value [timestamp]`.
pub fn parse(text: &str) -> Result<Metrics, ParseError> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|message| ParseError {
            line: index + 1,
            message,
        })?;
        samples.push(sample);
    }
    Ok(Metrics { samples })
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("no value for {name}"))?;
    let value = parse_value(value).ok_or_else(|| format!("invalid value {value:?} for {name}"))?;
    labels.sort();
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `label="value",…}` and returns what follows the closing brace.
fn parse_labels<'a>(
    mut text: &'a str,
    labels: &mut Vec<(String, String)>,
) -> Result<&'a str, String> {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix('}') {
            return Ok(rest);
        }
        let (name, after_name) = text
            .split_once('=')
            .ok_or_else(|| "a label without a value".to_owned())?;
        let name = name.trim();
        let mut chars = after_name
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name}: the value is not quoted"))?
            .char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, escaped)) => value.push(escaped),
                    None => return Err(format!("label {name}: unterminated value")),
                },
                Some((at, '"')) => break at,
                Some((_, c)) => value.push(c),
                None => return Err(format!("label {name}: unterminated value")),
            }
        };
        labels.push((name.to_owned(), value));
        text = after_name[1 + end + 1..].trim_start();
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

impl Metrics {
    /// The samples of the metric `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |sample| sample.name == name)
    }

    /// Whether any series of `name` was exported.
    pub fn has(&self, name: &str) -> bool {
        self.series(name).next().is_some()
    }

    /// The sum of every series of `name` (`None`: none exported).
    pub fn sum(&self, name: &str) -> Option<f64> {
        self.sum_where(name, |_| true)
    }

    /// The sum of the series of `name` that `keep` accepts (`None`: none did).
    pub fn sum_where(&self, name: &str, keep: impl Fn(&Sample) -> bool) -> Option<f64> {
        self.series(name)
            .filter(|sample| keep(sample))
            .map(|sample| sample.value)
            .fold(None, |sum, value| Some(sum.unwrap_or(0.0) + value))
    }

    /// The series of `name` summed by the value of `label`.
    pub fn sum_by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut sums = BTreeMap::new();
        for sample in self.series(name) {
            let key = sample.label(label).unwrap_or_default().to_owned();
            *sums.entry(key).or_insert(0.0) += sample.value;
        }
        sums
    }

    /// The value of the series of `name` with exactly these labels (in any order).
    fn value_of(&self, name: &str, labels: &[(String, String)]) -> Option<f64> {
        self.series(name)
            .find(|sample| sample.labels == labels)
            .map(|sample| sample.value)
    }
}

/// Groups series by the value of `label` (series without it form the group `""`).
pub fn by_label(label: &str) -> impl Fn(&Sample) -> String + '_ {
    move |sample| sample.label(label).unwrap_or_default().to_owned()
}

/// How much a counter grew from `before` to `after`: a counter that went down was
/// reset (the server restarted), so it grew by its whole new value.
pub fn counter_increase(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

/// Two scrapes `seconds` apart, for rates and quantiles over that interval.
pub struct Interval<'a> {
    pub before: &'a Metrics,
    pub after: &'a Metrics,
    pub seconds: f64,
}

impl Interval<'_> {
    /// The increase of the counter `name` over the interval, summed over the series
    /// `keep` accepts, each series' reset taken into account (a series new in the
    /// second scrape grew from 0). `None` when no such series is exported.
    pub fn increase_where(&self, name: &str, keep: impl Fn(&Sample) -> bool) -> Option<f64> {
        self.after
            .series(name)
            .filter(|sample| keep(sample))
            .map(|sample| {
                let before = self.before.value_of(name, &sample.labels).unwrap_or(0.0);
                counter_increase(before, sample.value)
            })
            .fold(None, |sum, value| Some(sum.unwrap_or(0.0) + value))
    }

    /// Per-second rate of the counter `name` over the series `keep` accepts.
    pub fn rate_where(&self, name: &str, keep: impl Fn(&Sample) -> bool) -> Option<f64> {
        let increase = self.increase_where(name, keep)?;
        Some(if self.seconds > 0.0 {
            increase / self.seconds
        } else {
            0.0
        })
    }

    /// Per-second rate of the counter `name`, every series summed.
    pub fn rate(&self, name: &str) -> Option<f64> {
        self.rate_where(name, |_| true)
    }

    /// Per-second rate of the counter `name`, its series grouped by `key` (e.g.
    /// [`by_label`]) and summed within a group.
    pub fn rate_by(&self, name: &str, key: impl Fn(&Sample) -> String) -> BTreeMap<String, f64> {
        let mut rates = BTreeMap::new();
        for sample in self.after.series(name) {
            let before = self.before.value_of(name, &sample.labels).unwrap_or(0.0);
            *rates.entry(key(sample)).or_insert(0.0) += counter_increase(before, sample.value);
        }
        for rate in rates.values_mut() {
            *rate = if self.seconds > 0.0 {
                *rate / self.seconds
            } else {
                0.0
            };
        }
        rates
    }

    /// The increase of the histogram `name`'s buckets over the interval, its series
    /// grouped by `key` and summed bucket by bucket within a group: for each group,
    /// `(upper bound, cumulative count)` sorted by bound.
    pub fn bucket_increases(
        &self,
        name: &str,
        key: impl Fn(&Sample) -> String,
    ) -> BTreeMap<String, Vec<(f64, f64)>> {
        let bucket = format!("{name}_bucket");
        let mut groups: BTreeMap<String, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
        for sample in self.after.series(&bucket) {
            let Some(bound) = sample.label("le").and_then(parse_value) else {
                continue;
            };
            let before = self.before.value_of(&bucket, &sample.labels).unwrap_or(0.0);
            // A reset shows in one bucket as in all: the series restarted.
            let reset = self
                .before
                .value_of(&format!("{name}_count"), &sample.labels_without_le())
                .zip(
                    self.after
                        .value_of(&format!("{name}_count"), &sample.labels_without_le()),
                )
                .is_some_and(|(before, after)| after < before);
            let increase = if reset {
                sample.value
            } else {
                counter_increase(before, sample.value)
            };
            let group = key(sample);
            let entry = groups
                .entry(group)
                .or_default()
                .entry(bound.to_bits())
                .or_insert((bound, 0.0));
            entry.1 += increase;
        }
        groups
            .into_iter()
            .map(|(group, buckets)| {
                let mut buckets: Vec<(f64, f64)> = buckets.into_values().collect();
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                (group, buckets)
            })
            .collect()
    }
}

/// The `q`-quantile (0 ≤ q ≤ 1) of a histogram given as cumulative buckets
/// `(upper bound, count)`, the last one `+Inf`, as Prometheus' `histogram_quantile`
/// computes it: the bucket holding the rank, interpolated linearly within it (from 0
/// for the first bucket). A rank in the `+Inf` bucket answers the largest finite bound.
/// `None` without observations or without a `+Inf` bucket.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    let mut sorted = buckets.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Counts are cumulative; float noise or a racing scrape may break that: repair it.
    let mut highest = 0.0f64;
    for bucket in &mut sorted {
        highest = highest.max(bucket.1);
        bucket.1 = highest;
    }
    let &(last_bound, total) = sorted.last()?;
    if last_bound != f64::INFINITY || total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let index = sorted.iter().position(|&(_, count)| count >= rank)?;
    if index == sorted.len() - 1 {
        return Some(if sorted.len() >= 2 {
            sorted[sorted.len() - 2].0
        } else {
            0.0
        });
    }
    let (upper, count) = sorted[index];
    let (lower, below) = if index == 0 {
        (0.0f64.min(upper), 0.0)
    } else {
        sorted[index - 1]
    };
    if count == below {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output of Cairn's exporter (metrics-exporter-prometheus) and of its process
    /// figures, as `/metrics` serves it.
    const EXPORTED: &str = r#"# HELP cairn_http_requests_total HTTP requests answered, by method, route template and status.
# TYPE cairn_http_requests_total counter
cairn_http_requests_total{method="POST",route="/v1/streams/{stream}/events",status="201"} 40
cairn_http_requests_total{method="GET",route="/v1/streams/{stream}/events",status="200"} 10
cairn_http_requests_total{method="GET",route="/v1/streams/{stream}/events",status="503"} 2

# TYPE cairn_head_position gauge
cairn_head_position 1234

# HELP cairn_http_request_duration_seconds Time from request to response head.
# TYPE cairn_http_request_duration_seconds histogram
cairn_http_request_duration_seconds_bucket{method="GET",route="/v1/events",le="0.001"} 5
cairn_http_request_duration_seconds_bucket{method="GET",route="/v1/events",le="0.01"} 9
cairn_http_request_duration_seconds_bucket{method="GET",route="/v1/events",le="+Inf"} 10
cairn_http_request_duration_seconds_sum{method="GET",route="/v1/events"} 0.05
cairn_http_request_duration_seconds_count{method="GET",route="/v1/events"} 10

cairn_query_calls_total{query="a\\b \"hi\"\n"} 3
cairn_process_cpu_seconds_total 1.25
cairn_odd 7 1700000000000
"#;

    #[test]
    fn real_exporter_output_parses_into_series_with_sorted_labels() {
        let metrics = parse(EXPORTED).unwrap();
        assert_eq!(metrics.series("cairn_http_requests_total").count(), 3);
        assert_eq!(metrics.sum("cairn_http_requests_total"), Some(52.0));
        assert_eq!(metrics.sum("cairn_head_position"), Some(1234.0));
        assert_eq!(metrics.sum("cairn_missing"), None);
        let request = metrics.series("cairn_http_requests_total").next().unwrap();
        let names: Vec<&str> = request.labels.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["method", "route", "status"]);
        assert_eq!(request.label("route"), Some("/v1/streams/{stream}/events"));
        let bucket = metrics
            .series("cairn_http_request_duration_seconds_bucket")
            .last()
            .unwrap();
        assert_eq!(bucket.label("le"), Some("+Inf"));
        let query = metrics.series("cairn_query_calls_total").next().unwrap();
        assert_eq!(query.label("query"), Some("a\\b \"hi\"\n"));
        assert_eq!(metrics.sum("cairn_process_cpu_seconds_total"), Some(1.25));
        assert_eq!(
            metrics.sum("cairn_odd"),
            Some(7.0),
            "a timestamp is ignored"
        );
        let by_status = metrics.sum_by("cairn_http_requests_total", "status");
        assert_eq!(by_status.get("201"), Some(&40.0));
    }

    #[test]
    fn malformed_lines_are_refused_with_their_line_number() {
        let error = parse("cairn_ok 1\ncairn_bad{route=\"x} 1\n").unwrap_err();
        assert_eq!(error.line, 2);
        assert!(parse("cairn_no_value\n").is_err());
        assert!(parse("cairn_x{a=b} 1\n").is_err());
        assert!(parse("cairn_x abc\n").is_err());
        assert!(parse("").unwrap().samples.is_empty());
    }

    #[test]
    fn counter_rates_sum_series_and_survive_resets() {
        let before = parse(
            "requests{route=\"a\"} 100\nrequests{route=\"b\"} 50\nrequests{route=\"c\"} 10\n",
        )
        .unwrap();
        // a grew by 20; b was reset (a restart) and counted 5 since; d is new.
        let after = parse(
            "requests{route=\"a\"} 120\nrequests{route=\"b\"} 5\nrequests{route=\"c\"} 10\nrequests{route=\"d\"} 3\n",
        )
        .unwrap();
        let interval = Interval {
            before: &before,
            after: &after,
            seconds: 2.0,
        };
        assert_eq!(interval.increase_where("requests", |_| true), Some(28.0));
        assert_eq!(interval.rate("requests"), Some(14.0));
        assert_eq!(
            interval.rate_where("requests", |s| s.label("route") == Some("b")),
            Some(2.5)
        );
        assert_eq!(interval.rate("nothing"), None);
        let by_route = interval.rate_by("requests", by_label("route"));
        assert_eq!(by_route.get("a"), Some(&10.0));
        assert_eq!(by_route.get("c"), Some(&0.0));
        assert_eq!(counter_increase(5.0, 3.0), 3.0);
        assert_eq!(counter_increase(5.0, 9.0), 4.0);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_holding_the_rank() {
        let buckets = [
            (0.001, 50.0),
            (0.01, 90.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // p50: rank 50 is the top of the first bucket.
        assert_eq!(histogram_quantile(0.5, &buckets), Some(0.001));
        // p25: halfway through the first bucket, which starts at 0.
        assert_eq!(histogram_quantile(0.25, &buckets), Some(0.0005));
        // p70: rank 70 is halfway between 50 and 90, so halfway from 0.001 to 0.01.
        let p70 = histogram_quantile(0.7, &buckets).unwrap();
        assert!((p70 - 0.0055).abs() < 1e-12, "{p70}");
        // p99: rank 99 in (90, 100] of (0.01, 0.1].
        let p99 = histogram_quantile(0.99, &buckets).unwrap();
        assert!((p99 - 0.091).abs() < 1e-12, "{p99}");
        // Unsorted input is sorted first.
        let mut shuffled = buckets;
        shuffled.reverse();
        assert_eq!(histogram_quantile(0.5, &shuffled), Some(0.001));
    }

    #[test]
    fn quantiles_in_the_infinite_bucket_or_of_nothing() {
        let overflow = [(0.1, 1.0), (1.0, 2.0), (f64::INFINITY, 10.0)];
        assert_eq!(histogram_quantile(0.99, &overflow), Some(1.0));
        assert_eq!(
            histogram_quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        assert_eq!(
            histogram_quantile(0.5, &[(0.1, 3.0)]),
            None,
            "no +Inf bucket"
        );
        assert_eq!(histogram_quantile(1.5, &overflow), None);
        assert_eq!(histogram_quantile(0.5, &[]), None);
    }

    #[test]
    fn bucket_increases_group_series_and_handle_a_reset() {
        let before = parse(
            "lat_bucket{route=\"a\",method=\"GET\",le=\"0.1\"} 10\n\
             lat_bucket{route=\"a\",method=\"GET\",le=\"+Inf\"} 10\n\
             lat_count{route=\"a\",method=\"GET\"} 10\n\
             lat_bucket{route=\"a\",method=\"POST\",le=\"0.1\"} 1\n\
             lat_bucket{route=\"a\",method=\"POST\",le=\"+Inf\"} 8\n\
             lat_count{route=\"a\",method=\"POST\"} 8\n",
        )
        .unwrap();
        // GET: 4 more, all fast. POST: reset (its fast bucket still grew from 1 to
        // 2, only the count shows the reset), then 2 fast and 1 slow.
        let after = parse(
            "lat_bucket{route=\"a\",method=\"GET\",le=\"0.1\"} 14\n\
             lat_bucket{route=\"a\",method=\"GET\",le=\"+Inf\"} 14\n\
             lat_count{route=\"a\",method=\"GET\"} 14\n\
             lat_bucket{route=\"a\",method=\"POST\",le=\"0.1\"} 2\n\
             lat_bucket{route=\"a\",method=\"POST\",le=\"+Inf\"} 3\n\
             lat_count{route=\"a\",method=\"POST\"} 3\n",
        )
        .unwrap();
        let interval = Interval {
            before: &before,
            after: &after,
            seconds: 1.0,
        };
        let groups = interval.bucket_increases("lat", by_label("route"));
        assert_eq!(groups["a"], vec![(0.1, 6.0), (f64::INFINITY, 7.0)]);
    }
}
