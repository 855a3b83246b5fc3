//! `index.html`: the report at a glance, with no scripts. Tables of what the bots felt per
//! role, what the server and the load generator paid, video per simulcast layer and the
//! threshold checks; join-time and latency distributions as CDFs; the run's timeline. Charts
//! are inline SVG with labelled, numbered axes in their units.

use crate::report::{self, Report, RoleReport, Sample};
use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 240.0;
/// Plot area margins: left (y tick labels and axis title), right, top (legend), bottom.
const ML: f64 = 64.0;
const MR: f64 = 16.0;
const MT: f64 = 28.0;
const MB: f64 = 42.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line of a chart.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) for about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    mag * if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    }
}

fn tick_label(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else if step >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// An SVG line chart with axes from 0, ticks, grid lines, axis titles and a legend.
fn chart(title: &str, x_title: &str, y_title: &str, lines: &[Line], y_max: Option<f64>) -> String {
    let mut out = format!("<figure><figcaption>{}</figcaption>", esc(title));
    let all = lines.iter().flat_map(|l| l.points.iter());
    let x_data = all.clone().map(|p| p.0).fold(0.0f64, f64::max);
    let y_data = all.map(|p| p.1).fold(0.0f64, f64::max);
    if lines.iter().all(|l| l.points.is_empty()) {
        return out + "<p class=\"none\">no data</p></figure>";
    }
    let x_step = tick_step(x_data.max(1e-9));
    let x_max = (x_data / x_step).ceil().max(1.0) * x_step;
    // All zeros (e.g. no loss): a 0..1 axis rather than a degenerate one.
    let y_top = y_max.unwrap_or(y_data);
    let y_top = if y_top > 0.0 { y_top } else { 1.0 };
    let y_step = tick_step(y_top);
    let y_max = (y_top / y_step).ceil().max(1.0) * y_step;
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let x = |v: f64| ML + v / x_max * pw;
    let y = |v: f64| MT + ph - v / y_max * ph;
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-size=\"11\" font-family=\"sans-serif\">"
    );
    // Grid and ticks.
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let _ = write!(
            out,
            "<line x1=\"{ML}\" y1=\"{yy:.1}\" x2=\"{r}\" y2=\"{yy:.1}\" stroke=\"#e5e5e5\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{}</text>",
            tick_label(v, y_step),
            yy = y(v),
            r = W - MR,
            tx = ML - 4.0,
            ty = y(v) + 4.0,
        );
        v += y_step;
    }
    let mut v = 0.0;
    while v <= x_max + x_step / 2.0 {
        let _ = write!(
            out,
            "<line x1=\"{xx:.1}\" y1=\"{MT}\" x2=\"{xx:.1}\" y2=\"{b}\" stroke=\"#f0f0f0\"/>\
             <text x=\"{xx:.1}\" y=\"{ty}\" text-anchor=\"middle\">{}</text>",
            tick_label(v, x_step),
            xx = x(v),
            b = MT + ph,
            ty = MT + ph + 14.0,
        );
        v += x_step;
    }
    // Axes and their titles.
    let _ = write!(
        out,
        "<line x1=\"{ML}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#333\"/>\
         <line x1=\"{ML}\" y1=\"{MT}\" x2=\"{ML}\" y2=\"{b}\" stroke=\"#333\"/>\
         <text x=\"{cx}\" y=\"{xt}\" text-anchor=\"middle\" class=\"axis\">{}</text>\
         <text transform=\"translate(14,{cy}) rotate(-90)\" text-anchor=\"middle\" class=\"axis\">{}</text>",
        esc(x_title),
        esc(y_title),
        b = MT + ph,
        r = W - MR,
        cx = ML + pw / 2.0,
        xt = H - 6.0,
        cy = MT + ph / 2.0,
    );
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = line
            .points
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py.min(y_max))))
            .collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{}\"/>\
             <rect x=\"{lx}\" y=\"8\" width=\"10\" height=\"10\" fill=\"{color}\"/>\
             <text x=\"{tx}\" y=\"17\">{}</text>",
            points.join(" "),
            esc(&line.name),
            lx = ML + i as f64 * 140.0,
            tx = ML + i as f64 * 140.0 + 14.0,
        );
    }
    out + "</svg></figure>"
}

