//! The two text formats `/metrics` speaks: OpenMetrics 1.0 (what `prometheus-client` encodes)
//! and the classic Prometheus text format 0.0.4, derived from it line by line.
//!
//! Why both: Prometheus asks for OpenMetrics in its `Accept` header, but many other scrapers and
//! `promtool check metrics` only read the classic format, which has no `info` type, no `# UNIT`,
//! no `# EOF`, and names a counter's family with its `_total` suffix.

/// Media type of the classic format.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Media type of OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (listed with a non-zero quality).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let quality = parts
            .filter_map(|parameter| parameter.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        media.eq_ignore_ascii_case("application/openmetrics-text") && quality > 0.0
    })
}

/// The classic text format of an OpenMetrics exposition.
pub fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // `# HELP` comes before `# TYPE`, and the family's classic name depends on its type.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (classic_name, classic_kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((help_name, text)) = help.take() {
                if help_name == name {
                    out.push_str(&format!("# HELP {classic_name} {text}\n"));
                }
            }
            out.push_str(&format!("# TYPE {classic_name} {classic_kind}\n"));
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: not in the classic format.
        } else if !line.is_empty() {
            // An exemplar follows ` # ` on a sample line; `_created` series are OpenMetrics-only.
            let sample = line.split_once(" # ").map_or(line, |(sample, _)| sample);
            let name_end = sample.find(['{', ' ']).unwrap_or(sample.len());
            if !sample[..name_end].ends_with("_created") {
                out.push_str(sample);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_choose_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert!(wants_openmetrics(prometheus));
        assert!(wants_openmetrics("application/openmetrics-text"));
        assert!(!wants_openmetrics(""));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("text/plain"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0, text/plain"));
    }

    #[test]
    fn openmetrics_becomes_the_classic_format() {
        let openmetrics = "# HELP rampart_panics Panics caught.\n# TYPE rampart_panics counter\nrampart_panics_total{source=\"actor\"} 0\nrampart_panics_created{source=\"actor\"} 1.7e9\n# HELP rampart_build Build information.\n# TYPE rampart_build info\nrampart_build_info{version=\"0.1.0\"} 1\n# HELP rampart_rss_bytes Resident memory.\n# TYPE rampart_rss_bytes gauge\n# UNIT rampart_rss_bytes bytes\nrampart_rss_bytes 5\n# HELP rampart_lat Latency.\n# TYPE rampart_lat histogram\nrampart_lat_bucket{le=\"+Inf\"} 1 # {trace_id=\"x\"} 0.1\nrampart_lat_sum 0.1\nrampart_lat_count 1\n# EOF\n";
        let classic = to_classic(openmetrics);
        assert_eq!(
            classic,
            "# HELP rampart_panics_total Panics caught.\n# TYPE rampart_panics_total counter\nrampart_panics_total{source=\"actor\"} 0\n# HELP rampart_build_info Build information.\n# TYPE rampart_build_info gauge\nrampart_build_info{version=\"0.1.0\"} 1\n# HELP rampart_rss_bytes Resident memory.\n# TYPE rampart_rss_bytes gauge\nrampart_rss_bytes 5\n# HELP rampart_lat Latency.\n# TYPE rampart_lat histogram\nrampart_lat_bucket{le=\"+Inf\"} 1\nrampart_lat_sum 0.1\nrampart_lat_count 1\n"
        );
    }
}