/// A named series of the timeline.
type Series<'a> = (&'a str, fn(&Sample) -> Option<f64>);

/// A timeline chart of `samples` (x: seconds since the start).
fn timeline(title: &str, y_title: &str, samples: &[Sample], series: &[Series]) -> String {
    let lines: Vec<Line> = series
        .iter()
        .map(|(name, f)| Line {
            name: (*name).to_owned(),
            points: samples
                .iter()
                .filter_map(|s| f(s).map(|v| (s.t, v)))
                .collect(),
        })
        .collect();
    chart(title, "time since the start (s)", y_title, &lines, None)
}

/// A CDF chart of the named distributions of each role (x: milliseconds, y: percent).
fn cdf(title: &str, x_title: &str, report: &Report, names: &[(&str, &str)]) -> String {
    let mut lines = Vec::new();
    for (role, r) in &report.roles {
        for (key, label) in names {
            if let Some(points) = r.distributions.get(*key) {
                lines.push(Line {
                    name: format!("{role} {label}"),
                    points: points.iter().map(|&(q, ms)| (ms, q * 100.0)).collect(),
                });
            }
        }
    }
    chart(title, x_title, "share at or below (%)", &lines, Some(100.0))
}

/// An HTML table: a header row, then rows of cells (the first cell is a row header).
fn table(caption: &str, head: &[String], rows: &[Vec<String>]) -> String {
    let mut out = format!("<table><caption>{}</caption><thead><tr>", esc(caption));
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out += "</tr></thead><tbody>";
    for row in rows {
        out += "<tr>";
        for (i, cell) in row.iter().enumerate() {
            let tag = if i == 0 { "th" } else { "td" };
            let _ = write!(out, "<{tag}>{}</{tag}>", esc(cell));
        }
        out += "</tr>";
    }
    out + "</tbody></table>"
}

fn pairs(caption: &str, rows: Vec<(&str, String)>) -> String {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(k, v)| vec![k.to_owned(), v])
        .collect();
    table(caption, &["".into(), "value".into()], &rows)
}

fn roles_table(report: &Report) -> String {
    let cols = report::columns(report);
    let mut head = vec![String::new()];
    head.extend(cols.iter().map(|(n, _)| (*n).to_owned()));
    let rows: Vec<Vec<String>> = report::role_rows()
        .iter()
        .map(|(label, f)| {
            let mut row = vec![(*label).to_owned()];
            row.extend(cols.iter().map(|(_, r)| f(r)));
            row
        })
        .collect();
    table("What the bots felt, per role", &head, &rows)
}

fn server_table(report: &Report) -> String {
    let Some(s) = &report.server else {
        return "<p>Server: <code>/metrics</code> was not reachable.</p>".into();
    };
    let o = report::opt;
    pairs(
        &format!("What the server paid (steady state, {:.0} s)", s.window_s),
        vec![
            ("CPU (% of one core)", format!("{:.1}", s.cpu_percent)),
            (
                "CPU per forwarded packet (µs)",
                o(s.cpu_us_per_packet_out, ""),
            ),
            (
                "CPU per participant (% of a core)",
                o(s.cpu_percent_per_participant, ""),
            ),
            (
                "RTP packets out per second",
                format!("{:.0}", s.packets_out_per_s),
            ),
            (
                "RTP packets in per second",
                format!("{:.0}", s.packets_in_per_s),
            ),
            (
                "resident memory, peak / idle (MiB)",
                format!("{:.1} / {:.1}", s.rss_mb_max, s.rss_mb_idle),
            ),
            (
                "memory per participant (MiB)",
                s.rss_mb_per_participant
                    .map_or("-".into(), |v| format!("{v:.2}")),
            ),
            ("participants at the end", format!("{:.0}", s.participants)),
        ],
    )
}

fn bots_table(report: &Report) -> String {
    let b = &report.bots;
    let o = report::opt;
    pairs(
        "What the load generator paid",
        vec![
            ("bots (peak)", b.bots.to_string()),
            (
                "CPU over the run (% of one core)",
                format!("{:.1}", b.cpu_percent),
            ),
            ("CPU per bot (% of one core)", o(b.cpu_percent_per_bot, "")),
            (
                "CPU in the steady window (% of one core)",
                o(b.steady_cpu_percent, ""),
            ),
            (
                "… of which the shared engine thread",
                o(b.steady_engine_cpu_percent, ""),
            ),
            ("bots' CPU / server's CPU", o(b.cpu_ratio_to_server, "")),
            (
                "resident memory, peak (MiB)",
                format!("{:.1}", b.rss_mb_max),
            ),
        ],
    )
}

fn layers_tables(r: &RoleReport) -> String {
    let mut out = String::new();
    if !r.layers_in.is_empty() {
        let total: f64 = r
            .layers_in
            .iter()
            .map(|l| l.tracks as f64 * l.kbps_per_track)
            .sum();
        let seconds: f64 = r.layers_in.iter().map(|l| l.seconds).sum();
        let rows: Vec<Vec<String>> = r
            .layers_in
            .iter()
            .map(|l| {
                let share = l.tracks as f64 * l.kbps_per_track * 100.0 / total.max(1e-9);
                vec![
                    l.size.clone(),
                    l.tracks.to_string(),
                    format!("{:.0}", l.kbps_per_track),
                    format!("{share:.0}"),
                    format!("{:.1}", l.seconds),
                    format!("{:.0}", l.seconds * 100.0 / seconds.max(1e-9)),
                ]
            })
            .collect();
        out += &table(
            "Video received per layer (frame size)",
            &[
                "layer".into(),
                "tracks".into(),
                "kbit/s per track".into(),
                "share of received bits (%)".into(),
                "time received (track-seconds)".into(),
                "share of time (%)".into(),
            ],
            &rows,
        );
    }
    if !r.layers_out.is_empty() {
        let rows: Vec<Vec<String>> = r
            .layers_out
            .iter()
            .map(|l| {
                vec![
                    l.rid.clone(),
                    l.publishers.to_string(),
                    format!("{:.0}", l.kbps_per_publisher),
                    l.keyframe_requests.to_string(),
                ]
            })
            .collect();
        out += &table(
            "Video sent per simulcast layer",
            &[
                "rid".into(),
                "publishers".into(),
                "kbit/s per publisher".into(),
                "keyframe requests".into(),
            ],
            &rows,
        );
    }
    out
}

fn checks_table(report: &Report) -> String {
    if report.checks.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = report
        .checks
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                format!("{}", c.limit),
                c.value.map_or("none".into(), |v| format!("{v:.2}")),
                if c.passed { "ok" } else { "FAILED" }.into(),
            ]
        })
        .collect();
    table(
        "Threshold checks",
        &[
            "check".into(),
            "limit".into(),
            "measured".into(),
            "result".into(),
        ],
        &rows,
    )
}

/// Renders the page; `text` is the stdout table, kept for copying.
pub fn render(report: &Report, text: &str) -> String {
    let tl = &report.timeline;
    let mut body = String::new();
    body += &checks_table(report);
    body += &roles_table(report);
    body += "<div class=\"side\">";
    body += &server_table(report);
    body += &bots_table(report);
    body += "</div>";
    body += &layers_tables(&report.overall);
    body += "<h2>Distributions</h2>";
    body += &cdf(
        "Join time: join sent → first video keyframe, first audio packet (CDF)",
        "join time (ms)",
        report,
        &[("join_video", "video"), ("join_audio", "audio")],
    );
    body += &cdf(
        "Capture → receive latency (CDF)",
        "latency (ms)",
        report,
        &[("latency_video", "video"), ("latency_audio", "audio")],
    );
    body += "<h2>Timeline</h2>";
    body += &timeline(
        "Bots connected",
        "bots",
        tl,
        &[("connected", |s| Some(s.connected as f64))],
    );
    body += &timeline(
        "Bitrate, all bots",
        "kbit/s",
        tl,
        &[
            ("received", |s| Some(s.in_kbps)),
            ("sent", |s| Some(s.out_kbps)),
        ],
    );
    body += &timeline(
        "Loss per interval",
        "loss (%)",
        tl,
        &[("loss", |s| Some(s.loss_percent))],
    );
    body += &timeline(
        "CPU",
        "% of one core",
        tl,
        &[
            ("server", |s| s.server_cpu_percent),
            ("bots", |s| Some(s.bots_cpu_percent)),
        ],
    );
    body += &timeline(
        "Server resident memory",
        "MiB",
        tl,
        &[("rss", |s| s.server_rss_mb)],
    );
    body += &timeline(
        "Server packets forwarded",
        "packets/s",
        tl,
        &[("packets out", |s| s.server_packets_out_per_s)],
    );
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>chorus-load {run}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}\
         table{{border-collapse:collapse;margin:1em 1em 1em 0;font-size:13px}}\
         caption{{text-align:left;font-weight:bold;padding:4px 0}}\
         th,td{{border:1px solid #ddd;padding:3px 8px;text-align:right}}\
         tbody th{{text-align:left;font-weight:normal;background:#fafafa}}\
         .side{{display:flex;flex-wrap:wrap;align-items:flex-start}}\
         figure{{display:inline-block;margin:0.5em 1em 0.5em 0}}figcaption{{font-weight:bold}}\
         .axis{{fill:#444}}.none{{color:#888}}\
         .passed{{color:#1a7f37}}.failed{{color:#cf222e}}\
         pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style>\
         </head><body><h1>chorus-load: {run}</h1>\
         <p>{url} &mdash; <strong class=\"{class}\">{result}</strong> &mdash; {elapsed:.0} s \
         (ramp {ramp:.0} s)</p>{body}\
         <details><summary>Plain-text table and scenario</summary><pre>{text}</pre><pre>{scenario}</pre>\
         </details><p>Raw figures: <a href=\"report.json\">report.json</a></p></body></html>\n",
        run = esc(&report.run),
        url = esc(&report.url),
        class = if report.passed { "passed" } else { "failed" },
        result = if report.passed { "passed" } else { "FAILED" },
        elapsed = report.elapsed_s,
        ramp = report.ramp_s,
        text = esc(text),
        scenario = esc(&serde_json::to_string_pretty(&report.scenario).unwrap_or_default()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers() {
        for (max, step) in [(100.0, 20.0), (7.0, 2.0), (0.3, 0.1), (2500.0, 500.0)] {
            let got = tick_step(max);
            assert!((got - step).abs() < step * 1e-9, "{max}: {got}");
        }
    }

    #[test]
    fn a_chart_has_axes_ticks_and_its_lines() {
        let svg = chart(
            "t",
            "latency (ms)",
            "share (%)",
            &[Line {
                name: "a<b".into(),
                points: vec![(0.0, 0.0), (12.0, 50.0), (30.0, 100.0)],
            }],
            Some(100.0),
        );
        assert!(
            svg.contains("latency (ms)") && svg.contains("share (%)"),
            "{svg}"
        );
        assert!(
            svg.contains(">100</text>") && svg.contains(">30</text>"),
            "{svg}"
        );
        assert!(svg.contains("<polyline") && svg.contains("a&lt;b"), "{svg}");
        assert!(chart("t", "x", "y", &[], None).contains("no data"));
        // All zeros: a 0..1 axis.
        let flat = chart(
            "t",
            "x",
            "loss (%)",
            &[Line {
                name: "loss".into(),
                points: vec![(0.0, 0.0), (5.0, 0.0)],
            }],
            None,
        );
        assert!(
            flat.contains(">1.0</text>") && flat.contains(">0.0</text>"),
            "{flat}"
        );
    }
}
